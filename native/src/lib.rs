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
//!
//! `write_new_files` is the restore's counterpart (ADR 0082): a run of files going into names that
//! were free at the conflict check, in one already-opened parent directory, each created with
//! `O_EXCL`, its chunks decoded and written, its metadata applied and closed, with the GIL released
//! for the whole run; a file that fails after its creation is unlinked again.

use std::cell::RefCell;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;
use pyo3::types::{PyBytes, PyTuple};

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
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
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
/// and without touching atime where the caller may (O_NOATIME needs ownership or CAP_FOWNER).
fn open_for_backup(path: &CString) -> Result<Fd, i32> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
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
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Ok(Stat {
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
    })
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
    // One compression context per worker thread, reused for every file (as `chunking._compressor`).
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

/// `chunking.compress`: zstd at `level`, or the content itself when that is not smaller.
fn compress(level: i32, content: Vec<u8>) -> Result<(bool, Vec<u8>), i32> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Compressor::new(level).map_err(|_| libc::ENOMEM)?);
        }
        let compressor = slot.as_mut().ok_or(libc::ENOMEM)?;
        let frame = compressor.compress(&content).map_err(|_| libc::ENOMEM)?;
        if frame.len() < content.len() {
            Ok((true, frame))
        } else {
            Ok((false, content))
        }
    })
}

