//! The backup's walk compared with the cache, one GIL-free call per step (ADR 0085).
//!
//! `TreeWalk.step` is `strongroom_agent.backup.compare.TreeCompare.step` in Rust: it walks a point's
//! tree in manifest order (`scan.py`'s ordering contract), lists each directory as the walk enters
//! it exactly as `scan._list_dir` does (the same children kept, dropped and reported), pairs each
//! entry with the previous point's cache record (`cache.CacheCursor`, reading the same file) and
//! settles what needs no read: an unchanged regular file (its stored record copied as-is), a
//! directory or a symlink (its FileEntry serialized as the protobuf runtime does, its cache record
//! encoded as `cache.encode_record`, sent only when its bytes differ from the cached entry's), and
//! the cached paths the walk passed without finding. Those leave a step as encoded `Known` runs;
//! only a regular file that must be read leaves it as a changed item, in full. Every failure is a
//! value (an errno and a kind), never a Python exception or a panic; the caller words it as the
//! Python path does. The GIL is released for the whole walk part of a step.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::{errno, stat_tuple, Stat};

/// The shape of `TreeWalk.step`'s result; `strongroom_agent.backup.native` checks it.
const WALK_FORMAT: u32 = 1;

const ENTRY_TYPE_FILE: i64 = 1;
const ENTRY_TYPE_DIRECTORY: u64 = 2;
const ENTRY_TYPE_SYMLINK: u64 = 3;
const TRUSTED: u8 = 1;
/// `cache._STAT`: flags, dev, ino, size, mtime_ns, ctime_ns, path length (little-endian).
const RECORD_HEAD: usize = 1 + 8 * 5 + 2;
/// The kernel refuses a path of this many bytes or more (with its NUL) as ENAMETOOLONG.
const PATH_MAX: usize = libc::PATH_MAX as usize;
const BUFFER: usize = 1 << 20;
/// Nesting of unknown groups a FileEntry may hold (the protobuf runtime's own limit is near).
const GROUP_DEPTH: usize = 64;

/// Why an entry or a directory is reported (`FileError`'s message is worded in Python).
const ERR_LIST: u8 = 0; // "cannot list directory: <strerror>"
const ERR_NAME: u8 = 1; // "name is not valid UTF-8"
const ERR_OS: u8 = 2; // "<strerror>"
const ERR_LINK: u8 = 3; // "symlink target is not valid UTF-8"

fn ns(t: (i64, i64)) -> i64 {
    t.0.wrapping_mul(1_000_000_000).wrapping_add(t.1)
}

// --- the cache -------------------------------------------------------------------------------------------------------

type StatKey = (u64, u64, u64, i64, i64);

/// One record of the previous point's cache (`cache.CacheRecord`).
struct CacheRecord {
    path: Vec<u8>,
    key: StatKey,
    trusted: bool,
    raw: Vec<u8>,
    body: usize, // where the FileEntry starts in `raw` (may lie past its end, as in Python)
    kind: i64,
}

impl CacheRecord {
    /// `CacheRecord.unchanged`: trusted, a file, the same (dev, inode, size, mtime, ctime).
    fn unchanged(&self, st: &Stat) -> bool {
        self.trusted
            && self.kind == ENTRY_TYPE_FILE
            && st.size >= 0
            && self.key == (st.dev, st.ino, st.size as u64, ns(st.mtime), ns(st.ctime))
    }

    fn entry_bytes(&self) -> &[u8] {
        &self.raw[self.body.min(self.raw.len())..]
    }
}

fn varint(data: &[u8], pos: &mut usize) -> Result<u64, &'static str> {
    let mut value = 0u64;
    for shift in 0..10 {
        let byte = *data.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        value |= u64::from(byte & 0x7F) << (7 * shift);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long")
}

fn skip(data: &[u8], pos: &mut usize, n: usize) -> Result<(), &'static str> {
    if data.len() - *pos < n {
        return Err("truncated field");
    }
    *pos += n;
    Ok(())
}

