//! Hand-written pickles and legacy checkpoints for the unit tests of this module.

use std::path::Path;

use super::legacy::LEGACY_MAGIC;

/// The file name the tests' messages name.
pub(super) fn src() -> &'static Path {
    Path::new("t.pth")
}

/// A legacy-format stream around `body` (the main pickle, protocol 2 header included),
/// with the given storage keys and raw storages (each prefixed by its element count).
pub(super) fn legacy(body: &[u8], keys: &[&str], storages: &[(i64, &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    // magic: PROTO 2, LONG1 10 bytes, STOP
    b.extend_from_slice(b"\x80\x02\x8a\x0a");
    b.extend_from_slice(&LEGACY_MAGIC.to_le_bytes()[..10]);
    b.push(b'.');
    b.extend_from_slice(b"\x80\x02M\xe9\x03."); // 1001
    b.extend_from_slice(b"\x80\x02}."); // sys_info {}
    b.extend_from_slice(body);
    b.extend_from_slice(b"\x80\x02](");
    for k in keys {
        b.push(0x8c);
        b.push(k.len() as u8);
        b.extend_from_slice(k.as_bytes());
    }
    b.extend_from_slice(b"e.");
    for (n, data) in storages {
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(data);
    }
    b
}

pub(super) fn short_str(s: &str) -> Vec<u8> {
    let mut v = vec![0x8c, s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

/// `_rebuild_tensor_v2(storage(key, FloatStorage, 4), 0, size, stride, False,
/// OrderedDict())` left on the stack.
pub(super) fn tensor_on(key: &str, size: &[u8], stride: &[u8]) -> Vec<u8> {
    let mut b = b"ctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
    b.push(b'(');
    b.extend(short_str("storage"));
    b.extend_from_slice(b"ctorch\nFloatStorage\n");
    b.push(b'X');
    b.extend_from_slice(&(key.len() as u32).to_le_bytes());
    b.extend_from_slice(key.as_bytes());
    b.extend(short_str("cpu"));
    b.extend_from_slice(b"K\x04Nt");
    b.extend_from_slice(b"QK\x00");
    b.extend_from_slice(size);
    b.extend_from_slice(stride);
    b.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR");
    b
}

/// `{"w": _rebuild_tensor_v2(storage("0", FloatStorage, 4), 0, size, stride, False,
/// OrderedDict())}`
pub(super) fn tensor_dict(size: &[u8], stride: &[u8]) -> Vec<u8> {
    let mut b = b"\x80\x02}".to_vec();
    b.extend(short_str("w"));
    b.extend(tensor_on("0", size, stride));
    b.extend_from_slice(b"s.");
    b
}

/// BINUNICODE (any length).
pub(super) fn long_str(s: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend_from_slice(&(s.len() as u32).to_le_bytes());
    v.extend_from_slice(s.as_bytes());
    v
}

pub(super) fn floats(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
