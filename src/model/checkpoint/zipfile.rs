//! The zip container of `torch.save` (PyTorch ≥ 1.6): `<folder>/data.pkl`, one STORED entry
//! `<folder>/data/<key>` per storage, and `<folder>/byteorder`.

use std::collections::HashMap;

use super::materialize::{Loaded, StorageData};
use super::pickle::unpickle;
use super::{CheckpointErrorKind, Kindr, malformed, truncated};
use crate::zip::{self, ZipError, ZipErrorKind};

/// A [`ZipError`] as a checkpoint error of the same kind, `context` first.
fn zip_err(context: &str) -> impl Fn(ZipError) -> CheckpointErrorKind + '_ {
    move |e| {
        let message = format!("{context}: {}", e.message);
        match e.kind {
            ZipErrorKind::Truncated => CheckpointErrorKind::Truncated(message),
            ZipErrorKind::Invalid => CheckpointErrorKind::Malformed(message),
        }
    }
}

/// Reads the central directory of a zip archive held in memory (through [`crate::zip`]):
/// name → data bytes, borrowed from `b`. Only STORED entries (as written by `torch.save`) are
/// accepted; zip64 is supported.
fn zip_entries(b: &[u8]) -> Kindr<HashMap<String, &[u8]>> {
    let location = zip::locate_in(b).map_err(zip_err("zip archive"))?;
    // The file is in memory already: its own size bounds the directory.
    let dir = location
        .range(b.len() as u64, u64::MAX)
        .map_err(zip_err("zip archive"))?;
    let raw = usize::try_from(dir.start)
        .ok()
        .zip(usize::try_from(dir.end).ok())
        .and_then(|(s, e)| b.get(s..e))
        .ok_or_else(|| CheckpointErrorKind::Truncated("zip central directory is cut off".into()))?;
    let mut out = HashMap::new();
    for entry in zip::parse_directory(raw, location).map_err(zip_err("zip central directory"))? {
        let name = &entry.name;
        if name.ends_with('/') {
            continue;
        }
        if entry.flags & 1 != 0 {
            return malformed(format!("zip entry \"{name}\" is encrypted"));
        }
        if entry.method != 0 || entry.compressed_size != entry.size {
            return malformed(format!(
                "zip entry \"{name}\" is compressed (method {}); PyTorch writes \
                 uncompressed archives — re-save the file with torch.save",
                entry.method
            ));
        }
        let data = zip::entry_data(b, location.offset, &entry)
            .map_err(zip_err(&format!("zip entry \"{name}\"")))?;
        out.insert(entry.name, data);
    }
    Ok(out)
}

/// Reads a zip checkpoint: its pickle, and the storages it refers to.
pub(super) fn load_zip(b: &[u8]) -> Kindr<Loaded<'_>> {
    let entries = zip_entries(b)?;
    let mut pkl: Vec<&String> = entries
        .keys()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .collect();
    if pkl.is_empty() {
        pkl = entries
            .keys()
            .filter(|n| n.as_str() == "data.pkl")
            .collect();
    }
    pkl.sort();
    let Some(pkl_name) = pkl.first().copied() else {
        if entries.keys().any(|n| n.ends_with("constants.pkl")) {
            return malformed("this is a TorchScript archive without data.pkl");
        }
        return malformed("zip archive without data.pkl (not a torch.save file)");
    };
    let folder = pkl_name
        .strip_suffix("data.pkl")
        .unwrap_or_default()
        .to_string();
    let big_endian = match entries.get(&format!("{folder}byteorder")) {
        Some(bo) => match bo.trim_ascii() {
            b"little" => false,
            b"big" => true,
            _ => return malformed("unknown byteorder record"),
        },
        None => false,
    };
    let mut arena = Vec::new();
    let mut refs = HashMap::new();
    let pickle_len = entries[pkl_name].len();
    let (root, _) = unpickle(entries[pkl_name], &mut arena, &mut refs)?;
    let mut storages = HashMap::new();
    for (key, r) in &refs {
        let Some(bytes) = entries.get(&format!("{folder}data/{key}")) else {
            return Err(CheckpointErrorKind::MissingStorage(key.to_string()));
        };
        let esize = r.dtype.map_or(1, |d| d.size) as u64;
        let need = r.numel.checked_mul(esize);
        if need.is_none_or(|n| n > bytes.len() as u64) {
            return truncated(format!(
                "storage \"{key}\" should hold {} elements of {esize} bytes but has {} bytes",
                r.numel,
                bytes.len()
            ));
        }
        storages.insert(key.clone(), StorageData { bytes, big_endian });
    }
    Ok(Loaded {
        root,
        arena,
        storages,
        pickle_len,
    })
}