/// Skips one field's value of wire type `wire` (an unknown group: up to its end tag).
fn skip_value(
    data: &[u8],
    pos: &mut usize,
    field: u64,
    wire: u64,
    depth: usize,
) -> Result<(), &'static str> {
    match wire {
        0 => varint(data, pos).map(|_| ()),
        1 => skip(data, pos, 8),
        2 => {
            let n = usize::try_from(varint(data, pos)?).map_err(|_| "length too large")?;
            skip(data, pos, n)
        }
        5 => skip(data, pos, 4),
        3 => {
            if depth >= GROUP_DEPTH {
                return Err("groups nested too deep");
            }
            loop {
                let (inner, inner_wire) = tag(data, pos)?;
                if inner_wire == 4 {
                    return if inner == field {
                        Ok(())
                    } else {
                        Err("mismatched end group")
                    };
                }
                skip_value(data, pos, inner, inner_wire, depth + 1)?;
            }
        }
        _ => Err("invalid wire type"),
    }
}

fn tag(data: &[u8], pos: &mut usize) -> Result<(u64, u64), &'static str> {
    let tag = varint(data, pos)?;
    if tag > u64::from(u32::MAX) || tag >> 3 == 0 {
        return Err("invalid tag");
    }
    Ok((tag >> 3, tag & 7))
}

/// The path and type of a serialized FileEntry, parsed as the protobuf runtime parses it (strings
/// must be UTF-8, the last occurrence of a field wins, fields of another wire type are unknown
/// ones); for the records `leading_type` cannot read (the point root's, or any not written as the
/// runtime writes).
fn parse_path_and_type(data: &[u8]) -> Result<(Vec<u8>, i64), &'static str> {
    let (mut path, mut kind, mut pos) = (Vec::new(), 0i64, 0usize);
    while pos < data.len() {
        let (field, wire) = tag(data, &mut pos)?;
        match (field, wire) {
            (2, 0) => kind = i64::from(varint(data, &mut pos)? as u32 as i32),
            (1 | 8, 2) => {
                let n = usize::try_from(varint(data, &mut pos)?).map_err(|_| "length too large")?;
                let start = pos;
                skip(data, &mut pos, n)?;
                let text = &data[start..pos];
                std::str::from_utf8(text).map_err(|_| "string field is not UTF-8")?;
                if field == 1 {
                    path = text.to_vec();
                }
            }
            (_, 4) => return Err("unexpected end group"),
            _ => skip_value(data, &mut pos, field, wire, 0)?,
        }
    }
    Ok((path, kind))
}

/// `cache._path_field`: `path` as field 1 of a serialized FileEntry.
fn path_field(path: &[u8], out: &mut Vec<u8>) {
    out.push(0x0A);
    put_varint(out, path.len() as u64);
    out.extend_from_slice(path);
}

/// `cache._leading_type`: the entry's type if it leads with `path` as the runtime writes it.
fn leading_type(data: &[u8], body: usize, path: &[u8]) -> Option<i64> {
    if path.is_empty() || body > data.len() {
        return None;
    }
    let mut lead = Vec::with_capacity(path.len() + 3);
    path_field(path, &mut lead);
    if !data[body..].starts_with(&lead) {
        return None;
    }
    let end = body + lead.len();
    if end + 1 < data.len() && data[end] == 0x10 {
        let kind = data[end + 1];
        return if kind & 0x80 == 0 {
            Some(i64::from(kind))
        } else {
            None
        };
    }
    if end < data.len() && data[end] == 0x10 {
        return None;
    }
    Some(0)
}

/// `cache.CacheCursor` over a validated cache: records in path order, one ahead; a malformed one
/// ends it (`broken`), keeping those before it.
struct Cursor {
    file: BufReader<File>,
    count: u64,
    ahead: Option<CacheRecord>,
    done: bool,
    parsed: u64,
    last: Vec<u8>,
    taken: u64,
    broken: Option<String>,
}

impl Cursor {
    fn open(path: &PathBuf, body_offset: u64, count: u64) -> std::io::Result<Cursor> {
        let mut file = BufReader::with_capacity(BUFFER, File::open(path)?);
        file.seek(SeekFrom::Start(body_offset))?;
        Ok(Cursor {
            file,
            count,
            ahead: None,
            done: false,
            parsed: 0,
            last: Vec::new(),
            taken: 0,
            broken: None,
        })
    }

    fn peek(&mut self) -> Option<&CacheRecord> {
        if self.ahead.is_none() && !self.done {
            match self.read_record() {
                Ok(Some(record)) => {
                    self.parsed += 1;
                    self.ahead = Some(record);
                }
                Ok(None) => self.done = true,
                Err(problem) => {
                    self.broken = Some(format!(
                        "unusable after {} records: {}",
                        self.parsed, problem
                    ));
                    self.done = true;
                }
            }
        }
        self.ahead.as_ref()
    }

