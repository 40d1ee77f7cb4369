//! One directory listed as the walk enters it, exactly as `scan._list_dir` lists it (ADR 0085): its
//! children lstat()ed without following links, excluded, foreign-device and special files left out,
//! a symlink's target read, sorted into the walk's keys. Every failure is a `WalkError` value (a
//! kind and an errno) for the caller to word as the Python path does; nothing here panics or raises.

use std::ffi::{CStr, CString};

use crate::{errno, Stat};

/// The kernel refuses a path of this many bytes or more (with its NUL) as ENAMETOOLONG.
const PATH_MAX: usize = libc::PATH_MAX as usize;

/// Why an entry or a directory is reported (`FileError`'s message is worded in Python).
const ERR_LIST: u8 = 0; // "cannot list directory: <strerror>"
const ERR_NAME: u8 = 1; // "name is not valid UTF-8"
const ERR_OS: u8 = 2; // "<strerror>"
const ERR_LINK: u8 = 3; // "symlink target is not valid UTF-8"

pub(super) struct Entry {
    pub(super) rel: Vec<u8>,
    pub(super) abs: Vec<u8>,
    pub(super) st: Stat,
    pub(super) link: Vec<u8>,
}

/// One directory of the walk: its entries sorted by key (a directory twice: its entry at `name`,
/// its subtree at `name/`) and the walk's position in them.
pub(super) struct Level {
    pub(super) entries: Vec<Entry>,
    pub(super) items: Vec<(Vec<u8>, bool, usize)>, // (sort key, descend?, entry)
    pub(super) next: usize,
}

pub(super) struct WalkError {
    pub(super) kind: u8,
    pub(super) path: Vec<u8>,
    pub(super) errno: i32,
}

impl WalkError {
    fn new(kind: u8, path: Vec<u8>, errno: i32) -> WalkError {
        WalkError { kind, path, errno }
    }
}

/// `os.path.join(directory, name)` for a scanned child (`DirEntry.path`).
fn join(directory: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(directory.len() + name.len() + 1);
    out.extend_from_slice(directory);
    if !directory.is_empty() && !directory.ends_with(b"/") {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

fn trim_slashes(path: &[u8]) -> &[u8] {
    let mut end = path.len();
    while end > 0 && path[end - 1] == b'/' {
        end -= 1;
    }
    &path[..end]
}

/// `LinuxExclusions.may_exclude_below` for a normalized directory path.
fn may_exclude_below(directory: &[u8], dirs: &[Vec<u8>]) -> bool {
    let mut prefix = trim_slashes(directory).to_vec();
    prefix.push(b'/');
    dirs.iter().any(|d| d.starts_with(&prefix))
}

/// `LinuxExclusions.excluded` for a normalized path.
fn excluded(path: &[u8], dirs: &[Vec<u8>]) -> bool {
    dirs.iter().any(|d| {
        let base = trim_slashes(d);
        path == d.as_slice()
            || (path.len() > base.len() && path.starts_with(base) && path[base.len()] == b'/')
    })
}

fn c_path(path: &[u8]) -> Result<CString, i32> {
    CString::new(path).map_err(|_| libc::EINVAL)
}

fn lstat_at(dir: libc::c_int, name: &CStr, path: &[u8]) -> Result<Stat, i32> {
    // SAFETY: a zeroed `stat` is a valid value for the call to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let status = if path.len() + 1 > PATH_MAX {
        // The Python scan lstat()s the whole path: the kernel refuses it as too long.
        let full = c_path(path)?;
        // SAFETY: `full` is NUL-terminated, `st` writable.
        unsafe { libc::lstat(full.as_ptr(), &mut st) }
    } else {
        // SAFETY: `dir` is an open directory, `name` NUL-terminated, `st` writable.
        unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) }
    };
    if status != 0 {
        return Err(errno());
    }
    Ok(Stat::from_raw(&st))
}

pub(super) fn lstat(path: &[u8]) -> Result<Stat, i32> {
    let full = c_path(path)?;
    // SAFETY: a zeroed `stat` is valid to fill; `full` is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::lstat(full.as_ptr(), &mut st) } != 0 {
        return Err(errno());
    }
    Ok(Stat::from_raw(&st))
}

fn readlink_at(dir: libc::c_int, name: &CStr, path: &[u8]) -> Result<Vec<u8>, i32> {
    let full = if path.len() + 1 > PATH_MAX {
        Some(c_path(path)?)
    } else {
        None
    };
    let mut size = 256usize;
    loop {
        let mut buffer = vec![0u8; size];
        // SAFETY: `buffer` has `size` writable bytes; the paths are NUL-terminated.
        let n = unsafe {
            match &full {
                Some(full) => libc::readlink(full.as_ptr(), buffer.as_mut_ptr().cast(), size),
                None => libc::readlinkat(dir, name.as_ptr(), buffer.as_mut_ptr().cast(), size),
            }
        };
        if n < 0 {
            return Err(errno());
        }
        let n = n as usize;
        if n < size {
            buffer.truncate(n);
            return Ok(buffer);
        }
        size *= 4; // possibly cut short: read again into a larger buffer
    }
}

