//! Just enough ZIP (with ZIP64) to pull single entries out of a mask shard through range reads:
//! the end-of-central-directory records, the central directory, and local entries
//! (stored or deflated, CRC-32 checked).

use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Error;

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
/// Bytes read from the end of an archive to find the EOCD (comment ≤ 64 KiB) and its locator.
pub const TAIL_BYTES: u64 = 65_536 + 22 + 20;
/// The first, small tail read (enough when the archive has no comment).
const SMALL_TAIL_BYTES: u64 = 1_024;
/// Largest entry (compressed or uncompressed) that is read or inflated. A mask PNG is small: a
/// real 1-bit 1600 px mask is 2–3 KB, and even an 8-bit, uncompressed 4096 × 4096 PNG is 16 MiB.
/// Anything claiming more is a broken or hostile shard, refused before any byte is inflated (a
/// 4 GiB claim must not mean a 4 GiB buffer).
pub const MAX_ENTRY_BYTES: u64 = 64 << 20;
/// Largest central directory read. The biggest real shard (`train-masks-0`, about 230 k
/// entries of about 100 bytes) has a directory of about 25 MB; five times that is still a
/// mask shard, more is not.
pub const MAX_CENTRAL_DIR_BYTES: u64 = 128 << 20;
/// Size of a central header without its variable fields (so a directory of `n` bytes holds at
/// most `n / 46` entries, whatever the end record claims).
const CENTRAL_HEADER_BYTES: u64 = 46;
/// Size of a local header without its variable fields.
const LOCAL_HEADER_BYTES: u64 = 30;

/// Random access to an archive's bytes (an HTTP object via Range, or a local file).
pub trait RangeSource {
    /// Total length in bytes.
    fn len(&self) -> u64;
    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads exactly `len` bytes at `start` (fewer only at the end).
    fn read_at(&self, start: u64, len: u64) -> Result<Vec<u8>, Error>;
    /// Name for error messages.
    fn name(&self) -> String;
}

/// A local archive file.
pub struct FileSource {
    path: PathBuf,
    len: u64,
    file: Mutex<std::fs::File>,
}

impl FileSource {
    /// Opens a local archive.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = std::fs::File::open(path).map_err(Error::io(path))?;
        let len = file.metadata().map_err(Error::io(path))?.len();
        Ok(Self {
            path: path.to_path_buf(),
            len,
            file: Mutex::new(file),
        })
    }
}

impl RangeSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, start: u64, len: u64) -> Result<Vec<u8>, Error> {
        let len = len.min(self.len.saturating_sub(start));
        let len = usize::try_from(len).map_err(|_| Error::Zip {
            url: self.name(),
            message: format!("read of {len} bytes does not fit in memory"),
        })?;
        let mut file = self.file.lock().map_err(|_| Error::Zip {
            url: self.name(),
            message: "file lock poisoned".into(),
        })?;
        let mut out = vec![0u8; len];
        file.seek(SeekFrom::Start(start))
            .map_err(Error::io(&self.path))?;
        file.read_exact(&mut out).map_err(Error::io(&self.path))?;
        Ok(out)
    }
    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

impl RangeSource for Vec<u8> {
    fn len(&self) -> u64 {
        Vec::len(self) as u64
    }
    fn read_at(&self, start: u64, len: u64) -> Result<Vec<u8>, Error> {
        let n = Vec::len(self);
        let s = usize::try_from(start).unwrap_or(usize::MAX).min(n);
        let e = usize::try_from(start.saturating_add(len))
            .unwrap_or(usize::MAX)
            .min(n);
        Ok(self[s..e.max(s)].to_vec())
    }
    fn name(&self) -> String {
        "<memory>".into()
    }
}

/// Where the central directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirLocation {
    /// Offset of the first central header.
    pub offset: u64,
    /// Size of the central directory in bytes.
    pub size: u64,
    /// Number of entries.
    pub entries: u64,
    /// Whether the ZIP64 records were used.
    pub zip64: bool,
}

/// One central-directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Entry name (flat mask file name in Open Images shards).
    pub name: String,
    /// CRC-32 of the uncompressed data.
    pub crc32: u32,
    /// Compressed size.
    pub compressed_size: u64,
    /// Uncompressed size.
    pub size: u64,
    /// Offset of the local header.
    pub header_offset: u64,
    /// Compression method (0 stored, 8 deflate).
    pub method: u16,
    /// General-purpose flags.
    pub flags: u16,
}