    fn take(&mut self) -> Option<CacheRecord> {
        let record = self.ahead.take();
        if record.is_some() {
            self.taken += 1;
        }
        record
    }

    fn read_record(&mut self) -> Result<Option<CacheRecord>, String> {
        let mut head = [0u8; 4];
        self.file.read_exact(&mut head).map_err(|e| e.to_string())?;
        let length = u32::from_le_bytes(head);
        if length == 0 {
            if self.parsed != self.count {
                return Err("record count mismatch".into());
            }
            return Ok(None);
        }
        let mut data = Vec::with_capacity(length as usize);
        (&mut self.file)
            .take(u64::from(length))
            .read_to_end(&mut data)
            .map_err(|e| e.to_string())?;
        if data.len() < RECORD_HEAD {
            return Err("record shorter than its header".into());
        }
        let u64_at =
            |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap_or_default());
        let key = (
            u64_at(1),
            u64_at(9),
            u64_at(17),
            u64_at(25) as i64,
            u64_at(33) as i64,
        );
        let path_length = usize::from(u16::from_le_bytes([data[41], data[42]]));
        let body = RECORD_HEAD + path_length;
        let path = data[RECORD_HEAD..body.min(data.len())].to_vec();
        let kind = match leading_type(&data, body, &path) {
            Some(kind) => kind,
            None => {
                let (entry_path, kind) = parse_path_and_type(&data[body.min(data.len())..])?;
                if entry_path != path {
                    return Err(format!(
                        "record {:?} inconsistent",
                        String::from_utf8_lossy(&path)
                    ));
                }
                kind
            }
        };
        if self.parsed > 0 && path <= self.last {
            return Err(format!(
                "record {:?} out of order",
                String::from_utf8_lossy(&path)
            ));
        }
        self.last.clone_from(&path);
        let trusted = data[0] & TRUSTED != 0;
        Ok(Some(CacheRecord {
            path,
            key,
            trusted,
            raw: data,
            body,
            kind,
        }))
    }
}

// --- encoding --------------------------------------------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7F) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A directory's or a symlink's FileEntry serialized as the protobuf runtime does (`scan.file_entry`:
/// fields in number order, defaults left out; size 0, no chunk ids).
fn entry_body(rel: &[u8], kind: u64, st: &Stat, link: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rel.len() + link.len() + 32);
    if !rel.is_empty() {
        path_field(rel, &mut out);
    }
    for (tag, value) in [
        (0x10, kind),
        (0x18, u64::from(st.mode & 0o7777)),
        (0x20, u64::from(st.uid)),
        (0x28, u64::from(st.gid)),
    ] {
        if value != 0 {
            out.push(tag);
            put_varint(&mut out, value);
        }
    }
    let mtime = ns(st.mtime);
    if mtime != 0 {
        out.push(0x38);
        put_varint(&mut out, mtime as u64); // int64: a negative one as its ten-byte two's complement
    }
    if !link.is_empty() {
        out.push(0x42);
        put_varint(&mut out, link.len() as u64);
        out.extend_from_slice(link);
    }
    out
}

/// `cache.encode_record`: one length-prefixed cache record; trusted unless its ctime is racy.
fn encode_record(out: &mut Vec<u8>, path: &[u8], body: &[u8], st: &Stat, racy_before_ns: i64) {
    let ctime = ns(st.ctime);
    out.extend_from_slice(&((RECORD_HEAD + path.len() + body.len()) as u32).to_le_bytes());
    out.push(if ctime < racy_before_ns { TRUSTED } else { 0 });
    for value in [
        st.dev,
        st.ino,
        st.size as u64,
        ns(st.mtime) as u64,
        ctime as u64,
    ] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&(path.len() as u16).to_le_bytes());
    out.extend_from_slice(path);
    out.extend_from_slice(body);
}

/// `compare._Run`: one run of settled entries, its cache records and spool records.
#[derive(Default)]
struct Run {
    records: Vec<u8>,
    spool: Vec<u8>,
    count: usize,
    spool_entries: usize,
    first: Vec<u8>,
    last: Vec<u8>,
    entries: usize, // cache records and deleted paths
}

impl Run {
    fn is_empty(&self) -> bool {
        self.entries == 0 && self.spool.is_empty()
    }

