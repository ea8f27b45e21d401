//! The segmentation CSV parser: a stream over one 4 MiB buffer, fields split on raw bytes.

use std::io::Read;

use crate::cancel::CancelToken;
use crate::openimages::Error;

use super::LoadStats;

/// Exact header of the segmentation CSVs.
pub const SEGMENTATION_HEADER: &str =
    "MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,BoxYMin,BoxYMax,PredictedIoU,Clicks";
/// Longest line accepted in a segmentation CSV (the parser's whole buffer). Real rows are about
/// 300 bytes (train, with Clicks); a longer "line" is a broken or hostile file and stops the
/// parse instead of growing the buffer without bound.
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// A finite number (NaN and infinities would reach SQLite as NULL and break later reads).
pub(super) fn parse_f64(b: &[u8]) -> Option<f64> {
    if let Some(v) = parse_plain_decimal(b) {
        return Some(v);
    }
    std::str::from_utf8(b)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
}

/// `digits[.digits]` with at most 15 significant digits (every coordinate of the real files),
/// exactly as `str::parse` gives it: the digits as an integer and the power of ten are both
/// exact doubles, and one IEEE division rounds correctly (Clinger's fast path). `None` for
/// anything else, which takes the general parser.
fn parse_plain_decimal(b: &[u8]) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    if b.is_empty() || b.len() > 16 {
        return None;
    }
    let mut mantissa = 0u64;
    let mut digits = 0usize;
    let mut point: Option<usize> = None;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(c - b'0');
                digits += 1;
            }
            b'.' if point.is_none() && i > 0 => point = Some(digits),
            _ => return None,
        }
    }
    let scale = digits - point.unwrap_or(digits);
    if digits > 15 || point == Some(digits) {
        return None; // too many digits for the fast path, or "1." (general parser decides)
    }
    Some(mantissa as f64 / POW10[scale])
}

/// Whether MaskPath is `{ImageID}_{label without '/'}_{BoxID}.png`, with the BoxID exactly as
/// the index will print it back (8 lower-case hex digits).
pub(super) fn is_canonical_mask_path(row: &SegmentationRow<'_>) -> bool {
    let p = row.mask_path;
    let id = row.image_id;
    if row.box_id.len() != 8 || row.box_id.iter().any(|b| b.is_ascii_uppercase()) {
        return false;
    }
    if id.iter().any(|b| b.is_ascii_uppercase()) {
        return false;
    }
    let label = row.label.iter().filter(|&&b| b != b'/');
    let expected_len = id.len() + 1 + label.clone().count() + 1 + row.box_id.len() + 4;
    if p.len() != expected_len {
        return false;
    }
    let mut it = p.iter();
    id.iter().all(|b| it.next() == Some(b))
        && it.next() == Some(&b'_')
        && label.clone().all(|b| it.next() == Some(b))
        && it.next() == Some(&b'_')
        && row.box_id.iter().all(|b| it.next() == Some(b))
        && it.as_slice() == b".png"
}

/// One row of a segmentation CSV, borrowed from the parser's buffer.
#[derive(Debug, Clone, Copy)]
pub struct SegmentationRow<'a> {
    /// MaskPath.
    pub mask_path: &'a [u8],
    /// ImageID.
    pub image_id: &'a [u8],
    /// LabelName (MID).
    pub label: &'a [u8],
    /// BoxID.
    pub box_id: &'a [u8],
    /// BoxXMin, BoxXMax, BoxYMin, BoxYMax as text.
    pub bbox: [&'a [u8]; 4],
    /// PredictedIoU as text (empty in validation/test).
    pub predicted_iou: &'a [u8],
    /// Clicks as text (empty in validation/test).
    pub clicks: &'a [u8],
    /// Byte offset of Clicks in the file (0 when it came through the quote-aware path).
    pub clicks_offset: u64,
    /// Byte offset just past this row's line.
    pub line_end: u64,
    /// 1-based line number (the header is line 1).
    pub line: u64,
}

/// Column positions, from the header.
struct Columns([usize; 10]);

impl Columns {
    fn from_header(fields: &[&[u8]], file: &str) -> Result<Self, Error> {
        let names = SEGMENTATION_HEADER.split(',').collect::<Vec<_>>();
        let mut cols = [0usize; 10];
        for (slot, want) in cols.iter_mut().zip(&names) {
            *slot = fields
                .iter()
                .position(|f| f == &want.as_bytes())
                .ok_or_else(|| Error::Format {
                    file: file.to_owned(),
                    message: format!(
                        "header lacks column {want:?} (expected {SEGMENTATION_HEADER:?}, got {:?})",
                        fields
                            .iter()
                            .map(|f| String::from_utf8_lossy(f))
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                })?;
        }
        Ok(Self(cols))
    }
}

/// Splits one line on commas; quote-aware only when the line has a `"`. Returns false when it
/// has more than `out.len()` fields' worth of room.
fn split_fast<'a>(line: &'a [u8], out: &mut Vec<&'a [u8]>) {
    out.clear();
    let mut rest = line;
    while let Some(i) = find_byte(rest, b',') {
        out.push(&rest[..i]);
        rest = &rest[i + 1..];
    }
    out.push(rest);
}

