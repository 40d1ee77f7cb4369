//! The Strongroom agent's small-file read path as one native call per group (ADR 0080).
//!
//! `read_small_files` reads a group of files that are each one chunk (at most the chunker's
//! minimum size), with the GIL released for the whole group: per file it opens exactly as
//! `strongroom_agent.backup.read.open_for_backup` does, reads it under the same consistency rule
//! as `FileReader` (inode, size, mtime and ctime unchanged and the whole size read; one more
//! attempt when they moved), hashes it with keyed BLAKE3 (`chunking.chunk_id`) and compresses it
//! with zstd at the agent's level, keeping the content itself when zstd does not make it smaller
//! (`chunking.compress`). Every failure is a value in the file's result, never a Python exception
//! or a panic: the caller reports it exactly as the Python path would.

mod cdc;

use std::cell::RefCell;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use pyo3::IntoPyObjectExt;

mod walk;

/// Read and chunked consistently: the stat it was read under, its chunk (if not empty), bytes read.
const OK: u8 = 0;
/// Larger than the one-chunk limit when opened or re-read: the caller reads it its own way.
const TOO_BIG: u8 = 1;
/// An operating-system error (its errno) while opening, reading or stat-ing.
const OS_ERROR: u8 = 2;
/// Not a regular file once opened (the scan saw one).
const NOT_REGULAR: u8 = 3;
/// Changed while being read, twice.
const CHANGED: u8 = 4;

const ATTEMPTS: usize = 2;

/// The fields of an `fstat` the agent keeps (`os.stat_result`'s, nanoseconds included).
#[derive(Clone, Copy)]
struct Stat {
    mode: u32,
    ino: u64,
    dev: u64,
    nlink: u64,
    uid: u32,
    gid: u32,
    size: i64,
    atime: (i64, i64),
    mtime: (i64, i64),
    ctime: (i64, i64),
    blksize: i64,
    blocks: i64,
    rdev: u64,
}

impl Stat {
    /// What must not move while a file is read (`read._snapshot`).
    fn snapshot(&self) -> (u64, i64, (i64, i64), (i64, i64)) {
        (self.ino, self.size, self.mtime, self.ctime)
    }
}

struct Chunk {
    id: [u8; 32],
    compressed: bool,
    payload: Vec<u8>,
    raw_length: usize,
}

enum Outcome {
    Read(Stat, Option<Chunk>),
    TooBig,
    Os(i32),
    NotRegular,
    Changed,
}

struct FileResult {
    outcome: Outcome,
    bytes_read: u64,
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// An open descriptor, closed when dropped (every path out of a file's read closes it).
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor was opened by `open_for_backup` and is closed only here.
        unsafe {
            libc::close(self.0);
        }
    }
}

/// `read.open_for_backup`: read-only, no symlink followed, no blocking on a FIFO, close-on-exec,
/// no terminal taken as the controlling one (the agent is a session leader without one), and
/// without touching atime where the caller may (O_NOATIME needs ownership or CAP_FOWNER).
fn open_for_backup(path: &CString) -> Result<Fd, i32> {
    let flags =
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    loop {
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_NOATIME) };
        if fd >= 0 {
            return Ok(Fd(fd));
        }
        match errno() {
            libc::EINTR => continue,
            libc::EPERM => break,
            other => return Err(other),
        }
    }
    loop {
        // SAFETY: as above.
        let fd = unsafe { libc::open(path.as_ptr(), flags) };
        if fd >= 0 {
            return Ok(Fd(fd));
        }
        match errno() {
            libc::EINTR => continue,
            other => return Err(other),
        }
    }
}

fn fstat(fd: &Fd) -> Result<Stat, i32> {
    // SAFETY: a zeroed `stat` is a valid value for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is a valid, writable `stat`.
    if unsafe { libc::fstat(fd.0, &mut st) } != 0 {
        return Err(errno());
    }
    Ok(Stat::from_raw(&st))
}