    fn add_cache(&mut self, path: &[u8]) -> Result<(), Vec<u8>> {
        if self.count > 0 {
            if path <= self.last.as_slice() {
                return Err(path.to_vec());
            }
        } else {
            self.first = path.to_vec();
        }
        self.last = path.to_vec();
        self.count += 1;
        self.entries += 1;
        Ok(())
    }

    fn spool_record(&mut self, kind: u8, bytes: &[u8]) {
        self.spool.push(kind);
        self.spool
            .extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        self.spool.extend_from_slice(bytes);
    }
}

// --- listing ---------------------------------------------------------------------------------------------------------

struct Entry {
    rel: Vec<u8>,
    abs: Vec<u8>,
    st: Stat,
    link: Vec<u8>,
}

/// One directory of the walk: its entries sorted by key (a directory twice: its entry at `name`,
/// its subtree at `name/`) and the walk's position in them.
struct Level {
    entries: Vec<Entry>,
    items: Vec<(Vec<u8>, bool, usize)>, // (sort key, descend?, entry)
    next: usize,
}

struct WalkError {
    kind: u8,
    path: Vec<u8>,
    errno: i32,
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

fn lstat(path: &[u8]) -> Result<Stat, i32> {
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
fn list_dir(
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

// --- the walk --------------------------------------------------------------------------------------------------------

enum Found {
    Known(Run),
    Changed {
        rel: Vec<u8>,
        abs: Vec<u8>,
        st: Stat,
        cached: Option<CacheRecord>,
    },
}

#[derive(Default)]
struct StepOut {
    items: Vec<Found>,
    errors: Vec<WalkError>,
    files_scanned: u64,
    bytes_scanned: u64,
    files_unchanged: u64,
    bytes_unchanged: u64,
    done: bool,
}

enum StepError {
    Root(i32),         // the root could not be lstat()ed
    Unsorted(Vec<u8>), // an internal ordering fault (never expected)
}

struct Walk {
    root: Vec<u8>,
    exclusions: Vec<Vec<u8>>,
    cursor: Option<Cursor>,
    racy_before_ns: Option<i64>,
    step_entries: usize,
    run_entries: usize,
    stack: Option<Vec<Level>>,
    device: u64,
}

impl Walk {
    fn seal(out: &mut StepOut, run: &mut Run) {
        out.items.push(Found::Known(std::mem::take(run)));
    }

    fn maybe_seal(&self, out: &mut StepOut, run: &mut Run) {
        if run.entries >= self.run_entries {
            Self::seal(out, run);
        }
    }

    /// `TreeCompare.step`.
    fn step(&mut self) -> Result<StepOut, StepError> {
        let mut out = StepOut::default();
        if self.stack.is_none() {
            let st = lstat(&self.root).map_err(StepError::Root)?;
            self.device = st.dev;
            let root = Entry {
                rel: Vec::new(),
                abs: self.root.clone(),
                st,
                link: Vec::new(),
            };
            let items = vec![(Vec::new(), false, 0), (b"/".to_vec(), true, 0)];
            self.stack = Some(vec![Level {
                entries: vec![root],
                items,
                next: 0,
            }]);
        }
        let mut stack = self.stack.take().unwrap_or_default();
        let result = self.walk(&mut stack, &mut out);
        self.stack = Some(stack);
        result.map(|()| out)
    }

    fn walk(&mut self, stack: &mut Vec<Level>, out: &mut StepOut) -> Result<(), StepError> {
        let mut run = Run::default();
        let mut budget = self.step_entries;
        while budget > 0 {
            let Some(level) = stack.last_mut() else { break };
            if level.next >= level.items.len() {
                stack.pop();
                continue;
            }
            let (_, descend, index) = level.items[level.next];
            if descend {
                level.next += 1;
                let entry = &level.entries[index];
                let (abs, rel) = (entry.abs.clone(), entry.rel.clone());
                let listing = list_dir(&abs, &rel, self.device, &self.exclusions, &mut out.errors);
                stack.push(listing);
                continue;
            }
            let path = level.entries[index].rel.clone();
            budget = self.deleted_before(out, &mut run, Some(&path), budget);
            if budget == 0 {
                break; // cached paths before this entry are still to delete: the entry is the next step's
            }
            let level = stack.last_mut().expect("the level just read");
            level.next += 1;
            budget -= 1;
            let entry = &level.entries[index];
            self.entry(out, &mut run, entry, path)?;
        }
        if stack.is_empty() {
            self.deleted_before(out, &mut run, None, budget);
            out.done = match self.cursor.as_mut() {
                None => true,
                Some(cursor) => cursor.peek().is_none(),
            };
        }
        if !run.is_empty() {
            Self::seal(out, &mut run);
        }
        Ok(())
    }

    /// `TreeCompare._deleted_before`: delete the cached paths before `path` (None: all left), up to
    /// `budget` of them; the budget left (0: more may remain).
    fn deleted_before(
        &mut self,
        out: &mut StepOut,
        run: &mut Run,
        path: Option<&[u8]>,
        mut budget: usize,
    ) -> usize {
        let run_entries = self.run_entries;
        let Some(cursor) = self.cursor.as_mut() else {
            return budget;
        };
        while let Some(record) = cursor.peek() {
            if path.is_some_and(|p| record.path.as_slice() >= p) {
                break;
            }
            if budget == 0 {
                return 0;
            }
            budget -= 1;
            let record = cursor.take().expect("peeked");
            run.spool_record(b'D', &record.path);
            run.entries += 1;
            if run.entries >= run_entries {
                Self::seal(out, run);
            }
        }
        budget
    }

    /// `TreeCompare._entry`: settle one entry into `run` or hand it out as changed.
    fn entry(
        &mut self,
        out: &mut StepOut,
        run: &mut Run,
        entry: &Entry,
        path: Vec<u8>,
    ) -> Result<(), StepError> {
        let mut cached = None;
        if let Some(cursor) = self.cursor.as_mut() {
            if cursor.peek().is_some_and(|record| record.path == path) {
                cached = cursor.take();
            }
        }
        out.files_scanned += 1;
        let st = &entry.st;
        if st.mode & libc::S_IFMT == libc::S_IFREG {
            out.bytes_scanned = out.bytes_scanned.wrapping_add(st.size as u64);
            let record = match cached {
                Some(record) if record.unchanged(st) => record,
                cached => {
                    if !run.is_empty() {
                        Self::seal(out, run);
                    }
                    out.items.push(Found::Changed {
                        rel: path,
                        abs: entry.abs.clone(),
                        st: *st,
                        cached,
                    });
                    return Ok(());
                }
            };
            // Same inode, size, mtime and ctime: mode and owner are unchanged too (they move ctime).
            out.files_unchanged += 1;
            out.bytes_unchanged = out.bytes_unchanged.wrapping_add(st.size as u64);
            if self.racy_before_ns.is_some() {
                run.add_cache(&path).map_err(StepError::Unsorted)?;
                run.records
                    .extend_from_slice(&(record.raw.len() as u32).to_le_bytes());
                run.records.extend_from_slice(&record.raw);
            } else {
                run.entries += 1;
            }
        } else {
            let kind = if st.mode & libc::S_IFMT == libc::S_IFDIR {
                ENTRY_TYPE_DIRECTORY
            } else {
                ENTRY_TYPE_SYMLINK
            };
            let body = entry_body(&path, kind, st, &entry.link);
            if let Some(racy_before_ns) = self.racy_before_ns {
                run.add_cache(&path).map_err(StepError::Unsorted)?;
                encode_record(&mut run.records, &path, &body, st, racy_before_ns);
            } else {
                run.entries += 1;
            }
            // Sent unless the cached entry's bytes are these (the runtime serializes canonically).
            if cached
                .as_ref()
                .is_none_or(|record| record.entry_bytes() != body.as_slice())
            {
                run.spool_record(b'E', &body);
                run.spool_entries += 1;
            }
        }
        self.maybe_seal(out, run);
        Ok(())
    }
}

// --- Python ----------------------------------------------------------------------------------------------------------

/// The walk of one point's tree against its previous point's cache, in bounded steps (ADR 0085).
///
/// `TreeWalk(root, exclusions, cache, racy_before_ns, step_entries, run_entries)`: `root` the
/// point's mount point (`os.fsencode`d, normalized), `exclusions` the `LinuxExclusions` directories
/// (`os.fsencode`d), `cache` None or `(path, body_offset, count)` of a validated cache
/// (`cache.CacheInfo`), `racy_before_ns` None when no cache is written. `step()` walks on for up to
/// `step_entries` entries with the GIL released and returns
/// `(root_errno, items, errors, (files_scanned, bytes_scanned, files_unchanged, bytes_unchanged), done)`:
/// `root_errno` non-zero when the root could not be lstat()ed (the first step only; nothing else is
/// set); `items` in manifest order, each `(0, cache_records, cache_count, first, last, spool,
/// spool_entries)` (a `Known` run) or `(1, rel, path, stat, cached)` (a file to read: its
/// point-relative path, its host path, the 16 `lstat` fields, and its cache record as `(path, dev, ino,
/// size, mtime_ns, ctime_ns, trusted, raw, body, kind)` or None); `errors` as `(kind, path, errno)`.
/// Not for two threads at once (the object is borrowed mutably for the whole step).
#[pyclass(module = "strongroom_agent._native")]
pub struct TreeWalk {
    walk: Walk,
}

#[pymethods]
impl TreeWalk {
    #[new]
    #[pyo3(signature = (root, exclusions, cache, racy_before_ns, step_entries, run_entries))]
    fn new(
        root: Vec<u8>,
        exclusions: Vec<Vec<u8>>,
        cache: Option<(PathBuf, u64, u64)>,
        racy_before_ns: Option<i64>,
        step_entries: usize,
        run_entries: usize,
    ) -> PyResult<Self> {
        let cursor = match cache {
            Some((path, body_offset, count)) => Some(Cursor::open(&path, body_offset, count)?),
            None => None,
        };
        let walk = Walk {
            root,
            exclusions,
            cursor,
            racy_before_ns,
            step_entries: step_entries.max(1),
            run_entries,
            stack: None,
            device: 0,
        };
        Ok(TreeWalk { walk })
    }

    /// Walk no further: the next steps delete the cached paths left.
    fn end_walk(&mut self) {
        self.walk.stack = Some(Vec::new());
    }

    /// Why the cache stopped being read (`CacheCursor.broken`), or None.
    #[getter]
    fn broken(&self) -> Option<String> {
        self.walk
            .cursor
            .as_ref()
            .and_then(|cursor| cursor.broken.clone())
    }

    /// Cache records taken so far (`CacheCursor.records_read`).
    #[getter]
    fn records_read(&self) -> u64 {
        self.walk.cursor.as_ref().map_or(0, |cursor| cursor.taken)
    }

    fn step<'py>(mut slf: PyRefMut<'py, Self>, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let walk = &mut slf.walk;
        let result = py.allow_threads(|| walk.step());
        let out = match result {
            Ok(out) => out,
            Err(StepError::Root(code)) => {
                let empty = PyList::empty(py);
                return (code, empty.clone(), empty, (0, 0, 0, 0), false).into_pyobject(py);
            }
            Err(StepError::Unsorted(path)) => {
                let message = format!(
                    "cache entries must be sorted: {:?}",
                    String::from_utf8_lossy(&path)
                );
                return Err(pyo3::exceptions::PyValueError::new_err(message));
            }
        };
        let items = PyList::empty(py);
        for found in out.items {
            match found {
                Found::Known(run) => items.append((
                    0,
                    PyBytes::new(py, &run.records),
                    run.count,
                    PyBytes::new(py, &run.first),
                    PyBytes::new(py, &run.last),
                    PyBytes::new(py, &run.spool),
                    run.spool_entries,
                ))?,
                Found::Changed {
                    rel,
                    abs,
                    st,
                    cached,
                } => {
                    let cached = match cached {
                        None => py.None(),
                        Some(r) => (
                            PyBytes::new(py, &r.path),
                            r.key.0,
                            r.key.1,
                            r.key.2,
                            r.key.3,
                            r.key.4,
                            r.trusted,
                            PyBytes::new(py, &r.raw),
                            r.body,
                            r.kind,
                        )
                            .into_py_any(py)?,
                    };
                    items.append((
                        1,
                        PyBytes::new(py, &rel),
                        PyBytes::new(py, &abs),
                        stat_tuple(py, &st)?,
                        cached,
                    ))?
                }
            }
        }
        let errors = PyList::empty(py);
        for error in out.errors {
            errors.append((error.kind, PyBytes::new(py, &error.path), error.errno))?;
        }
        let counters = (
            out.files_scanned,
            out.bytes_scanned,
            out.files_unchanged,
            out.bytes_unchanged,
        );
        (0, items, errors, counters, out.done).into_pyobject(py)
    }
}

/// Adds `TreeWalk` and `WALK_FORMAT` to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("WALK_FORMAT", WALK_FORMAT)?;
    m.add_class::<TreeWalk>()
}