/// First position of `needle` in `hay`, eight bytes at a time (the Clicks field and the
/// newline search are most of the file's bytes).
fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * u64::from(needle);
    let mut chunks = hay.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word) ^ pattern;
        // The lowest flagged byte is the first zero byte (borrows only flag bytes above it).
        let zero = v.wrapping_sub(LO) & !v & HI;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == needle)
        .map(|p| at + p)
}

/// RFC 4180 fields of one line (quotes removed, `""` unescaped).
fn split_quoted(line: &[u8]) -> Vec<Vec<u8>> {
    let mut fields = Vec::new();
    let mut cur = Vec::new();
    let mut in_quotes = false;
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        if in_quotes {
            if b == b'"' {
                if line.get(i + 1) == Some(&b'"') {
                    cur.push(b'"');
                    i += 1;
                } else {
                    in_quotes = false;
                }
            } else {
                cur.push(b);
            }
        } else if b == b'"' {
            in_quotes = true;
        } else if b == b',' {
            fields.push(std::mem::take(&mut cur));
        } else {
            cur.push(b);
        }
        i += 1;
    }
    fields.push(cur);
    fields
}

/// Stream-parses a segmentation CSV (header checked, columns found by name), calling `f` per
/// data row. Lines are split on raw bytes; only a line containing `"` goes through the
/// quote-aware path (quoted newlines are not supported; the real files have none). Memory is
/// one 4 MiB buffer.
pub fn parse_segmentation_csv<R: Read>(
    mut reader: R,
    name: &str,
    cancel: &CancelToken,
    f: &mut dyn FnMut(&SegmentationRow<'_>) -> Result<(), Error>,
) -> Result<LoadStats, Error> {
    let mut buf = vec![0u8; MAX_LINE_BYTES];
    let mut filled = 0usize;
    let mut base = 0u64; // file offset of buf[0]
    let mut stats = LoadStats::default();
    let mut cols: Option<Columns> = None;
    let mut eof = false;
    let mut line_no = 0u64; // lines before buf[0]
    while !eof {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        if filled == buf.len() {
            // The buffer holds no newline at all: one line longer than the cap.
            return Err(Error::Format {
                file: name.to_owned(),
                message: format!(
                    "line {} (at byte {base}) is longer than {} MiB; not a segmentation CSV",
                    line_no + 1,
                    MAX_LINE_BYTES >> 20
                ),
            });
        }
        let n = loop {
            match reader.read(&mut buf[filled..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(name)(e)),
            }
        };
        if n == 0 {
            eof = true;
            if filled > 0 && buf[filled - 1] != b'\n' {
                buf.truncate(filled);
                buf.push(b'\n'); // last line without newline
                filled += 1;
            }
        }
        filled += n;
        let data = &buf[..filled];
        let mut fields: Vec<&[u8]> = Vec::with_capacity(16);
        let mut start = 0usize;
        let mut consumed = 0usize;
        while let Some(rel) = find_byte(&data[start..], b'\n') {
            let end = start + rel;
            let mut line = &data[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line_off = base + start as u64;
            let next = end + 1;
            line_no += 1;
            if !line.is_empty() {
                match &cols {
                    None => {
                        let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
                        split_fast(line, &mut fields);
                        cols = Some(Columns::from_header(&fields, name)?);
                    }
                    Some(c) => {
                        stats.rows += 1;
                        let line_end = base + next as u64;
                        if find_byte(line, b'"').is_some() {
                            stats.quoted_rows += 1;
                            let owned = split_quoted(line);
                            let get = |i: usize| owned.get(c.0[i]).map(|v| v.as_slice());
                            match row_from(get, 0, line_end, line_no) {
                                Some(row) => f(&row)?,
                                None => stats.bad_rows += 1,
                            }
                        } else {
                            split_fast(line, &mut fields);
                            let clicks_col = c.0[9];
                            let offset = if clicks_col < fields.len() {
                                line_off
                                    + (fields[clicks_col].as_ptr() as usize
                                        - line.as_ptr() as usize)
                                        as u64
                            } else {
                                0
                            };
                            let get = |i: usize| fields.get(c.0[i]).copied();
                            match row_from(get, offset, line_end, line_no) {
                                Some(row) => f(&row)?,
                                None => stats.bad_rows += 1,
                            }
                        }
                    }
                }
            }
            start = next;
            consumed = next;
        }
        buf.copy_within(consumed..filled, 0);
        base += consumed as u64;
        filled -= consumed;
    }
    stats.bytes = base + filled as u64;
    if cols.is_none() {
        return Err(Error::Format {
            file: name.to_owned(),
            message: "empty file (no header)".into(),
        });
    }
    stats.rows -= stats.bad_rows.min(stats.rows);
    Ok(stats)
}

fn row_from<'a>(
    get: impl Fn(usize) -> Option<&'a [u8]>,
    clicks_offset: u64,
    line_end: u64,
    line: u64,
) -> Option<SegmentationRow<'a>> {
    Some(SegmentationRow {
        mask_path: get(0)?,
        image_id: get(1)?,
        label: get(2)?,
        box_id: get(3)?,
        bbox: [get(4)?, get(5)?, get(6)?, get(7)?],
        predicted_iou: get(8).unwrap_or(b""),
        clicks: get(9).unwrap_or(b""),
        clicks_offset,
        line_end,
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::SAMPLE;
    use super::*;

    #[test]
    fn parses_rows_fast_and_quoted() {
        let mut rows = Vec::new();
        let stats = parse_segmentation_csv(
            SAMPLE.as_bytes(),
            "sample",
            &CancelToken::default(),
            &mut |r| {
                rows.push((
                    String::from_utf8_lossy(r.mask_path).into_owned(),
                    String::from_utf8_lossy(r.clicks).into_owned(),
                    r.clicks_offset,
                    is_canonical_mask_path(r),
                ));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(stats.rows, 5);
        assert_eq!(stats.quoted_rows, 1);
        assert_eq!(rows[0].1, "0.95498 0.65197 1;0.89370 0.56579 1");
        let off = rows[0].2 as usize;
        assert_eq!(&SAMPLE[off..off + rows[0].1.len()], rows[0].1);
        assert!(rows[0].3 && rows[1].3 && !rows[2].3);
        assert_eq!(rows[2].0, "05529ae018130c68_mx_00000001.png");
        assert_eq!(rows[4].1, "0.52271 0.46625 0");
    }

    #[test]
    fn small_reads_give_same_rows() {
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(7).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut offs = Vec::new();
        parse_segmentation_csv(
            Trickle(SAMPLE.as_bytes()),
            "s",
            &CancelToken::default(),
            &mut |r| {
                offs.push(r.clicks_offset);
                Ok(())
            },
        )
        .unwrap();
        let mut offs2 = Vec::new();
        parse_segmentation_csv(SAMPLE.as_bytes(), "s", &CancelToken::default(), &mut |r| {
            offs2.push(r.clicks_offset);
            Ok(())
        })
        .unwrap();
        assert_eq!(offs, offs2);
    }

    #[test]
    fn a_line_longer_than_the_cap_is_an_error_not_a_bigger_buffer() {
        struct Endless(u64);
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = (buf.len() as u64).min(self.0) as usize;
                buf[..n].fill(b'a');
                self.0 -= n as u64;
                Ok(n)
            }
        }
        let mut data = SEGMENTATION_HEADER.as_bytes().to_vec();
        data.push(b'\n');
        let reader = data.as_slice().chain(Endless(3 * MAX_LINE_BYTES as u64));
        let err = parse_segmentation_csv(reader, "long", &CancelToken::default(), &mut |_| Ok(()));
        assert!(
            matches!(&err, Err(Error::Format { message, .. }) if message.contains("longer than")),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_wrong_header() {
        let err = parse_segmentation_csv(
            &b"a,b\n1,2\n"[..],
            "x",
            &CancelToken::default(),
            &mut |_| Ok(()),
        );
        assert!(matches!(err, Err(Error::Format { .. })));
    }

    #[test]
    fn find_byte_matches_position() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..70 {
            for _ in 0..20 {
                let hay: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        [b',', b'a', b'\n', 0x80, 0xff, b'"', 0][(x % 7) as usize]
                    })
                    .collect();
                for needle in [b',', b'\n', b'"', 0x80, 0xff, 0] {
                    assert_eq!(
                        find_byte(&hay, needle),
                        hay.iter().position(|&b| b == needle),
                        "{hay:?} {needle}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_decimal_fast_path_gives_what_str_parse_gives() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut cases: Vec<String> = [
            "0",
            "1",
            "0.5",
            "0.8875",
            "0.960938",
            "1.0",
            "0.000001",
            "999999999999999",
            "0.123456789012345",
            "1.",
            ".5",
            "-0.5",
            "1e5",
            "0.1234567890123456",
            "00.10",
            "",
            " 0.5",
            "0.5 ",
            "1.2.3",
            "nan",
            "inf",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for _ in 0..200_000 {
            let v = next();
            let int = v % 1000;
            let frac_digits = (v >> 10) as usize % 15;
            let frac = (v >> 20) % 10u64.pow(frac_digits as u32);
            cases.push(if frac_digits == 0 {
                format!("{int}")
            } else {
                format!("{int}.{frac:0frac_digits$}")
            });
        }
        for c in cases {
            let want = std::str::from_utf8(c.as_bytes())
                .ok()
                .and_then(|t| t.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite());
            if let Some(fast) = parse_plain_decimal(c.as_bytes()) {
                assert_eq!(Some(fast.to_bits()), want.map(f64::to_bits), "{c:?}");
            }
            assert_eq!(
                parse_f64(c.as_bytes()).map(f64::to_bits),
                want.map(f64::to_bits),
                "{c:?}"
            );
        }
    }
}
