//! Pulling single entries out of a mask shard through range reads: the I/O around
//! [`crate::zip`] (which parses the end records, the central directory and local entries),
//! with the size limits of a mask shard.

use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::zip::{EndRecord, ZIP64_EOCD_BYTES, ZipError};

use super::Error;

pub use crate::zip::{DirLocation, Entry, TAIL_BYTES};

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

/// A [`ZipError`] of the archive `name`, about the whole archive.
fn archive_err(name: &str) -> impl Fn(ZipError) -> Error + '_ {
    move |e| zerr(name, e.message)
}

/// A [`ZipError`] of the archive `name`, about one of its entries.
fn entry_err<'a>(name: &'a str, entry: &'a Entry) -> impl Fn(ZipError) -> Error + 'a {
    move |e| zerr(name, format!("{}: {}", entry.name, e.message))
}

/// Finds the central directory: reads the tail (EOCD and ZIP64 locator), and the ZIP64 EOCD
/// record when the locator points outside the tail.
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
    let find = |tail_start: u64| -> Result<Option<EndRecord>, Error> {
        let tail = src.read_at(tail_start, total - tail_start)?;
        crate::zip::find_end(&tail, tail_start, total).map_err(archive_err(&name))
    };
    let small_start = total.saturating_sub(SMALL_TAIL_BYTES);
    let mut end = find(small_start)?;
    if end.is_none() && small_start > 0 {
        end = find(total.saturating_sub(TAIL_BYTES))?;
    }
    match end {
        None => Err(zerr(&name, "no end-of-central-directory record")),
        Some(EndRecord::Located(location)) => Ok(location),
        Some(EndRecord::Zip64At(at)) => {
            let record = src.read_at(at, ZIP64_EOCD_BYTES)?;
            crate::zip::parse_zip64_end(&record, at).map_err(archive_err(&name))
        }
    }
}

impl CentralDirectory {
    /// Reads and parses the central directory; also returns its raw bytes (to cache).
    pub fn read(src: &dyn RangeSource) -> Result<(Self, Vec<u8>), Error> {
        let location = locate(src)?;
        let range = location
            .range(src.len(), MAX_CENTRAL_DIR_BYTES)
            .map_err(archive_err(&src.name()))?;
        let raw = src.read_at(range.start, range.end - range.start)?;
        let dir = Self::parse(&raw, location, &src.name())?;
        Ok((dir, raw))
    }

    /// Parses raw central-directory bytes.
    pub fn parse(raw: &[u8], location: DirLocation, name: &str) -> Result<Self, Error> {
        let entries = crate::zip::parse_directory(raw, location).map_err(archive_err(name))?;
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
        crate::zip::check_sizes(entry, MAX_ENTRY_BYTES).map_err(entry_err(&self.archive, entry))?;
        let start = entry.header_offset;
        let data_limit = self.location.offset;
        // The smallest record: local header, the name again, the data.
        let min = start
            .checked_add(crate::zip::LOCAL_HEADER_BYTES)
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

/// Decodes one entry from its record bytes (starting at the local header); checks the sizes
/// against [`MAX_ENTRY_BYTES`], and the CRC.
pub fn extract(record: &[u8], entry: &Entry, archive: &str) -> Result<Vec<u8>, Error> {
    let err = entry_err(archive, entry);
    crate::zip::check_sizes(entry, MAX_ENTRY_BYTES).map_err(&err)?;
    let data = crate::zip::data_range(record, entry).map_err(&err)?;
    crate::zip::decode(&record[data], entry).map_err(&err)
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
