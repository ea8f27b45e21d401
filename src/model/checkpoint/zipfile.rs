//! The zip container of `torch.save` (PyTorch ≥ 1.6): `<folder>/data.pkl`, one STORED entry
//! `<folder>/data/<key>` per storage, and `<folder>/byteorder`.

use std::collections::HashMap;

use super::materialize::{Loaded, StorageData};
use super::pickle::unpickle;
use super::{CheckpointErrorKind, Kindr, malformed, truncated};

fn rd_u16(b: &[u8], at: usize) -> Kindr<u16> {
    match at.checked_add(2).and_then(|end| b.get(at..end)) {
        Some(s) => Ok(u16::from_le_bytes([s[0], s[1]])),
        None => truncated("zip structure extends past the end of the file"),
    }
}

fn rd_u32(b: &[u8], at: usize) -> Kindr<u32> {
    match at.checked_add(4).and_then(|end| b.get(at..end)) {
        Some(s) => Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]])),
        None => truncated("zip structure extends past the end of the file"),
    }
}

fn rd_u64(b: &[u8], at: usize) -> Kindr<u64> {
    match at.checked_add(8).and_then(|end| b.get(at..end)) {
        Some(s) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            Ok(u64::from_le_bytes(a))
        }
        None => truncated("zip structure extends past the end of the file"),
    }
}

fn to_usize(v: u64) -> Kindr<usize> {
    usize::try_from(v).map_err(|_| CheckpointErrorKind::Malformed("zip offset too large".into()))
}

/// Reads the central directory of a zip archive: name → data bytes. Only STORED entries (as
/// written by `torch.save`) are accepted; zip64 is supported.
fn zip_entries(b: &[u8]) -> Kindr<HashMap<String, &[u8]>> {
    const EOCD: u32 = 0x0605_4b50;
    let min_start = b.len().saturating_sub(22 + 65_535);
    let mut eocd = None;
    let mut i = b.len().saturating_sub(22);
    loop {
        if i < min_start || b.len() < 22 {
            break;
        }
        if rd_u32(b, i)? == EOCD {
            eocd = Some(i);
            break;
        }
        if i == 0 {
            break;
        }
        i -= 1;
    }
    let Some(e) = eocd else {
        return truncated("zip archive without an end-of-central-directory record");
    };
    let mut count = u64::from(rd_u16(b, e + 10)?);
    let mut cd_size = u64::from(rd_u32(b, e + 12)?);
    let mut cd_off = u64::from(rd_u32(b, e + 16)?);
    if (count == 0xffff || cd_size == 0xffff_ffff || cd_off == 0xffff_ffff) && e >= 20 {
        // Zip64 end-of-central-directory locator just before the EOCD.
        if rd_u32(b, e - 20)? == 0x0706_4b50 {
            let z = to_usize(rd_u64(b, e - 20 + 8)?)?;
            if rd_u32(b, z)? != 0x0606_4b50 {
                return malformed("bad zip64 end-of-central-directory record");
            }
            count = rd_u64(b, z + 32)?;
            cd_size = rd_u64(b, z + 40)?;
            cd_off = rd_u64(b, z + 48)?;
        }
    }
    let cd_off = to_usize(cd_off)?;
    let cd_end = cd_off
        .checked_add(to_usize(cd_size)?)
        .filter(|&x| x <= b.len())
        .ok_or_else(|| CheckpointErrorKind::Truncated("zip central directory is cut off".into()))?;
    let mut out = HashMap::new();
    let mut p = cd_off;
    for _ in 0..count {
        if p + 46 > cd_end || rd_u32(b, p)? != 0x0201_4b50 {
            return malformed("bad zip central directory entry");
        }
        let flags = rd_u16(b, p + 8)?;
        let method = rd_u16(b, p + 10)?;
        let mut csize = u64::from(rd_u32(b, p + 20)?);
        let mut usize_ = u64::from(rd_u32(b, p + 24)?);
        let name_len = usize::from(rd_u16(b, p + 28)?);
        let extra_len = usize::from(rd_u16(b, p + 30)?);
        let comment_len = usize::from(rd_u16(b, p + 32)?);
        let mut local = u64::from(rd_u32(b, p + 42)?);
        let name_bytes = b
            .get(p + 46..p + 46 + name_len)
            .ok_or_else(|| CheckpointErrorKind::Truncated("zip entry name cut off".into()))?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        let extra = b
            .get(p + 46 + name_len..p + 46 + name_len + extra_len)
            .ok_or_else(|| CheckpointErrorKind::Truncated("zip extra field cut off".into()))?;
        // Zip64 extended information: only the fields that are saturated, in this order.
        let mut q = 0;
        while q + 4 <= extra.len() {
            let id = rd_u16(extra, q)?;
            let len = usize::from(rd_u16(extra, q + 2)?);
            if id == 0x0001 {
                let mut f = q + 4;
                if usize_ == 0xffff_ffff {
                    usize_ = rd_u64(extra, f)?;
                    f += 8;
                }
                if csize == 0xffff_ffff {
                    csize = rd_u64(extra, f)?;
                    f += 8;
                }
                if local == 0xffff_ffff {
                    local = rd_u64(extra, f)?;
                }
            }
            q += 4 + len;
        }
        p += 46 + name_len + extra_len + comment_len;
        if name.ends_with('/') {
            continue;
        }
        if flags & 1 != 0 {
            return malformed(format!("zip entry \"{name}\" is encrypted"));
        }
        if method != 0 || csize != usize_ {
            return malformed(format!(
                "zip entry \"{name}\" is compressed (method {method}); PyTorch writes \
                 uncompressed archives — re-save the file with torch.save"
            ));
        }
        let local = to_usize(local)?;
        if rd_u32(b, local)? != 0x0403_4b50 {
            return malformed(format!("zip entry \"{name}\" has a bad local header"));
        }
        let lname = usize::from(rd_u16(b, local + 26)?);
        let lextra = usize::from(rd_u16(b, local + 28)?);
        let start = local + 30 + lname + lextra;
        let end = start
            .checked_add(to_usize(csize)?)
            .filter(|&x| x <= b.len())
            .ok_or_else(|| {
                CheckpointErrorKind::Truncated(format!("zip entry \"{name}\" is cut off"))
            })?;
        out.insert(name, &b[start..end]);
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
