//! What a step settles, encoded (ADR 0085): a directory's or a symlink's FileEntry serialized as
//! the protobuf runtime serializes it, a cache record as `cache.encode_record` writes it, and `Run`,
//! one run of settled entries (their cache records and spool records) as `compare._Run` keeps it.
//! The bytes must equal the Python path's byte for byte: the cache and spool formats are theirs.

use super::{ns, RECORD_HEAD, TRUSTED};
use crate::Stat;

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7F) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// `cache._path_field`: `path` as field 1 of a serialized FileEntry.
pub(super) fn path_field(path: &[u8], out: &mut Vec<u8>) {
    out.push(0x0A);
    put_varint(out, path.len() as u64);
    out.extend_from_slice(path);
}

/// A directory's or a symlink's FileEntry serialized as the protobuf runtime does (`scan.file_entry`:
/// fields in number order, defaults left out; size 0, no chunk ids).
pub(super) fn entry_body(rel: &[u8], kind: u64, st: &Stat, link: &[u8]) -> Vec<u8> {
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
pub(super) fn encode_record(
    out: &mut Vec<u8>,
    path: &[u8],
    body: &[u8],
    st: &Stat,
    racy_before_ns: i64,
) {
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
pub(super) struct Run {
    pub(super) records: Vec<u8>,
    pub(super) spool: Vec<u8>,
    pub(super) count: usize,
    pub(super) spool_entries: usize,
    pub(super) first: Vec<u8>,
    pub(super) last: Vec<u8>,
    pub(super) entries: usize, // cache records and deleted paths
}

impl Run {
    pub(super) fn is_empty(&self) -> bool {
        self.entries == 0 && self.spool.is_empty()
    }

    pub(super) fn add_cache(&mut self, path: &[u8]) -> Result<(), Vec<u8>> {
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

    pub(super) fn spool_record(&mut self, kind: u8, bytes: &[u8]) {
        self.spool.push(kind);
        self.spool
            .extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        self.spool.extend_from_slice(bytes);
    }
}