impl Stat {
    /// The fields kept of a `stat` as the kernel filled it (`fstat` here, `lstat`/`fstatat` in `walk`).
    fn from_raw(st: &libc::stat) -> Stat {
        #[allow(clippy::unnecessary_cast)] // the field types differ between targets
        Stat {
            mode: st.st_mode as u32,
            ino: st.st_ino as u64,
            dev: st.st_dev as u64,
            nlink: st.st_nlink as u64,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            size: st.st_size as i64,
            atime: (st.st_atime as i64, st.st_atime_nsec as i64),
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
            blksize: st.st_blksize as i64,
            blocks: st.st_blocks as i64,
            rdev: st.st_rdev as u64,
        }
    }
}

/// `FileReader._read_small`: up to `size` bytes plus one to notice growth; a read that brings the
/// total to `size` ends it (a file that grew meanwhile fails the stat check after the read).
fn read_content(fd: &Fd, size: usize, bytes_read: &mut u64) -> Result<Vec<u8>, i32> {
    let mut buffer: Vec<u8> = Vec::with_capacity(size + 1);
    let mut left = size + 1;
    while left > 0 {
        let start = buffer.len();
        // SAFETY: the spare capacity is at least `left` bytes (capacity is size + 1, and `left`
        // shrinks by what was read); read() writes at most `left` bytes there.
        let n = unsafe { libc::read(fd.0, buffer.as_mut_ptr().add(start).cast(), left) };
        if n < 0 {
            match errno() {
                libc::EINTR => continue,
                other => return Err(other),
            }
        }
        if n == 0 {
            break;
        }
        let n = n as usize;
        // SAFETY: read() initialised these `n` bytes.
        unsafe { buffer.set_len(start + n) };
        *bytes_read += n as u64;
        left -= n;
        if buffer.len() == size {
            break;
        }
    }
    Ok(buffer)
}

thread_local! {
    // One compression context per worker thread, reused for every file (as `chunking._compressor`),
    // with the level it was made for: a call at another level gets a new one.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

/// zstd at `level` with the worker thread's context (`COMPRESSOR`), or None when the frame is not
/// smaller than `content` (`chunking.compress` then keeps the content itself).
pub(crate) fn smaller_frame(level: i32, content: &[u8]) -> Result<Option<Vec<u8>>, i32> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(made_for, _)| *made_for) != Some(level) {
            *slot = Some((
                level,
                zstd::bulk::Compressor::new(level).map_err(|_| libc::ENOMEM)?,
            ));
        }
        let (_, compressor) = slot.as_mut().ok_or(libc::ENOMEM)?;
        let frame = compressor.compress(content).map_err(|_| libc::ENOMEM)?;
        Ok((frame.len() < content.len()).then_some(frame))
    })
}

/// `chunking.compress`: zstd at `level`, or the content itself when that is not smaller.
fn compress(level: i32, content: Vec<u8>) -> Result<(bool, Vec<u8>), i32> {
    Ok(match smaller_frame(level, &content)? {
        Some(frame) => (true, frame),
        None => (false, content),
    })
}

fn read_one(
    path: &CString,
    key: &[u8; 32],
    level: i32,
    max_size: i64,
    bytes_read: &mut u64,
) -> Outcome {
    let fd = match open_for_backup(path) {
        Ok(fd) => fd,
        Err(code) => return Outcome::Os(code),
    };
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            // SAFETY: `fd` is open.
            if unsafe { libc::lseek(fd.0, 0, libc::SEEK_SET) } < 0 {
                return Outcome::Os(errno());
            }
        }
        let before = match fstat(&fd) {
            Ok(st) => st,
            Err(code) => return Outcome::Os(code),
        };
        if before.mode & libc::S_IFMT != libc::S_IFREG {
            return Outcome::NotRegular;
        }
        if before.size > max_size || before.size < 0 {
            return Outcome::TooBig;
        }
        let content = match read_content(&fd, before.size as usize, bytes_read) {
            Ok(content) => content,
            Err(code) => return Outcome::Os(code),
        };
        let after = match fstat(&fd) {
            Ok(st) => st,
            Err(code) => return Outcome::Os(code),
        };
        if after.snapshot() != before.snapshot() || content.len() as i64 != after.size {
            continue;
        }
        if content.is_empty() {
            return Outcome::Read(before, None); // an empty file has no chunk (FastCDC cuts none)
        }
        let id = *blake3::keyed_hash(key, &content).as_bytes();
        let raw_length = content.len();
        return match compress(level, content) {
            Ok((compressed, payload)) => Outcome::Read(
                before,
                Some(Chunk {
                    id,
                    compressed,
                    payload,
                    raw_length,
                }),
            ),
            Err(code) => Outcome::Os(code),
        };
    }
    Outcome::Changed
}

