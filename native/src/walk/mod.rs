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
//!
//! Split along its seams: `cache` reads the previous point's cache file, `encode` writes the bytes a
//! step settles, `list` lists one directory; this file holds the walk itself and the Python class.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::{stat_tuple, Stat};

mod cache;
mod encode;
mod list;

use cache::{CacheRecord, Cursor};
use encode::{encode_record, entry_body, Run};
use list::{list_dir, lstat, Entry, Level, WalkError};

/// The shape of `TreeWalk.step`'s result; `strongroom_agent.backup.native` checks it.
const WALK_FORMAT: u32 = 1;

const ENTRY_TYPE_FILE: i64 = 1;
const ENTRY_TYPE_DIRECTORY: u64 = 2;
const ENTRY_TYPE_SYMLINK: u64 = 3;
const TRUSTED: u8 = 1;
/// `cache._STAT`: flags, dev, ino, size, mtime_ns, ctime_ns, path length (little-endian).
const RECORD_HEAD: usize = 1 + 8 * 5 + 2;

fn ns(t: (i64, i64)) -> i64 {
    t.0.wrapping_mul(1_000_000_000).wrapping_add(t.1)
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
