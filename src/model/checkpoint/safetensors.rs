//! Safetensors (`u64` header length, JSON header, raw little-endian data): the strict reader
//! and the writer (temporary file + rename).

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use tch::{Kind, Tensor};

use super::materialize::tensor_from_bytes;
use super::{
    CheckpointError, CheckpointErrorKind, CheckpointFormat, Kindr, MAX_DIMS, detect_format,
};

fn safetensors_kind(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "F32" => Kind::Float,
        "F64" => Kind::Double,
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        "I64" => Kind::Int64,
        "I32" => Kind::Int,
        "I16" => Kind::Int16,
        "I8" => Kind::Int8,
        "U8" => Kind::Uint8,
        "BOOL" => Kind::Bool,
        _ => return None,
    })
}

fn safetensors_dtype(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Float => "F32",
        Kind::Double => "F64",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Int64 => "I64",
        Kind::Int => "I32",
        Kind::Int16 => "I16",
        Kind::Int8 => "I8",
        Kind::Uint8 => "U8",
        Kind::Bool => "BOOL",
        _ => return None,
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SafeEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// Largest safetensors JSON header accepted (the reference implementation's limit, 100 MB).
pub const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

fn not_safetensors<T>(msg: impl Into<String>) -> Kindr<T> {
    Err(CheckpointErrorKind::Safetensors(msg.into()))
}

/// Parses a safetensors file strictly, as the format's reference implementation does: the
/// header length lies within the file (and under [`MAX_SAFETENSORS_HEADER`]), the header is a
/// JSON object of `{dtype, shape, data_offsets}` entries (no other keys) plus an optional
/// `__metadata__` object of strings, every tensor's shape × item size equals its byte range,
/// and the ranges tile the data section exactly: no overlap, no gap, nothing after the last.
pub(super) fn read_safetensors_bytes(b: &[u8]) -> Kindr<Vec<(String, Tensor)>> {
    let Some(head) = b.get(..8) else {
        return not_safetensors(format!(
            "the file has {} bytes; safetensors starts with an 8-byte header length",
            b.len()
        ));
    };
    let mut a = [0u8; 8];
    a.copy_from_slice(head);
    let n = u64::from_le_bytes(a);
    let after = (b.len() - 8) as u64;
    if n > after {
        return not_safetensors(format!(
            "the header length {n} exceeds the {after} bytes after it"
        ));
    }
    if n > MAX_SAFETENSORS_HEADER {
        return not_safetensors(format!(
            "the header length {n} exceeds the limit of {MAX_SAFETENSORS_HEADER} bytes"
        ));
    }
    let header_end = 8 + n as usize;
    let header_bytes = &b[8..header_end];
    if header_bytes.first() != Some(&b'{') {
        return not_safetensors("the header does not start with '{'");
    }
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header_bytes)
        .map_err(|e| {
        CheckpointErrorKind::Safetensors(format!("the header is not a JSON object: {e}"))
    })?;
    let data = &b[header_end..];
    let data_len = data.len() as u64;
    let mut entries = Vec::with_capacity(header.len());
    for (name, v) in header {
        if name == "__metadata__" {
            let ok = v
                .as_object()
                .is_some_and(|m| m.values().all(serde_json::Value::is_string));
            if !ok {
                return not_safetensors("__metadata__ is not an object of strings");
            }
            continue;
        }
        let e: SafeEntry = serde_json::from_value(v).map_err(|e| {
            CheckpointErrorKind::Safetensors(format!("safetensors entry \"{name}\": {e}"))
        })?;
        let kind = safetensors_kind(&e.dtype).ok_or_else(|| {
            CheckpointErrorKind::UnsupportedDtype(format!("{} (tensor \"{name}\")", e.dtype))
        })?;
        if e.shape.len() > MAX_DIMS {
            return not_safetensors(format!(
                "\"{name}\" has {} dimensions (at most {MAX_DIMS})",
                e.shape.len()
            ));
        }
        let mut nbytes = Some(kind.elt_size_in_bytes() as u64);
        for &d in &e.shape {
            if i64::try_from(d).is_err() {
                nbytes = None;
                break;
            }
            nbytes = nbytes.and_then(|x| x.checked_mul(d));
        }
        let [begin, end] = e.data_offsets;
        if begin > end || end > data_len {
            return not_safetensors(format!(
                "the data of \"{name}\" ({begin}..{end}) lies outside the {data_len} data bytes"
            ));
        }
        if nbytes != Some(end - begin) {
            return not_safetensors(format!(
                "\"{name}\" has shape {:?} of {} but its data_offsets span {} bytes",
                e.shape,
                e.dtype,
                end - begin
            ));
        }
        entries.push((name, e, kind));
    }
    entries.sort_by_key(|(_, e, _)| (e.data_offsets[0], e.data_offsets[1]));
    let mut covered = 0u64;
    for (name, e, _) in &entries {
        let [begin, end] = e.data_offsets;
        if begin < covered {
            return not_safetensors(format!(
                "the data of \"{name}\" ({begin}..{end}) overlaps another tensor's"
            ));
        }
        if begin > covered {
            return not_safetensors(format!(
                "bytes {covered}..{begin} before \"{name}\" belong to no tensor"
            ));
        }
        covered = end;
    }
    if covered != data_len {
        return not_safetensors(format!(
            "the tensors cover {covered} of the {data_len} data bytes"
        ));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (name, e, kind) in entries {
        let [begin, end] = e.data_offsets;
        // Both lie within `data` (checked above).
        let bytes = &data[begin as usize..end as usize];
        let size: Vec<i64> = e.shape.iter().map(|&s| s as i64).collect();
        let t = if kind == Kind::Bool && bytes.iter().any(|&x| x > 1) {
            let fixed: Vec<u8> = bytes.iter().map(|&x| u8::from(x != 0)).collect();
            tensor_from_bytes(&fixed, &size, kind)?
        } else {
            tensor_from_bytes(bytes, &size, kind)?
        };
        out.push((name, t));
    }
    Ok(out)
}

/// Reads a file that must be safetensors (a bundle's `model.safetensors`, a run's optimiser
/// state): the content is parsed as safetensors only, never sniffed, with every check listed
/// on the format (header within the file, entries validated, byte ranges tiling the data).
/// A PyTorch checkpoint renamed to `.safetensors` is an error that says so.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let bytes =
        std::fs::read(path).map_err(|e| CheckpointError::new(path, CheckpointErrorKind::Io(e)))?;
    read_safetensors_from_bytes(&bytes, path)
}