fn read_one(path: &CString, key: &[u8; 32], level: i32, max_size: i64, bytes_read: &mut u64) -> Outcome {
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
            Ok((compressed, payload)) => Outcome::Read(before, Some(Chunk { id, compressed, payload, raw_length })),
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
/// `paths` are file system paths (str or bytes); `key` the 32-byte chunk-id key; `level` the zstd
/// level; `max_size` the largest file read here (the chunker's minimum size: a file no larger is
/// one chunk). Returns one tuple per path, in order, `(code, bytes_read, ...)`:
/// `(0, n, stat, None)` for an empty file, `(0, n, stat, (id, compressed, payload, raw_length))`
/// for a file read consistently (`stat` the 16 `fstat` fields it was read under, see
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
                    Err(_) => Outcome::Os(libc::EINVAL), // a NUL in a path: os.open refuses it too
                };
                FileResult { outcome, bytes_read }
            })
            .collect()
    });
    results
        .into_iter()
        .map(|result| {
            let n = result.bytes_read;
            match result.outcome {
                Outcome::Read(st, None) => (OK, n, stat_tuple(py, &st)?, py.None()).into_pyobject(py),
                Outcome::Read(st, Some(chunk)) => {
                    let id = PyBytes::new(py, &chunk.id);
                    let payload = PyBytes::new(py, &chunk.payload);
                    let chunk = (id, chunk.compressed, payload, chunk.raw_length).into_pyobject(py)?;
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

/// Written: created, filled, its metadata applied, closed.
const WRITTEN: u8 = 0;
/// The name was taken since the check (`EEXIST` at the create): nothing was touched.
const EXISTS: u8 = 1;
/// An operating-system error (its errno); the file, if it was created, is unlinked again.
const WRITE_OS_ERROR: u8 = 2;
/// The chunk at this index did not inflate to exactly its declared length; the file is unlinked.
const DAMAGED: u8 = 3;

/// `restore.content.DECODE_BUFFER_BYTES`: zstd chunks are decoded into one reused buffer per thread.
const DECODE_BUFFER_BYTES: usize = 4 << 20;
/// `IOV_MAX` on Linux: pieces per `writev` (`destination._WRITEV_MAX`).
const WRITEV_MAX: usize = 1024;
const NEW_FILE_FLAGS: libc::c_int = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// One chunk of a file as the gateway sent it: its bytes, whether they are a zstd frame, its length.
struct Piece {
    data: *const u8,
    len: usize,
    zstd: bool,
    length: usize,
}

/// One file of a run, taken out of its Python tuple while the GIL is held.
struct NewFile {
    name: Option<CString>, // None: a NUL in the name (refused with EINVAL, as os.open refuses it)
    mode: u32,
    chown: Option<(u32, u32)>,
    chmod: Option<u32>,
    mtime_ns: i64,
    pieces: Vec<Piece>,
}

// SAFETY: the pointers in `Piece` point into buffers whose exports (`PyBuffer`) the caller holds, read-only,
// for as long as the run is written; nothing else is shared.
unsafe impl Send for NewFile {}

enum NewFileOutcome {
    Written,
    Exists,
    Os(i32),
    Damaged(usize),
}

thread_local! {
    // One decompression context and one decode buffer per writer thread, reused for every file.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    static DECODE_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `out` filled from the zstd `frame`, which must inflate to exactly `out.len()` bytes.
fn inflate(frame: &[u8], out: &mut [u8]) -> bool {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            match zstd::bulk::Decompressor::new() {
                Ok(context) => *slot = Some(context),
                Err(_) => return false,
            }
        }
        match slot.as_mut() {
            Some(context) => matches!(context.decompress_to_buffer(frame, out), Ok(n) if n == out.len()),
            None => false,
        }
    })
}

/// All of `iovs` written to `fd` in order (`Destination.write`: one `writev` when the kernel takes it
/// whole, the rest after a short write).
fn write_all(fd: libc::c_int, iovs: &mut [libc::iovec]) -> Result<(), i32> {
    let mut start = 0;
    while start < iovs.len() {
        if iovs[start].iov_len == 0 {
            start += 1;
            continue;
        }
        let count = (iovs.len() - start).min(WRITEV_MAX);
        // SAFETY: `iovs[start..start + count]` are valid iovecs over memory that outlives the call.
        let n = unsafe { libc::writev(fd, iovs.as_ptr().add(start), count as libc::c_int) };
        if n < 0 {
            match errno() {
                libc::EINTR => continue,
                other => return Err(other),
            }
        }
        let mut n = n as usize;
        while n > 0 && start < iovs.len() {
            let piece = &mut iovs[start];
            if n >= piece.iov_len {
                n -= piece.iov_len;
                start += 1;
            } else {
                // SAFETY: advancing within the piece (n < its length).
                piece.iov_base = unsafe { piece.iov_base.cast::<u8>().add(n).cast() };
                piece.iov_len -= n;
                n = 0;
            }
        }
    }
    Ok(())
}

fn iovec(data: *const u8, len: usize) -> libc::iovec {
    libc::iovec { iov_base: data as *mut libc::c_void, iov_len: len }
}

/// `ContentWriter.write`: the file's chunks in order, stored ones written from where they are, zstd ones
/// inflated into the thread's decode buffer (written out whenever it is full) or, larger than it, into
/// memory of their own. `Err(Ok(i))`: chunk `i` did not inflate to its length; `Err(Err(errno))`.
fn fill(fd: libc::c_int, pieces: &[Piece]) -> Result<(), Result<usize, i32>> {
    DECODE_BUFFER.with(|cell| {
        let mut buffer = cell.borrow_mut();
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(pieces.len());
        let mut own: Vec<Vec<u8>> = Vec::new(); // chunks larger than the buffer, until written
        let mut used = 0;
        for (index, piece) in pieces.iter().enumerate() {
            if !piece.zstd {
                iovs.push(iovec(piece.data, piece.len));
                continue;
            }
            // SAFETY: `data`/`len` describe a live, read-only buffer export (see `NewFile`).
            let frame = unsafe { std::slice::from_raw_parts(piece.data, piece.len) };
            if piece.length > DECODE_BUFFER_BYTES {
                let mut out = vec![0u8; piece.length];
                if !inflate(frame, &mut out) {
                    return Err(Ok(index));
                }
                iovs.push(iovec(out.as_ptr(), out.len()));
                own.push(out);
                continue;
            }
            if buffer.is_empty() {
                buffer.resize(DECODE_BUFFER_BYTES, 0);
            }
            if used + piece.length > DECODE_BUFFER_BYTES {
                // The buffer is full: write what it (and everything before) holds, then reuse it.
                write_all(fd, &mut iovs).map_err(Err)?;
                iovs.clear();
                own.clear();
                used = 0;
            }
            let out = &mut buffer[used..used + piece.length];
            if !inflate(frame, out) {
                return Err(Ok(index));
            }
            iovs.push(iovec(out.as_ptr(), out.len()));
            used += piece.length;
        }
        write_all(fd, &mut iovs).map_err(Err)
    })
}

/// `os.utime(fd, ns=(mtime_ns, mtime_ns))`: seconds and nanoseconds by floor division, as CPython splits them.
fn futimens(fd: libc::c_int, mtime_ns: i64) -> Result<(), i32> {
    let ts = libc::timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000) as libc::time_t,
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as libc::c_long,
    };
    let times = [ts, ts];
    // SAFETY: `fd` is open and `times` holds two valid timespecs.
    if unsafe { libc::futimens(fd, times.as_ptr()) } != 0 {
        return Err(errno());
    }
    Ok(())
}

/// `Destination._apply_metadata`: owner first (chown clears set-id bits), then mode, then mtime (and atime).
fn apply_metadata(fd: libc::c_int, file: &NewFile) -> Result<(), i32> {
    if let Some((uid, gid)) = file.chown {
        // SAFETY: `fd` is open.
        if unsafe { libc::fchown(fd, uid, gid) } != 0 {
            return Err(errno());
        }
    }
    if let Some(mode) = file.chmod {
        // SAFETY: `fd` is open.
        if unsafe { libc::fchmod(fd, mode as libc::mode_t) } != 0 {
            return Err(errno());
        }
    }
    futimens(fd, file.mtime_ns)
}

