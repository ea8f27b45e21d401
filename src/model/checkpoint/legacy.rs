//! The legacy `torch.save` format (`_use_new_zipfile_serialization=False`, and older
//! torchvision `.pth` files): five pickles (magic number, protocol version, `sys_info`, the
//! object, the storage keys) followed by the raw storages in key order, each prefixed by its
//! element count.

use std::collections::HashMap;
use std::rc::Rc;

use super::materialize::{Loaded, StorageData};
use super::pickle::unpickle;
use super::value::{Obj, StorageRef, Value};
use super::{CheckpointErrorKind, Kindr, malformed, truncated};

/// `torch.serialization.MAGIC_NUMBER`.
pub(super) const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;

/// Reads a legacy checkpoint: its pickles, then the storages they list.
pub(super) fn load_legacy(b: &[u8]) -> Kindr<Loaded<'_>> {
    let mut arena = Vec::new();
    let mut refs = HashMap::new();
    let mut pos = 0;
    let mut next = |arena: &mut Vec<Obj>, refs: &mut HashMap<Rc<str>, StorageRef>| {
        let (v, used) = unpickle(&b[pos..], arena, refs)?;
        pos += used;
        Ok::<_, CheckpointErrorKind>(v)
    };
    match next(&mut arena, &mut refs)? {
        Value::Int(LEGACY_MAGIC) => {}
        _ => {
            return malformed(
                "a plain Python pickle, not a torch.save checkpoint (no PyTorch magic number)",
            );
        }
    }
    match next(&mut arena, &mut refs)? {
        Value::Int(1001) => {}
        Value::Int(v) => return malformed(format!("unsupported legacy protocol version {v}")),
        _ => return malformed("bad legacy protocol version"),
    }
    let sys_info = next(&mut arena, &mut refs)?;
    let mut big_endian = false;
    if let Value::Obj(i) = sys_info
        && let Some(Obj::Dict { entries, .. }) = arena.get(i)
    {
        for (k, v) in entries {
            if let (Value::Str(k), Value::Bool(little)) = (k, v)
                && &**k == "little_endian"
            {
                big_endian = !*little;
            }
        }
    }
    let root = next(&mut arena, &mut refs)?;
    let keys_value = next(&mut arena, &mut refs)?;
    let keys: Vec<Rc<str>> = match &keys_value {
        Value::Obj(i) => match arena.get(*i) {
            Some(Obj::List(l)) => l
                .iter()
                .map(|k| match k {
                    Value::Str(s) => Ok(s.clone()),
                    _ => malformed("storage key list holds a non-string"),
                })
                .collect::<Kindr<_>>()?,
            _ => return malformed("storage key list is not a list"),
        },
        _ => return malformed("storage key list is not a list"),
    };
    let mut storages = HashMap::new();
    for key in keys {
        let Some(r) = refs.get(&key) else {
            return malformed(format!("storage \"{key}\" is listed but never used"));
        };
        let esize = r.dtype.map_or(1, |d| d.size);
        let Some(hdr) = b.get(pos..pos + 8) else {
            return truncated(format!("file ends before storage \"{key}\""));
        };
        let mut a = [0u8; 8];
        a.copy_from_slice(hdr);
        let n = if big_endian {
            i64::from_be_bytes(a)
        } else {
            i64::from_le_bytes(a)
        };
        pos += 8;
        let nbytes = u64::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(esize as u64))
            .and_then(|n| usize::try_from(n).ok());
        let Some(nbytes) = nbytes else {
            return malformed(format!("storage \"{key}\" has a bad size {n}"));
        };
        let Some(bytes) = pos.checked_add(nbytes).and_then(|end| b.get(pos..end)) else {
            return truncated(format!(
                "storage \"{key}\" needs {nbytes} bytes but only {} are left",
                b.len() - pos
            ));
        };
        pos += nbytes;
        storages.insert(key, StorageData { bytes, big_endian });
    }
    if pos != b.len() {
        log::debug!("legacy checkpoint has {} trailing bytes", b.len() - pos);
    }
    Ok(Loaded {
        root,
        arena,
        storages,
        // The pickles and storages together: an upper bound of the object's pickle.
        pickle_len: b.len(),
    })
}

#[cfg(test)]
mod tests {
    use crate::model::checkpoint::fixtures::{floats, legacy, src, tensor_dict};
    use crate::model::checkpoint::{CheckpointErrorKind, read_checkpoint_from_bytes};

    #[test]
    fn handcrafted_legacy_tensor_and_views() {
        let data = floats(&[1.0, 2.0, 3.0, 4.0]);
        // 2x2 transposed view: size (2,2), stride (1,2).
        let b = legacy(
            &tensor_dict(b"K\x02K\x02\x86", b"K\x01K\x02\x86"),
            &["0"],
            &[(4, &data)],
        );
        let t = read_checkpoint_from_bytes(&b, src()).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0, "w");
        let v: Vec<f32> = Vec::try_from(&t[0].1.flatten(0, -1)).unwrap();
        assert_eq!(v, vec![1.0, 3.0, 2.0, 4.0]);

        // A view reaching past the storage is an error, not a crash.
        let b = legacy(
            &tensor_dict(b"K\x03K\x02\x86", b"K\x01K\x02\x86"),
            &["0"],
            &[(4, &data)],
        );
        let err = read_checkpoint_from_bytes(&b, src()).unwrap_err();
        assert!(err.to_string().contains("reaches element 4"), "{err}");

        // Storage missing from the key list.
        let b = legacy(&tensor_dict(b"K\x02\x85", b"K\x01\x85"), &[], &[]);
        let err = read_checkpoint_from_bytes(&b, src()).unwrap_err();
        assert!(
            matches!(err.kind, CheckpointErrorKind::MissingStorage(ref k) if k == "0"),
            "{err}"
        );

        // Storage shorter than announced.
        let b = legacy(
            &tensor_dict(b"K\x02\x85", b"K\x01\x85"),
            &["0"],
            &[(4, &data[..8])],
        );
        let err = read_checkpoint_from_bytes(&b, src()).unwrap_err();
        assert!(
            matches!(err.kind, CheckpointErrorKind::Truncated(_)),
            "{err}"
        );
    }
}
