//! The previous point's cache file read back (`cache.CacheCursor`, ADR 0085): the records in path
//! order, one ahead, each with its stat key, trust flag, raw bytes and its FileEntry's path and type
//! read from the wire as the protobuf runtime reads them. A malformed record is a value, never a
//! panic: it ends the cursor (`broken`), keeping the records before it.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;

use super::encode::path_field;
use super::{ns, ENTRY_TYPE_FILE, RECORD_HEAD, TRUSTED};
use crate::Stat;

const BUFFER: usize = 1 << 20;
/// Nesting of unknown groups a FileEntry may hold (the protobuf runtime's own limit is near).
const GROUP_DEPTH: usize = 64;

type StatKey = (u64, u64, u64, i64, i64);

/// One record of the previous point's cache (`cache.CacheRecord`).
pub(super) struct CacheRecord {
    pub(super) path: Vec<u8>,
    pub(super) key: StatKey,
    pub(super) trusted: bool,
    pub(super) raw: Vec<u8>,
    pub(super) body: usize, // where the FileEntry starts in `raw` (may lie past its end, as in Python)
    pub(super) kind: i64,
}

impl CacheRecord {
    /// `CacheRecord.unchanged`: trusted, a file, the same (dev, inode, size, mtime, ctime).
    pub(super) fn unchanged(&self, st: &Stat) -> bool {
        self.trusted
            && self.kind == ENTRY_TYPE_FILE
            && st.size >= 0
            && self.key == (st.dev, st.ino, st.size as u64, ns(st.mtime), ns(st.ctime))
    }

    pub(super) fn entry_bytes(&self) -> &[u8] {
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
pub(super) struct Cursor {
    file: BufReader<File>,
    count: u64,
    ahead: Option<CacheRecord>,
    done: bool,
    parsed: u64,
    last: Vec<u8>,
    pub(super) taken: u64,
    pub(super) broken: Option<String>,
}

impl Cursor {
    pub(super) fn open(path: &PathBuf, body_offset: u64, count: u64) -> std::io::Result<Cursor> {
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

    pub(super) fn peek(&mut self) -> Option<&CacheRecord> {
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

    pub(super) fn take(&mut self) -> Option<CacheRecord> {
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