/// `Destination.write_new` for a fresh name: create (`O_EXCL`), fill, metadata, close; unlink on any failure.
fn write_one(pfd: libc::c_int, file: &NewFile) -> NewFileOutcome {
    let Some(name) = file.name.as_ref() else {
        return NewFileOutcome::Os(libc::EINVAL);
    };
    let fd = loop {
        // SAFETY: `name` is NUL-terminated; `pfd` is the caller's open directory.
        let fd = unsafe { libc::openat(pfd, name.as_ptr(), NEW_FILE_FLAGS, file.mode as libc::c_uint) };
        if fd >= 0 {
            break fd;
        }
        match errno() {
            libc::EINTR => continue,
            libc::EEXIST => return NewFileOutcome::Exists,
            other => return NewFileOutcome::Os(other),
        }
    };
    let mut outcome = match fill(fd, &file.pieces) {
        Ok(()) => apply_metadata(fd, file).map_or_else(NewFileOutcome::Os, |()| NewFileOutcome::Written),
        Err(Ok(index)) => NewFileOutcome::Damaged(index),
        Err(Err(code)) => NewFileOutcome::Os(code),
    };
    // SAFETY: `fd` was opened above and is closed exactly once, here.
    if unsafe { libc::close(fd) } != 0 && matches!(outcome, NewFileOutcome::Written) {
        outcome = NewFileOutcome::Os(errno());
    }
    if !matches!(outcome, NewFileOutcome::Written) {
        // SAFETY: as for openat. Nothing partial stays; a failing unlink leaves the first error standing.
        unsafe { libc::unlinkat(pfd, name.as_ptr(), 0) };
    }
    outcome
}

/// A file of `write_new_files`: name, creation mode, chown (uid, gid) or None, chmod mode or None,
/// mtime in ns, and its chunks as (data, is_zstd, length).
type FileSpec = (PathBuf, u32, Option<(u32, u32)>, Option<u32>, i64, Vec<(PyBuffer<u8>, bool, usize)>);

/// Write a run of new files into the open directory `pfd` with the GIL released for the whole run.
///
/// Per file `(name, mode, chown, chmod, mtime_ns, chunks)`: `openat(pfd, name, O_WRONLY | O_CREAT |
/// O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)`, its chunks (`(data, is_zstd, length)`: stored data is
/// written as it is and must be `length` bytes, a zstd frame must inflate to exactly `length`)
/// written in order, `fchown(uid, gid)` when `chown` is given, `fchmod(chmod)` when given,
/// `futimens` to `mtime_ns` (atime too), `close`; on any failure after the create the name is
/// unlinked. Returns one `(code, value)` per file, in order: `(0, 0)` written, `(1, 0)` the name
/// exists (nothing touched), `(2, errno)`, `(3, index)` chunk `index` did not inflate to its length.
/// Names must have been checked by the caller (one component, no `.`/`..`); ValueError for a stored
/// chunk of the wrong length or a buffer that is not contiguous bytes (nothing is written then).
#[pyfunction]
fn write_new_files(py: Python<'_>, pfd: libc::c_int, files: Vec<FileSpec>) -> PyResult<Vec<(u8, i64)>> {
    let mut buffers: Vec<PyBuffer<u8>> = Vec::new(); // kept exported until the run is written
    let mut run: Vec<NewFile> = Vec::with_capacity(files.len());
    for (name, mode, chown, chmod, mtime_ns, chunks) in files {
        let mut pieces = Vec::with_capacity(chunks.len());
        for (data, zstd, length) in chunks {
            if !data.is_c_contiguous() {
                return Err(pyo3::exceptions::PyValueError::new_err("chunk data must be contiguous bytes"));
            }
            let len = data.len_bytes();
            if !zstd && len != length {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "stored chunk is {len} bytes, expected {length}"
                )));
            }
            pieces.push(Piece { data: data.buf_ptr() as *const u8, len, zstd, length });
            buffers.push(data);
        }
        let name = CString::new(name.as_os_str().as_bytes()).ok();
        run.push(NewFile { name, mode, chown, chmod, mtime_ns, pieces });
    }
    let outcomes: Vec<NewFileOutcome> = py.allow_threads(move || run.iter().map(|file| write_one(pfd, file)).collect());
    drop(buffers);
    Ok(outcomes
        .into_iter()
        .map(|outcome| match outcome {
            NewFileOutcome::Written => (WRITTEN, 0),
            NewFileOutcome::Exists => (EXISTS, 0),
            NewFileOutcome::Os(code) => (WRITE_OS_ERROR, i64::from(code)),
            NewFileOutcome::Damaged(index) => (DAMAGED, index as i64),
        })
        .collect())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("FORMAT", 1)?; // the shape of read_small_files' results; the Python side checks it
    m.add("WRITE_FORMAT", 1)?; // the shape of write_new_files' arguments and results (ADR 0082)
    m.add_function(wrap_pyfunction!(read_small_files, m)?)?;
    m.add_function(wrap_pyfunction!(write_new_files, m)?)?;
    Ok(())
}