fn stat_tuple<'py>(py: Python<'py>, st: &Stat) -> PyResult<Bound<'py, PyTuple>> {
    let fields = [
        st.mode.into_py_any(py)?,
        st.ino.into_py_any(py)?,
        st.dev.into_py_any(py)?,
        st.nlink.into_py_any(py)?,
        st.uid.into_py_any(py)?,
        st.gid.into_py_any(py)?,
        st.size.into_py_any(py)?,
        st.atime.0.into_py_any(py)?,
        st.atime.1.into_py_any(py)?,
        st.mtime.0.into_py_any(py)?,
        st.mtime.1.into_py_any(py)?,
        st.ctime.0.into_py_any(py)?,
        st.ctime.1.into_py_any(py)?,
        st.blksize.into_py_any(py)?,
        st.blocks.into_py_any(py)?,
        st.rdev.into_py_any(py)?,
    ];
    PyTuple::new(py, fields)
}

/// Read, hash and compress a group of one-chunk files with the GIL released for the whole group.
///
/// `paths` are file system paths (str or `os.PathLike[str]`, encoded as `os.fsencode` does; bytes
/// are refused with TypeError: PyO3 extracts a `PathBuf` from str alone); `key` the 32-byte
/// chunk-id key; `level` the zstd level; `max_size` the largest file read here (the chunker's
/// minimum size: a file no larger is one chunk). Returns one tuple per path, in order,
/// `(code, bytes_read, ...)`: `(0, n, stat, None)` for an empty file,
/// `(0, n, stat, (id, compressed, payload, raw_length))` for a file read consistently (`stat` the 16 `fstat` fields it was read under, see
/// `strongroom_agent.backup.native`), `(1, n)` too big, `(2, n, errno)`, `(3, n)` not a regular
/// file, `(4, n)` changed while read twice.
#[pyfunction]
fn read_small_files<'py>(
    py: Python<'py>,
    paths: Vec<PathBuf>,
    key: &[u8],
    level: i32,
    max_size: i64,
) -> PyResult<Vec<Bound<'py, PyTuple>>> {
    let key: [u8; 32] = key
        .try_into()
        .map_err(|_| pyo3::exceptions::PyValueError::new_err("key must be 32 bytes"))?;
    let results: Vec<FileResult> = py.allow_threads(|| {
        paths
            .iter()
            .map(|path| {
                let mut bytes_read = 0;
                let outcome = match CString::new(path.as_os_str().as_bytes()) {
                    Ok(cpath) => read_one(&cpath, &key, level, max_size, &mut bytes_read),
                    // A NUL in a path (a scan never yields one; os.open raises ValueError for it).
                    Err(_) => Outcome::Os(libc::EINVAL),
                };
                FileResult {
                    outcome,
                    bytes_read,
                }
            })
            .collect()
    });
    results
        .into_iter()
        .map(|result| {
            let n = result.bytes_read;
            match result.outcome {
                Outcome::Read(st, None) => {
                    (OK, n, stat_tuple(py, &st)?, py.None()).into_pyobject(py)
                }
                Outcome::Read(st, Some(chunk)) => {
                    let id = PyBytes::new(py, &chunk.id);
                    let payload = PyBytes::new(py, &chunk.payload);
                    let chunk =
                        (id, chunk.compressed, payload, chunk.raw_length).into_pyobject(py)?;
                    (OK, n, stat_tuple(py, &st)?, chunk).into_pyobject(py)
                }
                Outcome::TooBig => (TOO_BIG, n).into_pyobject(py),
                Outcome::Os(code) => (OS_ERROR, n, code).into_pyobject(py),
                Outcome::NotRegular => (NOT_REGULAR, n).into_pyobject(py),
                Outcome::Changed => (CHANGED, n).into_pyobject(py),
            }
        })
        .collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("FORMAT", 1)?; // the shape of read_small_files' results; the Python side checks it
    m.add_function(wrap_pyfunction!(read_small_files, m)?)?;
    cdc::register(m)?;
    walk::register(m)?;
    Ok(())
}