/// An open directory stream, closed when dropped.
struct Dir(*mut libc::DIR);

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: opened by opendir, closed only here.
        unsafe {
            libc::closedir(self.0);
        }
    }
}

/// `scan._list_dir`: the directory's children, lstat()ed, without excluded, foreign-device and
/// special files; a directory that cannot be listed is reported and has no children.
pub(super) fn list_dir(
    abs: &[u8],
    rel: &[u8],
    device: u64,
    exclusions: &[Vec<u8>],
    errors: &mut Vec<WalkError>,
) -> Level {
    let mut level = Level {
        entries: Vec::new(),
        items: Vec::new(),
        next: 0,
    };
    let fail = |errors: &mut Vec<WalkError>, code: i32| {
        errors.push(WalkError::new(ERR_LIST, abs.to_vec(), code))
    };
    let dir = match c_path(abs) {
        // SAFETY: `path` is NUL-terminated.
        Ok(path) => unsafe { libc::opendir(path.as_ptr()) },
        Err(code) => {
            fail(errors, code);
            return level;
        }
    };
    if dir.is_null() {
        fail(errors, errno());
        return level;
    }
    let dir = Dir(dir);
    // The whole listing first, as `os.scandir` is drained before any child is lstat()ed.
    let mut names: Vec<CString> = Vec::new();
    loop {
        // SAFETY: resetting errno tells the end of the stream from a failure.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `dir.0` is an open stream; the entry stays valid until the next readdir.
        let entry = unsafe { libc::readdir(dir.0) };
        if entry.is_null() {
            // SAFETY: reading this thread's errno.
            let code = unsafe { *libc::__errno_location() };
            if code != 0 {
                fail(errors, code);
                return level;
            }
            break;
        }
        // SAFETY: d_name is NUL-terminated within the entry.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes != b"." && bytes != b".." {
            names.push(name.to_owned());
        }
    }
    // SAFETY: `dir.0` is open.
    let fd = unsafe { libc::dirfd(dir.0) };
    let check = may_exclude_below(abs, exclusions);
    for name in &names {
        let bytes = name.to_bytes();
        let child = join(abs, bytes);
        if std::str::from_utf8(bytes).is_err() {
            errors.push(WalkError::new(ERR_NAME, child, 0));
            continue;
        }
        let st = match lstat_at(fd, name, &child) {
            Ok(st) => st,
            Err(libc::ENOENT) => continue, // vanished since listing: nothing to back up
            Err(code) => {
                errors.push(WalkError::new(ERR_OS, child, code));
                continue;
            }
        };
        let format = st.mode & libc::S_IFMT;
        let is_dir = format == libc::S_IFDIR;
        if !(is_dir || format == libc::S_IFREG || format == libc::S_IFLNK) {
            continue; // sockets, devices, FIFOs
        }
        if st.dev != device || (check && excluded(&child, exclusions)) {
            continue; // another filesystem (its own point) or excluded by policy
        }
        let mut link = Vec::new();
        if format == libc::S_IFLNK {
            match readlink_at(fd, name, &child) {
                Ok(target) if std::str::from_utf8(&target).is_ok() => link = target,
                Ok(_) => {
                    errors.push(WalkError::new(ERR_LINK, child, 0));
                    continue;
                }
                Err(code) => {
                    errors.push(WalkError::new(ERR_OS, child, code));
                    continue;
                }
            }
        }
        let index = level.entries.len();
        level.items.push((bytes.to_vec(), false, index));
        if is_dir {
            let mut key = bytes.to_vec();
            key.push(b'/');
            level.items.push((key, true, index));
        }
        level.entries.push(Entry {
            rel: join_rel(rel, bytes),
            abs: child,
            st,
            link,
        });
    }
    level.items.sort_unstable_by(|a, b| a.0.cmp(&b.0)); // keys are unique
    level
}

/// `scan._join`: a point-relative path.
fn join_rel(rel: &[u8], name: &[u8]) -> Vec<u8> {
    if rel.is_empty() {
        return name.to_vec();
    }
    let mut out = Vec::with_capacity(rel.len() + name.len() + 1);
    out.extend_from_slice(rel);
    out.push(b'/');
    out.extend_from_slice(name);
    out
}