/// [`read_safetensors`] on bytes already in memory; `source` is only used in messages.
pub fn read_safetensors_from_bytes(
    bytes: &[u8],
    source: &Path,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    read_safetensors_bytes(bytes).map_err(|kind| {
        let kind = match detect_format(bytes) {
            Some(f @ (CheckpointFormat::Zip | CheckpointFormat::Legacy)) => {
                CheckpointErrorKind::Safetensors(format!(
                    "it is a {f} checkpoint (pickle); only safetensors is accepted here"
                ))
            }
            _ => kind,
        };
        CheckpointError::new(source, kind)
    })
}

/// Writes tensors to a safetensors file (little-endian, names as given, `__metadata__`
/// `{"format": "pt"}`), going through a temporary file in the same directory and a rename, so
/// `path` never holds a half-written file. Tensors may live on any device and be
/// non-contiguous.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), CheckpointError> {
    write_safetensors_impl(path, tensors).map_err(|k| CheckpointError::new(path, k))
}

fn write_safetensors_impl(path: &Path, tensors: &[(String, Tensor)]) -> Kindr<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut blobs = Vec::with_capacity(tensors.len());
    let mut offset = 0usize;
    let mut names = HashSet::new();
    for (name, t) in tensors {
        if !names.insert(name.as_str()) || name == "__metadata__" {
            return Err(CheckpointErrorKind::DuplicateName(name.clone()));
        }
        let kind = t.f_kind().map_err(CheckpointErrorKind::Torch)?;
        let dtype = safetensors_dtype(kind)
            .ok_or_else(|| CheckpointErrorKind::UnsupportedDtype(format!("{kind:?}")))?;
        let t = t
            .f_to_device(tch::Device::Cpu)
            .and_then(|t| t.f_contiguous())
            .map_err(CheckpointErrorKind::Torch)?;
        let numel = t.numel();
        let mut buf = vec![0u8; numel * kind.elt_size_in_bytes()];
        if numel > 0 {
            t.f_copy_data_u8(&mut buf, numel)
                .map_err(CheckpointErrorKind::Torch)?;
        }
        let end = offset + buf.len();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.size(), "data_offsets": [offset, end]}),
        );
        offset = end;
        blobs.push(buf);
    }
    let mut head = serde_json::to_vec(&header)
        .map_err(|e| CheckpointErrorKind::Malformed(format!("header: {e}")))?;
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let write = |f: &mut std::fs::File| -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(f);
        w.write_all(&(head.len() as u64).to_le_bytes())?;
        w.write_all(&head)?;
        for b in &blobs {
            w.write_all(b)?;
        }
        w.flush()?;
        w.get_ref().sync_all()
    };
    write_atomically(path, write).map_err(CheckpointErrorKind::Io)
}