/// A parsed central directory with each entry's byte span in the archive.
#[derive(Debug, Clone)]
pub struct CentralDirectory {
    /// Entries in directory order.
    pub entries: Vec<Entry>,
    /// Where the directory lies.
    pub location: DirLocation,
    by_name: HashMap<String, usize>,
    /// Sorted local header offsets (to find where each entry's record ends).
    offsets: Vec<u64>,
    /// The archive (URL or path), for error messages.
    archive: String,
}

fn zerr(name: &str, message: impl Into<String>) -> Error {
    Error::Zip {
        url: name.to_owned(),
        message: message.into(),
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Finds the central directory: reads the tail (EOCD and ZIP64 locator), and the ZIP64 EOCD
/// record when the locator points outside the tail. Returns the location and the tail reads'
/// byte count.
pub fn locate(src: &dyn RangeSource) -> Result<DirLocation, Error> {
    let name = src.name();
    let total = src.len();
    if total < 22 {
        return Err(zerr(
            &name,
            format!("{total} bytes is too short for a ZIP archive"),
        ));
    }
    // A small tail first (EOCD + locator + ZIP64 record when there is no comment), the full
    // 64 KiB comment window only if that does not hold the EOCD.
    let find = |tail: &[u8]| {
        (0..=tail.len().saturating_sub(22)).rev().find(|&pos| {
            u32_at(tail, pos) == EOCD_SIG
                && pos + 22 + u16_at(tail, pos + 20) as usize == tail.len()
        })
    };
    let mut tail_start = total.saturating_sub(SMALL_TAIL_BYTES);
    let mut tail = src.read_at(tail_start, total - tail_start)?;
    let mut eocd = find(&tail);
    if eocd.is_none() && tail_start > 0 {
        tail_start = total.saturating_sub(TAIL_BYTES);
        tail = src.read_at(tail_start, total - tail_start)?;
        eocd = find(&tail);
    }
    let pos = eocd.ok_or_else(|| zerr(&name, "no end-of-central-directory record"))?;
    let entries16 = u16_at(&tail, pos + 10);
    let size32 = u32_at(&tail, pos + 12);
    let offset32 = u32_at(&tail, pos + 16);
    let has_locator = pos >= 20 && u32_at(&tail, pos - 20) == ZIP64_LOCATOR_SIG;
    if !has_locator {
        if entries16 == 0xFFFF || size32 == 0xFFFF_FFFF || offset32 == 0xFFFF_FFFF {
            return Err(zerr(&name, "EOCD says ZIP64 but there is no ZIP64 locator"));
        }
        return Ok(DirLocation {
            offset: u64::from(offset32),
            size: u64::from(size32),
            entries: u64::from(entries16),
            zip64: false,
        });
    }
    let record_at = u64_at(&tail, pos - 20 + 8);
    let tail_end = tail_start.saturating_add(tail.len() as u64);
    let in_tail =
        record_at >= tail_start && record_at.checked_add(56).is_some_and(|e| e <= tail_end);
    let record = if in_tail {
        let s = usize::try_from(record_at - tail_start).unwrap_or(usize::MAX);
        tail.get(s..s.saturating_add(56))
            .unwrap_or_default()
            .to_vec()
    } else if record_at.checked_add(56).is_some_and(|e| e <= total) {
        src.read_at(record_at, 56)?
    } else {
        return Err(zerr(
            &name,
            format!("ZIP64 end record offset {record_at} lies past the end ({total} bytes)"),
        ));
    };
    if record.len() < 56 || u32_at(&record, 0) != ZIP64_EOCD_SIG {
        return Err(zerr(
            &name,
            format!("no ZIP64 end-of-central-directory record at {record_at}"),
        ));
    }
    Ok(DirLocation {
        entries: u64_at(&record, 32),
        size: u64_at(&record, 40),
        offset: u64_at(&record, 48),
        zip64: true,
    })
}

impl CentralDirectory {
    /// Reads and parses the central directory; also returns its raw bytes (to cache).
    pub fn read(src: &dyn RangeSource) -> Result<(Self, Vec<u8>), Error> {
        let location = locate(src)?;
        if location
            .offset
            .checked_add(location.size)
            .is_none_or(|end| end > src.len())
        {
            return Err(zerr(
                &src.name(),
                format!(
                    "central directory ({} bytes at {}) lies beyond the end of the file ({} bytes)",
                    location.size,
                    location.offset,
                    src.len()
                ),
            ));
        }
        if location.size > MAX_CENTRAL_DIR_BYTES {
            return Err(zerr(
                &src.name(),
                format!(
                    "central directory of {} bytes is over the {} MiB limit for a mask shard",
                    location.size,
                    MAX_CENTRAL_DIR_BYTES >> 20
                ),
            ));
        }
        let raw = src.read_at(location.offset, location.size)?;
        let dir = Self::parse(&raw, location, &src.name())?;
        Ok((dir, raw))
    }

    /// Parses raw central-directory bytes.
    pub fn parse(raw: &[u8], location: DirLocation, name: &str) -> Result<Self, Error> {
        if raw.len() as u64 != location.size {
            return Err(zerr(
                name,
                format!(
                    "central directory is {} bytes, expected {}",
                    raw.len(),
                    location.size
                ),
            ));
        }
        // The count is only a claim: a directory of n bytes holds at most n / 46 entries.
        let most = location.size / CENTRAL_HEADER_BYTES;
        if location.entries > most {
            return Err(zerr(
                name,
                format!(
                    "end record claims {} entries; a {}-byte directory holds at most {most}",
                    location.entries, location.size
                ),
            ));
        }
        let mut entries = Vec::with_capacity(usize::try_from(location.entries).unwrap_or(0));
        let mut at = 0usize;
        while at + 46 <= raw.len() {
            if u32_at(raw, at) != CENTRAL_SIG {
                return Err(zerr(name, format!("bad central header signature at +{at}")));
            }
            let flags = u16_at(raw, at + 8);
            let method = u16_at(raw, at + 10);
            let crc32 = u32_at(raw, at + 16);
            let mut compressed_size = u64::from(u32_at(raw, at + 20));
            let mut size = u64::from(u32_at(raw, at + 24));
            let name_len = u16_at(raw, at + 28) as usize;
            let extra_len = u16_at(raw, at + 30) as usize;
            let comment_len = u16_at(raw, at + 32) as usize;
            let mut header_offset = u64::from(u32_at(raw, at + 42));
            let end = at + 46 + name_len + extra_len + comment_len;
            if end > raw.len() {
                return Err(zerr(
                    name,
                    format!("central header at +{at} runs past the directory"),
                ));
            }
            let entry_name =
                String::from_utf8_lossy(&raw[at + 46..at + 46 + name_len]).into_owned();
            // ZIP64 extended information: only the fields whose 32-bit value is saturated.
            let extra = &raw[at + 46 + name_len..at + 46 + name_len + extra_len];
            let mut e = 0usize;
            while e + 4 <= extra.len() {
                let id = u16_at(extra, e);
                let len = u16_at(extra, e + 2) as usize;
                let body = &extra[e + 4..(e + 4 + len).min(extra.len())];
                if id == 0x0001 {
                    let mut f = 0usize;
                    let mut take = |v: &mut u64| {
                        if *v == 0xFFFF_FFFF && f + 8 <= body.len() {
                            *v = u64_at(body, f);
                            f += 8;
                        }
                    };
                    take(&mut size);
                    take(&mut compressed_size);
                    take(&mut header_offset);
                }
                e += 4 + len;
            }
            entries.push(Entry {
                name: entry_name,
                crc32,
                compressed_size,
                size,
                header_offset,
                method,
                flags,
            });
            at = end;
        }
        if entries.len() as u64 != location.entries {
            return Err(zerr(
                name,
                format!(
                    "central directory has {} entries, EOCD says {}",
                    entries.len(),
                    location.entries
                ),
            ));
        }
        let by_name = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        let mut offsets: Vec<u64> = entries.iter().map(|e| e.header_offset).collect();
        offsets.sort_unstable();
        Ok(Self {
            entries,
            location,
            by_name,
            offsets,
            archive: name.to_owned(),
        })
    }

    /// The entry with this name.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// Byte span `[start, end)` of an entry's record (local header, data, descriptor): it ends
    /// where the next record (or the central directory) begins. Refuses (naming the archive and
    /// the entry) an entry over [`MAX_ENTRY_BYTES`] or whose record would not lie before the
    /// central directory; all offset arithmetic is checked.
    pub fn span(&self, entry: &Entry) -> Result<(u64, u64), Error> {
        let err = |m: String| zerr(&self.archive, format!("{}: {m}", entry.name));
        check_sizes(entry).map_err(err)?;
        let start = entry.header_offset;
        let data_limit = self.location.offset;
        // The smallest record: local header, the name again, the data.
        let min = start
            .checked_add(LOCAL_HEADER_BYTES)
            .and_then(|v| v.checked_add(entry.name.len() as u64))
            .and_then(|v| v.checked_add(entry.compressed_size))
            .filter(|&end| end <= data_limit)
            .ok_or_else(|| {
                err(format!(
                    "local record at {start} with {} compressed bytes does not fit before the \
                     central directory at {data_limit}",
                    entry.compressed_size
                ))
            })?;
        let next = match self.offsets.binary_search(&start) {
            Ok(i) | Err(i) => self.offsets[i..].iter().copied().find(|&o| o > start),
        };
        let natural = next.unwrap_or(data_limit).clamp(start, data_limit);
        // Never more than the largest possible record (local name and extra ≤ 64 KiB each,
        // data descriptor ≤ 24 bytes); `min` ≤ the directory offset, so no overflow below.
        let cap = min.saturating_add(2 * 65_535 + 24);
        Ok((start, natural.min(cap).max(min)))
    }
}

/// An entry's declared sizes against [`MAX_ENTRY_BYTES`].
fn check_sizes(entry: &Entry) -> Result<(), String> {
    for (what, v) in [
        ("uncompressed", entry.size),
        ("compressed", entry.compressed_size),
    ] {
        if v > MAX_ENTRY_BYTES {
            return Err(format!(
                "{what} size {v} is over the {} MiB limit for a mask entry",
                MAX_ENTRY_BYTES >> 20
            ));
        }
    }
    Ok(())
}

/// Reads and decodes one entry (its record by one read, then [`extract`]).
pub fn read_entry(
    src: &dyn RangeSource,
    dir: &CentralDirectory,
    entry: &Entry,
) -> Result<Vec<u8>, Error> {
    let (start, end) = dir.span(entry)?;
    let record = src.read_at(start, end - start)?;
    extract(&record, entry, &src.name())
}

/// Decodes one entry from its record bytes (starting at the local header); checks the CRC.
pub fn extract(record: &[u8], entry: &Entry, archive: &str) -> Result<Vec<u8>, Error> {
    let err = |m: String| zerr(archive, format!("{}: {m}", entry.name));
    check_sizes(entry).map_err(err)?;
    if record.len() < 30 || u32_at(record, 0) != LOCAL_SIG {
        return Err(err("no local header at the directory's offset".into()));
    }
    if entry.flags & 1 != 0 {
        return Err(err("entry is encrypted".into()));
    }
    let data_at = 30 + usize::from(u16_at(record, 26)) + usize::from(u16_at(record, 28));
    // Both terms are bounded (64 KiB·2 + 30, MAX_ENTRY_BYTES), so this cannot overflow.
    let data_end = data_at as u64 + entry.compressed_size;
    let Some(data) = usize::try_from(data_end)
        .ok()
        .and_then(|end| record.get(data_at..end))
    else {
        return Err(err(format!(
            "record is {} bytes, data needs {data_end}",
            record.len()
        )));
    };
    let out = match entry.method {
        0 if entry.compressed_size != entry.size => {
            return Err(err(format!(
                "stored entry with {} compressed and {} uncompressed bytes",
                entry.compressed_size, entry.size
            )));
        }
        0 => data.to_vec(),
        8 => {
            // Bounded twice: the declared size is at most MAX_ENTRY_BYTES, and the inflater
            // stops one byte past it (so a stream longer than declared is caught, not read).
            // Reserve for a typical mask only; a lying size must not become a big buffer.
            let mut out = Vec::with_capacity(usize::try_from(entry.size.min(1 << 20)).unwrap_or(0));
            flate2::read::DeflateDecoder::new(data)
                .take(entry.size + 1)
                .read_to_end(&mut out)
                .map_err(|e| err(format!("inflate: {e}")))?;
            out
        }
        m => return Err(err(format!("unsupported compression method {m}"))),
    };
    if out.len() as u64 != entry.size {
        return Err(err(format!(
            "inflated to {} bytes, directory says {}",
            out.len(),
            entry.size
        )));
    }
    let crc = crc32fast::hash(&out);
    if crc != entry.crc32 {
        return Err(err(format!(
            "CRC-32 {crc:08x} does not match {:08x}",
            entry.crc32
        )));
    }
    Ok(out)
}

/// Groups entry spans into few requests: spans closer than `gap` bytes are merged while the
/// merged request stays under `max_bytes`. Returns `(start, end, indices into spans)`.
pub fn coalesce(spans: &[(u64, u64)], gap: u64, max_bytes: u64) -> Vec<(u64, u64, Vec<usize>)> {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| spans[i]);
    let mut out: Vec<(u64, u64, Vec<usize>)> = Vec::new();
    for i in order {
        let (s, e) = spans[i];
        if let Some(last) = out.last_mut()
            && s <= last.1.saturating_add(gap)
            && e.max(last.1) - last.0 <= max_bytes
        {
            last.1 = last.1.max(e);
            last.2.push(i);
            continue;
        }
        out.push((s, e, vec![i]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_near_spans() {
        let spans = [(100, 200), (0, 50), (210, 300), (10_000, 10_100)];
        let groups = coalesce(&spans, 20, 1 << 20);
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[1], (100, 300, vec![0, 2]));
        let groups = coalesce(&spans, 20, 150);
        assert_eq!(groups.len(), 4);
    }
}
