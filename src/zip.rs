//! ZIP archives (with ZIP64) read from untrusted bytes, without I/O: the end records, the
//! central directory, and each entry's local header and data (stored or deflated, CRC-32
//! checked). Callers bring the bytes: `openimages::zip` reads mask shards through range reads,
//! `model::checkpoint` reads `torch.save` archives held in memory.
//!
//! Every size and offset an archive declares is a claim: all arithmetic on them is checked,
//! nothing is allocated from a declared size beyond what the caller's limits allow, and a
//! structure that lies outside the bytes is an error ([`ZipErrorKind::Truncated`]), never a
//! panic.

use std::io::Read as _;
use std::ops::Range;

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
/// Size of the end-of-central-directory record without its comment.
const EOCD_BYTES: usize = 22;
/// Size of the ZIP64 end-of-central-directory locator.
const ZIP64_LOCATOR_BYTES: usize = 20;
/// Size of the ZIP64 end-of-central-directory record read (without its extensible data).
pub const ZIP64_EOCD_BYTES: u64 = 56;
/// Bytes at the end of an archive that hold the EOCD (comment ≤ 64 KiB) and its locator.
pub const TAIL_BYTES: u64 = 65_536 + 22 + 20;
/// Size of a central header without its variable fields (so a directory of `n` bytes holds at
/// most `n / 46` entries, whatever the end record claims).
pub const CENTRAL_HEADER_BYTES: u64 = 46;
/// Size of a local header without its variable fields.
pub const LOCAL_HEADER_BYTES: u64 = 30;

/// What kind of problem an archive has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZipErrorKind {
    /// A structure lies (partly) outside the bytes: a cut-off file, or an offset that points
    /// past its end.
    Truncated,
    /// A structure is inconsistent, unsupported, or over the caller's limits.
    Invalid,
}

/// Why an archive (or one entry of it) cannot be read; the message does not name the archive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ZipError {
    /// What kind of problem.
    pub kind: ZipErrorKind,
    /// What is wrong, for people.
    pub message: String,
}

fn truncated(message: impl Into<String>) -> ZipError {
    ZipError {
        kind: ZipErrorKind::Truncated,
        message: message.into(),
    }
}