/// Writes `path` through `<path>.tmp-<pid>` and a rename; the temporary file is removed on error.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| write(&mut f))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::read_safetensors_from_bytes;
    use crate::model::checkpoint::fixtures::{floats, legacy, src, tensor_dict};
    use crate::model::checkpoint::{
        CheckpointErrorKind, CheckpointFormat, detect_format, read_checkpoint_from_bytes,
    };

    /// A safetensors file around `header` (padded to 8 bytes) and `data`.
    fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
        let mut h = header.as_bytes().to_vec();
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend(h);
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn safetensors_ranges_must_tile_the_data() {
        let data = floats(&[1.0, 2.0, 3.0]);
        let ok = safetensors(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                "b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
            &data,
        );
        let t = read_safetensors_from_bytes(&ok, src()).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(Vec::<f32>::try_from(&t[1].1).unwrap(), vec![3.0]);
        let cases = [
            // Two tensors on the same bytes.
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                    "b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                "overlaps",
            ),
            // Bytes no tensor owns, before and after.
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                "bytes 0..4 before \"a\" belong to no tensor",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                "cover 8 of the 12 data bytes",
            ),
            // Shape × item size differs from the byte range.
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}}"#,
                "span 12 bytes",
            ),
            // Unknown keys and non-string metadata.
            (
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12],"extra":1}}"#,
                "unknown field",
            ),
            (
                r#"{"__metadata__":{"n":3},"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}"#,
                "__metadata__",
            ),
            (
                &*format!(
                    r#"{{"a":{{"dtype":"F32","shape":[3{}],"data_offsets":[0,12]}}}}"#,
                    ",1".repeat(64)
                ),
                "\"a\" has 65 dimensions (at most 64)",
            ),
        ];
        for (header, want) in cases {
            let b = safetensors(header, &data);
            for err in [
                read_checkpoint_from_bytes(&b, src()).unwrap_err(),
                read_safetensors_from_bytes(&b, src()).unwrap_err(),
            ] {
                assert!(
                    matches!(err.kind, CheckpointErrorKind::Safetensors(_)),
                    "{want}: {err}"
                );
                let msg = err.to_string();
                assert!(msg.contains(want), "{want}: {msg}");
                assert!(msg.contains("not a valid safetensors file"), "{msg}");
            }
        }
    }

    #[test]
    fn safetensors_reader_never_sniffs() {
        let data = floats(&[1.0, 2.0, 3.0, 4.0]);
        let pickle = legacy(
            &tensor_dict(b"K\x04\x85", b"K\x01\x85"),
            &["0"],
            &[(4, &data)],
        );
        assert_eq!(read_checkpoint_from_bytes(&pickle, src()).unwrap().len(), 1);
        let err = read_safetensors_from_bytes(&pickle, src()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "checkpoint \"t.pth\" is not a valid safetensors file: it is a PyTorch legacy \
             checkpoint (pickle); only safetensors is accepted here"
        );
    }

    /// A safetensors header of 640 bytes starts with `80 02`, a protocol-2 pickle's first
    /// bytes: it was detected as a legacy checkpoint and failed to load.
    #[test]
    fn safetensors_with_a_pickle_like_length_is_detected() {
        let entry = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#;
        let mut header = entry.to_string();
        header.push_str(&format!(
            ",\"__metadata__\":{{\"pad\":\"{}\"}}}}",
            "x".repeat(640 - entry.len() - 27)
        ));
        assert_eq!(header.len(), 640, "{header}");
        let b = safetensors(&header, &floats(&[2.5]));
        assert_eq!(&b[..2], b"\x80\x02");
        assert_eq!(detect_format(&b), Some(CheckpointFormat::Safetensors));
        let t = read_checkpoint_from_bytes(&b, src()).unwrap();
        assert_eq!(t[0].1.double_value(&[0]), 2.5);
    }

    #[test]
    fn safetensors_header_errors() {
        let mut b = 10u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"{\"w\": 3}  ");
        let err = read_checkpoint_from_bytes(&b, src()).unwrap_err();
        assert!(err.to_string().contains("safetensors entry \"w\""), "{err}");
        let mut b = 2u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        assert!(read_checkpoint_from_bytes(&b, src()).unwrap().is_empty());
    }
}