fn invalid(message: impl Into<String>) -> ZipError {
    ZipError {
        kind: ZipErrorKind::Invalid,
        message: message.into(),
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
    /// Entry name.
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

/// Where the end records say the central directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndRecord {
    /// Found (from the EOCD, or a ZIP64 record inside the tail).
    Located(DirLocation),
    /// The ZIP64 end record lies at this offset, before the tail: read
    /// [`ZIP64_EOCD_BYTES`] there and pass them to [`parse_zip64_end`].
    Zip64At(u64),
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

/// Finds the end records in `tail`, the last bytes of an archive of `total` bytes starting at
/// `tail_start`. `None` when the tail holds no EOCD (a tail shorter than [`TAIL_BYTES`] may
/// just be too short for the comment). An EOCD with saturated fields needs its ZIP64 locator;
/// a locator pointing past the end is an error.
pub fn find_end(tail: &[u8], tail_start: u64, total: u64) -> Result<Option<EndRecord>, ZipError> {
    let found = (0..=tail.len().saturating_sub(EOCD_BYTES))
        .rev()
        .find(|&pos| {
            tail.len() >= EOCD_BYTES
                && u32_at(tail, pos) == EOCD_SIG
                && pos + EOCD_BYTES + u16_at(tail, pos + 20) as usize == tail.len()
        });
    let Some(pos) = found else {
        return Ok(None);
    };
    let entries16 = u16_at(tail, pos + 10);
    let size32 = u32_at(tail, pos + 12);
    let offset32 = u32_at(tail, pos + 16);
    let has_locator =
        pos >= ZIP64_LOCATOR_BYTES && u32_at(tail, pos - ZIP64_LOCATOR_BYTES) == ZIP64_LOCATOR_SIG;
    if !has_locator {
        if entries16 == 0xFFFF || size32 == 0xFFFF_FFFF || offset32 == 0xFFFF_FFFF {
            return Err(invalid("EOCD says ZIP64 but there is no ZIP64 locator"));
        }
        return Ok(Some(EndRecord::Located(DirLocation {
            offset: u64::from(offset32),
            size: u64::from(size32),
            entries: u64::from(entries16),
            zip64: false,
        })));
    }
    let record_at = u64_at(tail, pos - ZIP64_LOCATOR_BYTES + 8);
    let record_end = record_at.checked_add(ZIP64_EOCD_BYTES);
    if record_end.is_none_or(|end| end > total) {
        return Err(truncated(format!(
            "zip structure extends past the end of the file: the ZIP64 end record is at \
             {record_at}, the file has {total} bytes"
        )));
    }
    let tail_end = tail_start.saturating_add(tail.len() as u64);
    if record_at >= tail_start && record_end.is_some_and(|end| end <= tail_end) {
        let s = usize::try_from(record_at - tail_start).unwrap_or(usize::MAX);
        let record = tail.get(s..s.saturating_add(56)).unwrap_or_default();
        return parse_zip64_end(record, record_at).map(|l| Some(EndRecord::Located(l)));
    }
    Ok(Some(EndRecord::Zip64At(record_at)))
}

/// Reads the ZIP64 end record (`record`, read at offset `at`).
pub fn parse_zip64_end(record: &[u8], at: u64) -> Result<DirLocation, ZipError> {
    if record.len() < 56 || u32_at(record, 0) != ZIP64_EOCD_SIG {
        return Err(invalid(format!(
            "no ZIP64 end-of-central-directory record at {at}"
        )));
    }
    Ok(DirLocation {
        entries: u64_at(record, 32),
        size: u64_at(record, 40),
        offset: u64_at(record, 48),
        zip64: true,
    })
}

/// Finds the central directory of an archive held in memory.
pub fn locate_in(archive: &[u8]) -> Result<DirLocation, ZipError> {
    let total = archive.len() as u64;
    if archive.len() < EOCD_BYTES {
        return Err(truncated(format!(
            "{total} bytes is too short for a ZIP archive"
        )));
    }
    let tail_start = archive.len().saturating_sub(TAIL_BYTES as usize);
    match find_end(&archive[tail_start..], tail_start as u64, total)? {
        None => Err(truncated("no end-of-central-directory record")),
        Some(EndRecord::Located(location)) => Ok(location),
        Some(EndRecord::Zip64At(at)) => {
            // find_end checked that the record lies inside the archive.
            let s = usize::try_from(at).unwrap_or(usize::MAX);
            let record = archive.get(s..s.saturating_add(56)).unwrap_or_default();
            parse_zip64_end(record, at)
        }
    }
}

impl DirLocation {
    /// The directory's byte range in an archive of `total` bytes: an error when it lies beyond
    /// the end or is over `max_bytes`.
    pub fn range(&self, total: u64, max_bytes: u64) -> Result<Range<u64>, ZipError> {
        let Some(end) = self.offset.checked_add(self.size).filter(|&e| e <= total) else {
            return Err(truncated(format!(
                "central directory ({} bytes at {}) lies beyond the end of the file ({total} bytes)",
                self.size, self.offset
            )));
        };
        if self.size > max_bytes {
            return Err(invalid(format!(
                "central directory of {} bytes is over the {} MiB limit",
                self.size,
                max_bytes >> 20
            )));
        }
        Ok(self.offset..end)
    }
}

/// Parses the central directory's bytes (`raw`, exactly `location.size` of them). The entry
/// count is checked against what the bytes can hold before anything is reserved.
pub fn parse_directory(raw: &[u8], location: DirLocation) -> Result<Vec<Entry>, ZipError> {
    if raw.len() as u64 != location.size {
        return Err(truncated(format!(
            "central directory is {} bytes, expected {}",
            raw.len(),
            location.size
        )));
    }
    // The count is only a claim: a directory of n bytes holds at most n / 46 entries.
    let most = location.size / CENTRAL_HEADER_BYTES;
    if location.entries > most {
        return Err(invalid(format!(
            "end record claims {} entries; a {}-byte directory holds at most {most}",
            location.entries, location.size
        )));
    }
    let mut entries = Vec::with_capacity(usize::try_from(location.entries).unwrap_or(0));
    let mut at = 0usize;
    while at + 46 <= raw.len() {
        if u32_at(raw, at) != CENTRAL_SIG {
            return Err(invalid(format!("bad central header signature at +{at}")));
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
            return Err(truncated(format!(
                "central header at +{at} runs past the directory"
            )));
        }
        let name = String::from_utf8_lossy(&raw[at + 46..at + 46 + name_len]).into_owned();
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
            name,
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
        return Err(invalid(format!(
            "central directory has {} entries, EOCD says {}",
            entries.len(),
            location.entries
        )));
    }
    Ok(entries)
}

/// An entry's declared sizes against `max_bytes`.
pub fn check_sizes(entry: &Entry, max_bytes: u64) -> Result<(), ZipError> {
    for (what, v) in [
        ("uncompressed", entry.size),
        ("compressed", entry.compressed_size),
    ] {
        if v > max_bytes {
            return Err(invalid(format!(
                "{what} size {v} is over the {} MiB limit for one entry",
                max_bytes >> 20
            )));
        }
    }
    Ok(())
}

/// Where an entry's (compressed) data lies in `record`, the bytes from its local header on.
/// Refuses a missing local header and an encrypted entry; all arithmetic is checked.
pub fn data_range(record: &[u8], entry: &Entry) -> Result<Range<usize>, ZipError> {
    if record.len() < LOCAL_HEADER_BYTES as usize {
        return Err(truncated("local header cut off"));
    }
    if u32_at(record, 0) != LOCAL_SIG {
        return Err(invalid("no local header at the directory's offset"));
    }
    if entry.flags & 1 != 0 {
        return Err(invalid("entry is encrypted"));
    }
    let data_at = 30 + usize::from(u16_at(record, 26)) + usize::from(u16_at(record, 28));
    let data_end = (data_at as u64).checked_add(entry.compressed_size);
    match data_end.and_then(|end| usize::try_from(end).ok()) {
        Some(end) if end <= record.len() => Ok(data_at..end),
        _ => Err(truncated(format!(
            "record is {} bytes, data needs {}",
            record.len(),
            data_end.map_or_else(|| "more".to_owned(), |e| e.to_string())
        ))),
    }
}

/// An entry's data in an archive held in memory, borrowed: its record must lie before the
/// central directory at `data_limit`.
pub fn entry_data<'a>(
    archive: &'a [u8],
    data_limit: u64,
    entry: &Entry,
) -> Result<&'a [u8], ZipError> {
    let limit = usize::try_from(data_limit.min(archive.len() as u64)).unwrap_or(archive.len());
    let start = usize::try_from(entry.header_offset).unwrap_or(usize::MAX);
    let Some(record) = archive.get(start..limit) else {
        return Err(truncated(format!(
            "local header at {} lies past the data ({data_limit} bytes)",
            entry.header_offset
        )));
    };
    Ok(&record[data_range(record, entry)?])
}

/// Decodes an entry's data (stored, or deflated up to one byte past its declared size, so a
/// longer stream is caught, not read) and checks its size and CRC-32. The caller bounds
/// `entry.size` first ([`check_sizes`]).
pub fn decode(data: &[u8], entry: &Entry) -> Result<Vec<u8>, ZipError> {
    let out = match entry.method {
        0 if entry.compressed_size != entry.size => {
            return Err(invalid(format!(
                "stored entry with {} compressed and {} uncompressed bytes",
                entry.compressed_size, entry.size
            )));
        }
        0 => data.to_vec(),
        8 => {
            // Reserve for a small entry only; a lying size must not become a big buffer.
            let mut out = Vec::with_capacity(usize::try_from(entry.size.min(1 << 20)).unwrap_or(0));
            flate2::read::DeflateDecoder::new(data)
                .take(entry.size.saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|e| invalid(format!("inflate: {e}")))?;
            out
        }
        m => return Err(invalid(format!("unsupported compression method {m}"))),
    };
    if out.len() as u64 != entry.size {
        return Err(invalid(format!(
            "inflated to {} bytes, directory says {}",
            out.len(),
            entry.size
        )));
    }
    let crc = crc32fast::hash(&out);
    if crc != entry.crc32 {
        return Err(invalid(format!(
            "CRC-32 {crc:08x} does not match {:08x}",
            entry.crc32
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `torch.save` archive: 21 stored entries, with ZIP64 end records.
    fn fixture() -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::read(dir.join("tests/fixtures/checkpoints/small_zip.pt")).unwrap()
    }

    /// The directory's entries and each entry's decoded data.
    fn read_all(bytes: &[u8]) -> Result<Vec<(Entry, Vec<u8>)>, ZipError> {
        let location = locate_in(bytes)?;
        let range = location.range(bytes.len() as u64, u64::MAX)?;
        let raw = &bytes[range.start as usize..range.end as usize];
        parse_directory(raw, location)?
            .into_iter()
            .map(|e| {
                let data = decode(entry_data(bytes, location.offset, &e)?, &e)?;
                Ok((e, data))
            })
            .collect()
    }

    #[test]
    fn reads_a_zip64_archive_with_and_without_a_comment() {
        let plain = fixture();
        let location = locate_in(&plain).unwrap();
        assert_eq!((location.entries, location.zip64), (21, true));
        // A comment holding a fake end-record signature must not be taken for the record.
        let comment = b"a comment PK\x05\x06 with a fake signature";
        let mut commented = plain.clone();
        let at = commented.len() - 2;
        commented[at..].copy_from_slice(&(comment.len() as u16).to_le_bytes());
        commented.extend_from_slice(comment);
        for bytes in [plain, commented] {
            let all = read_all(&bytes).unwrap();
            assert_eq!(all.len(), 21);
            let byteorder = all.iter().find(|(e, _)| e.name == "small_zip/byteorder");
            assert_eq!(byteorder.unwrap().1, b"little");
            let data0 = all.iter().find(|(e, _)| e.name == "small_zip/data/0");
            assert_eq!(data0.unwrap().1.len(), 192);
        }
    }

    #[test]
    fn every_cut_of_an_archive_is_an_error_not_a_panic() {
        let bytes = fixture();
        for n in 0..bytes.len() {
            let err = read_all(&bytes[..n]).err();
            assert!(err.is_some(), "{n} bytes of {} accepted", bytes.len());
        }
    }

    #[test]
    fn a_lying_entry_is_refused_with_its_kind() {
        let bytes = fixture();
        let location = locate_in(&bytes).unwrap();
        let raw = &bytes[location.offset as usize..][..location.size as usize];
        let mut entry = parse_directory(raw, location).unwrap().remove(3);
        assert_eq!(entry.name, "small_zip/byteorder");
        let data = entry_data(&bytes, location.offset, &entry).unwrap();
        entry.compressed_size = u64::MAX;
        let err = entry_data(&bytes, location.offset, &entry).unwrap_err();
        assert_eq!(err.kind, ZipErrorKind::Truncated, "{err}");
        entry.compressed_size = 6;
        entry.size = 7;
        let err = decode(data, &entry).unwrap_err();
        assert!(err.message.contains("stored entry with 6"), "{err}");
        entry.size = 6;
        entry.crc32 ^= 1;
        let err = decode(data, &entry).unwrap_err();
        assert!(err.message.contains("CRC-32"), "{err}");
        assert!(
            check_sizes(&entry, 5)
                .unwrap_err()
                .message
                .contains("limit")
        );
    }
}
