//! Bounded, seeded fuzzing of every file reader, run with the suite (no `cargo fuzz`: that needs
//! nightly): PyTorch zip and legacy checkpoints, safetensors, and the COCO / VIA / YOLO-seg
//! dataset readers.
//!
//! Each parser gets mutations of small valid inputs built here (and the real fixtures in
//! `tests/fixtures/checkpoints`, plus `coco128-seg` labels when `../shared/data` is present):
//! bit flips, byte inserts and deletes, truncation, integer fields set to extremes, repeated
//! chunks, deep nesting, format tokens spliced in; structure-aware mutations (a pickle fuzzed
//! inside a well-formed zip, tensor geometry set to extremes, a JSON tree with numbers set to
//! extremes and nodes nested deep); and pure random bytes. A reader must return `Ok` or `Err`:
//! a panic fails the test, naming the case and the file its input was saved to (in the system
//! temporary folder). The process's peak resident memory may not grow by more than
//! [`MAX_RSS_GROWTH`] while a parser is fuzzed.
//!
//! The counts (inputs run, accepted, rejected) are printed per parser (`--nocapture`);
//! `MASKSTUDIO_FUZZ_SCALE=k` runs k times as many. Below the fuzzers are the minimal
//! reproducers of the defects the fuzzing and review found, as regular tests.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use maskstudio::dataset::formats::{self, Format, coco, via, yolo_seg};
use maskstudio::model::checkpoint::{
    read_checkpoint_from_bytes, read_safetensors_from_bytes, read_state_dict_from_bytes,
    write_safetensors,
};
use maskstudio::rng::SplitMix64;
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

/// The tests of this file run one at a time: each measures the process's peak memory.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Largest growth of the process's peak resident memory allowed while one parser is fuzzed.
/// Every input is at most a few hundred kilobytes, so a reader that stays within a small
/// multiple of its input never comes near; one that allocates what a header declares does.
const MAX_RSS_GROWTH: u64 = 256 << 20;

/// A temporary folder for the dataset fuzzers and how many cases to run there: every case
/// writes a file and the readers list folders and read image headers, about 0.2 ms in memory
/// (`/dev/shm`) but 2–3 ms on this machine's disk, so fewer cases run on disk (each parser
/// stays within about 10 s).
fn scratch_dir(cases_in_memory: usize) -> (tempfile::TempDir, usize) {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("fuzz-readers-")
            .tempdir_in(shm)
    {
        return (dir, cases_in_memory);
    }
    (tempfile::tempdir().unwrap(), cases_in_memory / 8)
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoints")
}

// ---------------------------------------------------------------------------------------------
// Memory measurement (Linux /proc; elsewhere the bound is not checked and says so)
// ---------------------------------------------------------------------------------------------

fn proc_status_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Resets the peak-RSS mark (`clear_refs` 5) and returns the current RSS in bytes.
fn start_rss_window() -> Option<u64> {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    proc_status_kib("VmRSS:").map(|k| k * 1024)
}

fn peak_rss() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|k| k * 1024)
}

// ---------------------------------------------------------------------------------------------
// The fuzz driver
// ---------------------------------------------------------------------------------------------

/// `MASKSTUDIO_FUZZ_SCALE=k` runs k times as many inputs per parser (a longer local
/// campaign; the same seeds, so the first cases are the suite's).
fn scaled(n: usize) -> usize {
    let k = std::env::var("MASKSTUDIO_FUZZ_SCALE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&k| k > 0)
        .unwrap_or(1);
    n.saturating_mul(k)
}

/// Inputs run, accepted and rejected for one parser.
#[derive(Debug, Default)]
struct Counts {
    run: usize,
    accepted: usize,
    rejected: usize,
}

/// Runs `n` generated inputs through `parse`, failing on the first panic (the input is saved
/// to a file named in the message) and when peak memory grows past [`MAX_RSS_GROWTH`].
fn fuzz(
    name: &str,
    n: usize,
    seed: u64,
    mut generate: impl FnMut(&mut SplitMix64, usize) -> Vec<u8>,
    mut parse: impl FnMut(&[u8]) -> bool,
) -> Counts {
    let n = scaled(n);
    let mut rng = SplitMix64::new(seed);
    let mut counts = Counts::default();
    let base = start_rss_window();
    let started = std::time::Instant::now();
    for case in 0..n {
        let input = generate(&mut rng, case);
        let result = catch_unwind(AssertUnwindSafe(|| parse(&input)));
        counts.run += 1;
        match result {
            Ok(true) => counts.accepted += 1,
            Ok(false) => counts.rejected += 1,
            Err(_) => {
                let saved = std::env::temp_dir().join(format!("fuzz-{name}-case{case}.bin"));
                let _ = std::fs::write(&saved, &input);
                panic!(
                    "{name}: case {case} (seed {seed}) panicked instead of returning an error; \
                     input ({} bytes) saved to {saved:?}",
                    input.len()
                );
            }
        }
    }
    match (base, peak_rss()) {
        (Some(base), Some(peak)) => {
            let growth = peak.saturating_sub(base);
            assert!(
                growth <= MAX_RSS_GROWTH,
                "{name}: peak memory grew by {} MiB (limit {} MiB)",
                growth >> 20,
                MAX_RSS_GROWTH >> 20
            );
            println!(
                "fuzz {name}: {} inputs run, {} accepted, {} rejected, peak RSS +{} MiB, {:.1} s",
                counts.run,
                counts.accepted,
                counts.rejected,
                growth >> 20,
                started.elapsed().as_secs_f64()
            );
        }
        _ => println!(
            "fuzz {name}: {} inputs run, {} accepted, {} rejected (memory not measured: no \
             /proc/self/status)",
            counts.run, counts.accepted, counts.rejected
        ),
    }
    assert_eq!(counts.run, n);
    counts
}

// ---------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------

/// Values written over integer fields: zero, one, all ones, sign bits, near-maximum.
const EXTREMES: [u64; 8] = [
    0,
    1,
    u64::MAX,
    i64::MAX as u64,
    1 << 63,
    u32::MAX as u64,
    i32::MAX as u64,
    1 << 31,
];

fn pick<'a, T>(rng: &mut SplitMix64, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len())]
}

/// One to four byte-level mutations of `seed`; `tokens` are format fragments spliced in and
/// `nest` the opening token repeated for deep nesting.
fn mutate_bytes(rng: &mut SplitMix64, seed: &[u8], tokens: &[&[u8]], nest: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = b.len();
        let pos = rng.below(len + 1);
        match rng.below(10) {
            0 | 1 if len > 0 => {
                let p = rng.below(len);
                b[p] ^= 1 << rng.below(8);
            }
            2 => {
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                b.splice(pos..pos, bytes);
            }
            3 if len > 0 => {
                let end = (pos + 1 + rng.below(16)).min(len);
                b.drain(pos.min(len - 1)..end);
            }
            4 => b.truncate(pos),
            5 if len > 0 => {
                // An integer field (any width, either byte order) set to an extreme.
                let width = *pick(rng, &[1usize, 2, 4, 8]);
                let v = *pick(rng, &EXTREMES);
                let bytes = if rng.below(2) == 0 {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                let p = rng.below(len);
                for (i, x) in bytes.iter().take(width).enumerate() {
                    if let Some(slot) = b.get_mut(p + i) {
                        *slot = *x;
                    }
                }
            }
            6 if len > 0 => {
                // A chunk repeated: duplicated records, shared structures.
                let s = rng.below(len);
                let e = (s + 1 + rng.below(64)).min(len);
                let chunk = b[s..e].to_vec();
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(b.len() + 1);
                    b.splice(at..at, chunk.iter().copied());
                }
            }
            7 if !tokens.is_empty() => {
                let t = pick(rng, tokens).to_vec();
                b.splice(pos..pos, t);
            }
            8 if !nest.is_empty() => {
                let depth = 1 + rng.below(3000);
                let deep: Vec<u8> = nest
                    .iter()
                    .copied()
                    .cycle()
                    .take(depth * nest.len())
                    .collect();
                b.splice(pos..pos, deep);
            }
            _ if len > 0 => {
                let p = rng.below(len);
                b[p] = *pick(rng, &[0u8, 0xff, 0x7f, 0x80, b'\n', b'.', b'{', b'"']);
            }
            _ => b.push(rng.next_u64() as u8),
        }
    }
    b
}

/// `n` random bytes after `prefix`.
fn random_bytes(rng: &mut SplitMix64, prefix: &[u8], max: usize) -> Vec<u8> {
    let n = rng.below(max + 1);
    let mut b = prefix.to_vec();
    b.extend((0..n).map(|_| rng.next_u64() as u8));
    b
}

/// Numbers and strings that readers must survive in any field.
fn extreme_json(rng: &mut SplitMix64) -> Value {
    match rng.below(16) {
        0 => json!(u64::MAX),
        1 => json!(i64::MIN),
        2 => json!(-1),
        3 => json!(0),
        4 => json!(1e308),
        5 => json!(-1e308),
        6 => json!(4_294_967_296u64),
        7 => json!(9_007_199_254_740_993u64),
        8 => json!(0.5),
        9 => json!(""),
        10 => json!("../../etc/passwd"),
        11 => json!("/etc/passwd"),
        12 => Value::String("x".repeat(10_000)),
        13 => Value::Null,
        14 => json!([]),
        _ => json!({}),
    }
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_nodes).sum(),
        Value::Object(o) => o.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// Applies one structural mutation to node number `*target` (pre-order) of `v`.
fn mutate_node(rng: &mut SplitMix64, v: &mut Value, target: &mut usize) -> bool {
    if *target == 0 {
        let depth = 1 + rng.below(300);
        match rng.below(8) {
            0 | 1 => *v = extreme_json(rng),
            2 => {
                // Nested deep (serde_json stops at 128 levels; readers get what parses).
                let mut x = v.take();
                for _ in 0..depth {
                    x = json!([x]);
                }
                *v = x;
            }
            3 => match v {
                Value::Array(a) if !a.is_empty() => {
                    let i = rng.below(a.len());
                    a.remove(i);
                }
                Value::Object(o) if !o.is_empty() => {
                    let k = o
                        .keys()
                        .nth(rng.below(o.len()))
                        .cloned()
                        .unwrap_or_default();
                    o.remove(&k);
                }
                _ => *v = extreme_json(rng),
            },
            4 => match v {
                Value::Array(a) if !a.is_empty() => {
                    let i = rng.below(a.len());
                    let copy = a[i].clone();
                    a.push(copy);
                }
                Value::Object(o) if !o.is_empty() => {
                    let k = o
                        .keys()
                        .nth(rng.below(o.len()))
                        .cloned()
                        .unwrap_or_default();
                    let copy = o[&k].clone();
                    o.insert(format!("{k}_{}", rng.below(3)), copy);
                }
                _ => *v = extreme_json(rng),
            },
            5 => match v {
                Value::Array(a) => a.push(extreme_json(rng)),
                Value::Object(o) => {
                    o.insert("extra".into(), extreme_json(rng));
                }
                Value::Number(n) => {
                    let x = n.as_f64().unwrap_or(0.0);
                    *v = json!(x * *pick(rng, &[-1.0, 1e6, 1e300, 0.5]));
                }
                _ => *v = extreme_json(rng),
            },
            6 => *v = json!(*pick(rng, &[0.0, -0.0, 1e-300, 3.5])),
            _ => *v = Value::Bool(rng.below(2) == 0),
        }
        return true;
    }
    *target -= 1;
    match v {
        Value::Array(a) => a.iter_mut().any(|x| mutate_node(rng, x, target)),
        Value::Object(o) => o.values_mut().any(|x| mutate_node(rng, x, target)),
        _ => false,
    }
}

/// One to three structural mutations of a JSON document.
fn mutate_json(rng: &mut SplitMix64, doc: &Value) -> Value {
    let mut v = doc.clone();
    for _ in 0..1 + rng.below(3) {
        let mut target = rng.below(count_nodes(&v));
        mutate_node(rng, &mut v, &mut target);
    }
    v
}

const JSON_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"null",
    b"18446744073709551615",
    b"-9223372036854775808",
    b"1e999",
    b"-0",
    b"\"\\u0000\"",
    b"\"../x\"",
];

/// A JSON document as bytes: structural mutation or byte mutation, half each.
fn json_case(rng: &mut SplitMix64, seeds: &[Value]) -> Vec<u8> {
    let doc = pick(rng, seeds);
    if rng.below(2) == 0 {
        serde_json::to_vec(&mutate_json(rng, doc)).unwrap()
    } else {
        mutate_bytes(rng, &serde_json::to_vec(doc).unwrap(), JSON_TOKENS, b"[")
    }
}

// ---------------------------------------------------------------------------------------------
// PyTorch files built by hand: protocol-2 pickles, stored zips, legacy streams
// ---------------------------------------------------------------------------------------------

/// Pickle opcodes of protocol 2 (as `torch.save` writes them).
mod pickle {
    /// BINUNICODE.
    pub fn string(s: &str) -> Vec<u8> {
        let mut v = vec![b'X'];
        v.extend_from_slice(&(s.len() as u32).to_le_bytes());
        v.extend_from_slice(s.as_bytes());
        v
    }

    /// BININT for 32-bit values, else LONG1 with 8 bytes.
    pub fn int(x: i64) -> Vec<u8> {
        match i32::try_from(x) {
            Ok(v) => {
                let mut b = vec![b'J'];
                b.extend_from_slice(&v.to_le_bytes());
                b
            }
            Err(_) => {
                let mut b = vec![0x8a, 8];
                b.extend_from_slice(&x.to_le_bytes());
                b
            }
        }
    }

    pub fn int_tuple(xs: &[i64]) -> Vec<u8> {
        let mut b = vec![b'('];
        for &x in xs {
            b.extend(int(x));
        }
        b.push(b't');
        b
    }

    /// `_rebuild_tensor_v2(storage(key, FloatStorage, numel), offset, size, stride, False,
    /// OrderedDict())` left on the stack.
    pub fn float_tensor(
        key: &str,
        numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> Vec<u8> {
        let mut b = b"ctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
        b.push(b'(');
        b.extend(string("storage"));
        b.extend_from_slice(b"ctorch\nFloatStorage\n");
        b.extend(string(key));
        b.extend(string("cpu"));
        b.extend(int(numel));
        b.extend_from_slice(b"tQ");
        b.extend(int(offset));
        b.extend(int_tuple(size));
        b.extend(int_tuple(stride));
        b.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR");
        b
    }

    /// A whole pickle: `{name: tensor, ...}` with each tensor from [`float_tensor`].
    pub fn tensor_dict(items: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = b"\x80\x02}(".to_vec();
        for (name, t) in items {
            b.extend(string(name));
            b.extend_from_slice(t);
        }
        b.extend_from_slice(b"u.");
        b
    }

    /// `{"model": {"a": L40}}` where `L0 = []` (or `[tensor]`) and `Li = [L(i-1), L(i-1)]`,
    /// the two items one memoised object: 2^levels paths through `levels + 1` lists.
    pub fn shared_lists(levels: u8, tensor: Option<Vec<u8>>) -> Vec<u8> {
        let mut b = b"\x80\x02}".to_vec();
        b.extend(string("model"));
        b.push(b'}');
        b.extend(string("a"));
        b.extend_from_slice(b"]q\x00");
        if let Some(t) = tensor {
            b.extend(t);
            b.push(b'a');
        }
        for i in 1..=levels {
            b.extend_from_slice(&[b'0', b'(', b'h', i - 1, b'h', i - 1, b'l', b'q', i]);
        }
        b.extend_from_slice(b"ss.");
        b
    }
}

/// A zip archive of STORED entries, as `torch.save` writes it.
fn stored_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32fast::hash(data);
        let size = data.len() as u32;
        let mut local = Vec::new();
        local.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        local.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        local.extend_from_slice(&crc.to_le_bytes());
        local.extend_from_slice(&size.to_le_bytes());
        local.extend_from_slice(&size.to_le_bytes());
        local.extend_from_slice(&(name.len() as u16).to_le_bytes());
        local.extend_from_slice(&0u16.to_le_bytes());
        local.extend_from_slice(name.as_bytes());
        out.extend(local);
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 12]);
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    let n = entries.len() as u16;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// A `torch.save` zip: `archive/data.pkl` plus one storage `archive/data/<key>` per item.
fn torch_zip(pkl: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let names: Vec<String> = storages
        .iter()
        .map(|(k, _)| format!("archive/data/{k}"))
        .collect();
    let mut entries: Vec<(&str, &[u8])> =
        vec![("archive/data.pkl", pkl), ("archive/byteorder", b"little")];
    for (name, (_, data)) in names.iter().zip(storages) {
        entries.push((name, data));
    }
    entries.push(("archive/version", b"3\n"));
    stored_zip(&entries)
}

/// `torch.serialization.MAGIC_NUMBER`, the first pickle of a legacy file.
const LEGACY_MAGIC: u128 = 0x1950a86a20f9469cfc6c;

/// A legacy `torch.save` stream: magic, protocol 1001, `sys_info`, the object, the storage
/// keys, then each storage as its element count and raw bytes.
fn legacy(pkl: &[u8], storages: &[(&str, i64, &[u8])]) -> Vec<u8> {
    let mut b = b"\x80\x02\x8a\x0a".to_vec();
    b.extend_from_slice(&LEGACY_MAGIC.to_le_bytes()[..10]);
    b.push(b'.');
    b.extend_from_slice(b"\x80\x02M\xe9\x03.");
    b.extend_from_slice(b"\x80\x02}.");
    b.extend_from_slice(pkl);
    b.extend_from_slice(b"\x80\x02](");
    for (k, _, _) in storages {
        b.extend(pickle::string(k));
    }
    b.extend_from_slice(b"e.");
    for (_, n, data) in storages {
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(data);
    }
    b
}

fn floats(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

/// A small valid pickle over storage "0" (12 floats) and "1" (4 floats): a plain view, a
/// transposed view, an offset row and a scalar.
fn seed_pickle() -> Vec<u8> {
    use pickle::float_tensor;
    pickle::tensor_dict(&[
        ("w", float_tensor("0", 12, 0, &[3, 4], &[4, 1])),
        ("w_t", float_tensor("0", 12, 0, &[4, 3], &[1, 4])),
        ("row", float_tensor("0", 12, 4, &[4], &[1])),
        ("b", float_tensor("1", 4, 0, &[4], &[1])),
        ("s", float_tensor("1", 4, 3, &[], &[])),
    ])
}

/// Integers for tensor geometry: small, zero, negative, huge.
const GEOMETRY: [i64; 12] = [
    0,
    1,
    2,
    3,
    4,
    12,
    -1,
    1 << 20,
    1 << 31,
    1 << 40,
    i64::MAX,
    i64::MIN,
];

/// A valid pickle whose tensors have random geometry (sizes, strides, offsets and storage
/// element counts drawn from [`GEOMETRY`]): stride-0 views of huge sizes, offsets past the
/// end, overflowing spans. Storage "0" holds 12 floats and "1" four.
fn geometry_pickle(rng: &mut SplitMix64) -> Vec<u8> {
    let mut items = Vec::new();
    for name in ["a", "b", "c"] {
        let dims = rng.below(5);
        let mut size = Vec::with_capacity(dims);
        let mut stride = Vec::with_capacity(dims);
        for _ in 0..dims {
            size.push(*pick(rng, &GEOMETRY));
            stride.push(*pick(rng, &GEOMETRY));
        }
        let key = if rng.below(2) == 0 { "0" } else { "1" };
        let numel = if rng.below(4) == 0 {
            *pick(rng, &GEOMETRY)
        } else if key == "0" {
            12
        } else {
            4
        };
        let offset = if rng.below(2) == 0 {
            0
        } else {
            *pick(rng, &GEOMETRY)
        };
        items.push((
            name,
            pickle::float_tensor(key, numel, offset, &size, &stride),
        ));
    }
    pickle::tensor_dict(&items)
}

const PICKLE_TOKENS: &[&[u8]] = &[
    b"q\x00",
    b"h\x00",
    b"h\x01",
    b"]",
    b"}",
    b")",
    b"(",
    b"e",
    b"a",
    b"t",
    b"l",
    b"s",
    b"u",
    b"R",
    b"Q",
    b"N",
    b"0",
    b"2",
    b"\x85",
    b"\x86",
    b"\x94",
    b"J\xff\xff\xff\x7f",
    b"J\x00\x00\x00\x80",
    b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"X\xff\xff\xff\x7f",
    b"\x8d\xff\xff\xff\xff\xff\xff\xff\xff",
    b"ctorch._utils\n_rebuild_tensor_v2\n",
    b"ctorch\nFloatStorage\n",
    b"ctorch\nSize\n",
    b"ccollections\nOrderedDict\n",
    b"cos\nsystem\n",
];

fn parse_checkpoint(bytes: &[u8]) -> bool {
    let src = Path::new("fuzz.pth");
    let a = read_checkpoint_from_bytes(bytes, src).is_ok();
    let b = read_state_dict_from_bytes(bytes, src).is_ok();
    a || b
}

// ---------------------------------------------------------------------------------------------
// Fuzzing: checkpoints
// ---------------------------------------------------------------------------------------------

#[test]
fn fuzz_zip_checkpoints() {
    let _g = serial();
    let data0 = floats(12);
    let data1 = floats(4);
    let pkl = seed_pickle();
    let handmade = torch_zip(&pkl, &[("0", &data0), ("1", &data1)]);
    assert_eq!(
        read_checkpoint_from_bytes(&handmade, Path::new("seed.pt"))
            .unwrap()
            .len(),
        5,
        "the hand-made seed is valid"
    );
    let mut seeds = vec![handmade];
    for f in [
        "small_zip.pt",
        "small_zip_p4.pt",
        "nested_zip.pt",
        "renamed_zip.pt",
    ] {
        seeds.push(std::fs::read(fixtures().join(f)).unwrap());
    }
    let counts = fuzz(
        "pth-zip",
        100_000,
        0x5eed_0001,
        |rng, _| match rng.below(12) {
            // Tensor geometry set to extremes inside a well-formed archive.
            10 | 11 => torch_zip(&geometry_pickle(rng), &[("0", &data0), ("1", &data1)]),
            // The pickle fuzzed inside a well-formed archive (reaches the unpickler).
            0..=4 => {
                let p = mutate_bytes(rng, &pkl, PICKLE_TOKENS, b"(]");
                let d0 = if rng.below(8) == 0 {
                    mutate_bytes(rng, &data0, &[], &[])
                } else {
                    data0.clone()
                };
                torch_zip(&p, &[("0", &d0), ("1", &data1)])
            }
            // The archive itself.
            5..=8 => {
                let seed = pick(rng, &seeds);
                mutate_bytes(rng, seed, &[b"PK\x01\x02", b"PK\x05\x06"], b"")
            }
            _ => {
                let prefix: &[u8] = if rng.below(2) == 0 {
                    b"PK\x03\x04"
                } else {
                    b""
                };
                random_bytes(rng, prefix, 512)
            }
        },
        parse_checkpoint,
    );
    assert!(counts.accepted > 0 && counts.rejected > 0, "{counts:?}");
}

#[test]
fn fuzz_legacy_checkpoints() {
    let _g = serial();
    let data0 = floats(12);
    let data1 = floats(4);
    let pkl = seed_pickle();
    let handmade = legacy(&pkl, &[("0", 12, &data0), ("1", 4, &data1)]);
    assert_eq!(
        read_checkpoint_from_bytes(&handmade, Path::new("seed.pt"))
            .unwrap()
            .len(),
        5,
        "the hand-made seed is valid"
    );
    let mut seeds = vec![handmade];
    for f in ["small_legacy.pt", "nested_legacy.pt"] {
        seeds.push(std::fs::read(fixtures().join(f)).unwrap());
    }
    let counts = fuzz(
        "pth-legacy",
        60_000,
        0x5eed_0002,
        |rng, _| match rng.below(12) {
            10 | 11 => legacy(
                &geometry_pickle(rng),
                &[("0", 12, &data0), ("1", 4, &data1)],
            ),
            0..=4 => {
                let p = mutate_bytes(rng, &pkl, PICKLE_TOKENS, b"(]");
                legacy(&p, &[("0", 12, &data0), ("1", 4, &data1)])
            }
            5..=8 => {
                let seed = pick(rng, &seeds);
                mutate_bytes(rng, seed, PICKLE_TOKENS, b"]")
            }
            _ => {
                let prefix: &[u8] = if rng.below(2) == 0 { b"\x80\x02" } else { b"" };
                random_bytes(rng, prefix, 512)
            }
        },
        parse_checkpoint,
    );
    assert!(counts.accepted > 0 && counts.rejected > 0, "{counts:?}");
}

/// A safetensors file from a JSON header value and data.
fn safetensors_file(header: &Value, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend(h);
    b.extend_from_slice(data);
    b
}

#[test]
fn fuzz_safetensors() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.safetensors");
    let tensors = vec![
        (
            "w".to_string(),
            Tensor::arange(12, (Kind::Float, Device::Cpu)).reshape([3, 4]),
        ),
        (
            "h".to_string(),
            Tensor::ones([2], (Kind::Half, Device::Cpu)),
        ),
        ("i".to_string(), Tensor::from_slice(&[7i64, -1])),
        ("m".to_string(), Tensor::from_slice(&[true, false, true])),
    ];
    write_safetensors(&path, &tensors).unwrap();
    let written = std::fs::read(&path).unwrap();
    let seeds = vec![
        written.clone(),
        std::fs::read(fixtures().join("small.safetensors")).unwrap(),
    ];
    // The header as JSON, for structure-aware mutations (numbers set to extremes…).
    let n = u64::from_le_bytes(written[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&written[8..8 + n]).unwrap();
    let data = written[8 + n..].to_vec();
    let counts = fuzz(
        "safetensors",
        30_000,
        0x5eed_0003,
        |rng, _| match rng.below(10) {
            0..=3 => {
                let d = if rng.below(4) == 0 {
                    mutate_bytes(rng, &data, &[], &[])
                } else {
                    data.clone()
                };
                safetensors_file(&mutate_json(rng, &header), &d)
            }
            4..=8 => {
                let seed = pick(rng, &seeds);
                mutate_bytes(rng, seed, JSON_TOKENS, b"[")
            }
            _ => {
                let mut b = random_bytes(rng, b"", 512);
                if rng.below(2) == 0 && b.len() >= 9 {
                    // A header length within the file, to reach the JSON parser.
                    let len = rng.below(b.len() - 8) as u64;
                    b[..8].copy_from_slice(&len.to_le_bytes());
                    b[8] = b'{';
                }
                b
            }
        },
        |bytes| {
            let src = Path::new("fuzz.safetensors");
            let strict = read_safetensors_from_bytes(bytes, src);
            let sniffed = read_checkpoint_from_bytes(bytes, src);
            // A file the strict reader accepts reads the same through format detection.
            if let Ok(t) = &strict {
                let s = sniffed
                    .as_ref()
                    .expect("strict safetensors also read by detection");
                assert_eq!(t.len(), s.len());
            }
            strict.is_ok()
        },
    );
    assert!(counts.accepted > 0 && counts.rejected > 0, "{counts:?}");
}

// ---------------------------------------------------------------------------------------------
// Fuzzing: dataset readers
// ---------------------------------------------------------------------------------------------

fn coco_seed(rle: &str) -> Value {
    json!({
        "images": [
            {"id": 1, "file_name": "a.png", "width": 20, "height": 10, "license": 1},
            {"id": "2", "file_name": "b.png"}
        ],
        "licenses": [{"id": 1, "name": "CC BY 2.0", "url": "http://x"}],
        "categories": [{"id": 7, "name": "cat"}, {"id": 8, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "iscrowd": 0,
             "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]},
            {"id": 2, "image_id": 1, "category_id": 8, "iscrowd": 1,
             "segmentation": {"size": [10, 20], "counts": rle}},
            {"id": 3, "image_id": "2", "category_id": 8,
             "segmentation": {"size": [12, 16], "counts": [5, 10, 177]}},
            {"id": 4, "image_id": "2", "category_id": 7, "segmentation": [2, 2, 9, 2, 9, 9]}
        ]
    })
}

#[test]
fn fuzz_coco_reader() {
    let _g = serial();
    let (dir, cases) = scratch_dir(20_000);
    common::write_png(&dir.path().join("a.png"), 20, 10, 1);
    common::write_png(&dir.path().join("images/b.png"), 16, 12, 2);
    let rle =
        maskstudio::dataset::Mask::from_polygons(&[vec![1.0, 1.0, 9.0, 1.0, 9.0, 8.0]], 20, 10)
            .unwrap()
            .to_rle()
            .to_compressed();
    let seed = coco_seed(&rle);
    let json_path = dir.path().join("instances_train.json");
    std::fs::write(&json_path, serde_json::to_vec(&seed).unwrap()).unwrap();
    let set = coco::read(&json_path).unwrap();
    assert_eq!(set.images.len(), 2, "the seed is valid");
    assert_eq!(
        set.images.iter().map(|i| i.instances.len()).sum::<usize>(),
        4
    );
    let seeds = [seed];
    let counts = fuzz(
        "coco",
        cases,
        0x5eed_0004,
        |rng, _| {
            if rng.below(20) == 0 {
                random_bytes(rng, b"", 256)
            } else {
                json_case(rng, &seeds)
            }
        },
        |bytes| {
            std::fs::write(&json_path, bytes).unwrap();
            // Detection parses the JSON too; when it says COCO, the reader must agree.
            let detected = formats::detect(&json_path);
            let ok = coco::read(&json_path).is_ok();
            if ok {
                assert!(matches!(detected, Ok(Format::Coco)), "{detected:?}");
            }
            ok
        },
    );
    assert!(counts.accepted > 0 && counts.rejected > 0, "{counts:?}");
}

fn via_seed() -> Value {
    json!({
        "a.png12345": {
            "filename": "a.png", "size": 12345, "file_attributes": {},
            "regions": [
                {"shape_attributes": {"name": "polygon", "all_points_x": [1, 9, 9, 1],
                                      "all_points_y": [1, 1, 8, 8]},
                 "region_attributes": {"name": "drop"}},
                {"shape_attributes": {"name": "rect", "x": 2, "y": 2, "width": 5, "height": 4},
                 "region_attributes": {"type": {"big": true}}},
                {"shape_attributes": {"name": "circle", "cx": 10, "cy": 5, "r": 3},
                 "region_attributes": {}},
                {"shape_attributes": {"name": "ellipse", "cx": 10, "cy": 5, "rx": 4, "ry": 2,
                                      "theta": 0.5},
                 "region_attributes": {"label": "e"}},
                {"shape_attributes": {"name": "point", "cx": 3, "cy": 3}, "region_attributes": {}}
            ]
        },
        "b.png1": {
            "filename": "b.png", "size": 1, "file_attributes": {},
            "regions": {"0": {"shape_attributes": {"name": "polyline",
                                                   "all_points_x": [0, 15, 15],
                                                   "all_points_y": [0, 0, 11]},
                              "region_attributes": {"class": 3}}}
        }
    })
}

#[test]
fn fuzz_via_reader() {
    let _g = serial();
    let (dir, cases) = scratch_dir(20_000);
    common::write_png(&dir.path().join("a.png"), 20, 10, 1);
    common::write_png(&dir.path().join("b.png"), 16, 12, 2);
    let seed = via_seed();
    let json_path = dir.path().join("via_region_data.json");
    std::fs::write(&json_path, serde_json::to_vec(&seed).unwrap()).unwrap();
    let set = via::read(&json_path).unwrap();
    assert_eq!(set.images.len(), 2, "the seed is valid");
    assert_eq!(
        set.images.iter().map(|i| i.instances.len()).sum::<usize>(),
        5
    );
    // The VIA 2 project layout too.
    let seeds = [seed.clone(), json!({"_via_img_metadata": seed})];
    let counts = fuzz(
        "via",
        cases,
        0x5eed_0005,
        |rng, _| {
            if rng.below(20) == 0 {
                random_bytes(rng, b"", 256)
            } else {
                json_case(rng, &seeds)
            }
        },
        |bytes| {
            std::fs::write(&json_path, bytes).unwrap();
            // Detection parses the JSON too (it must not panic either).
            let _ = formats::detect(&json_path);
            via::read(&json_path).is_ok()
        },
    );
    assert!(counts.accepted > 0 && counts.rejected > 0, "{counts:?}");
}

const YOLO_TOKENS: &[&[u8]] = &[
    b" ",
    b"\n",
    b"\t",
    b"0",
    b"1",
    b"-1",
    b"1e308",
    b"-1e308",
    b"NaN",
    b"inf",
    b"18446744073709551616",
    b"99999999999999999999",
    b"0.5 0.5",
    b"names:",
    b"  - x",
    b"  9999999999: y",
    b"\n  18446744073709551615: z\n",
    b"[",
    b"]",
    b"'",
    b"\"",
    b"#",
];

#[test]
fn fuzz_yolo_seg_reader() {
    let _g = serial();
    let (dir, cases) = scratch_dir(20_000);
    let root = dir.path();
    common::write_png(&root.join("images/train/a.png"), 20, 10, 1);
    common::write_png(&root.join("images/val/b.png"), 16, 12, 2);
    std::fs::create_dir_all(root.join("labels/train")).unwrap();
    std::fs::create_dir_all(root.join("labels/val")).unwrap();
    let label_a = root.join("labels/train/a.txt");
    let label_b = root.join("labels/val/b.txt");
    let yaml = root.join("data.yaml");
    let mut label_seeds: Vec<Vec<u8>> = vec![
        b"0 0.1 0.1 0.5 0.1 0.5 0.6 0.1 0.6\n1 0.5 0.5 0.2 0.2\n".to_vec(),
        b"1 0.0 0.0 1.0 0.0 1.0 1.0\n\n2 0.25 0.25 0.75 0.25 0.5 0.75\n".to_vec(),
    ];
    // Real label lines (normalised, so they fit any image) when the shared data is present.
    if let Some(data) = common::shared_data() {
        let labels = data.join("coco128-seg/labels/train2017");
        if let Ok(entries) = std::fs::read_dir(&labels) {
            let mut files: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for f in files.iter().take(3) {
                let text = std::fs::read_to_string(f).unwrap();
                let lines: Vec<String> = text
                    .lines()
                    .take(3)
                    .map(|l| {
                        // Class indices modulo the 3 names below.
                        let (cls, rest) = l.split_once(' ').unwrap_or((l, ""));
                        let cls = cls.parse::<usize>().map_or(0, |c| c % 3);
                        format!("{cls} {rest}")
                    })
                    .collect();
                label_seeds.push(lines.join("\n").into_bytes());
            }
        }
    }
    let yaml_seeds: Vec<Vec<u8>> = vec![
        b"path: .\ntrain: images/train\nval: images/val\nnames:\n  0: cat\n  1: dog\n  2: 'bird # x'\n"
            .to_vec(),
        b"names: [cat, \"dog\", 'bird']\n".to_vec(),
        b"names:\n  - cat\n  - dog\n  - bird\n".to_vec(),
    ];
    std::fs::write(&label_a, &label_seeds[0]).unwrap();
    std::fs::write(&label_b, &label_seeds[1]).unwrap();
    std::fs::write(&yaml, &yaml_seeds[0]).unwrap();
    let set = yolo_seg::read(root).unwrap();
    assert_eq!(set.classes.len(), 3, "the seed is valid");
    assert_eq!(
        set.images.iter().map(|i| i.instances.len()).sum::<usize>(),
        4
    );
    let counts = fuzz(
        "yolo-seg",
        cases,
        0x5eed_0006,
        |rng, _| {
            // One file per case: label (a or b) or data.yaml, in the first byte.
            let which = rng.below(3) as u8;
            let content = match (which, rng.below(20)) {
                (_, 0) => random_bytes(rng, b"", 256),
                (2, _) => {
                    let seed = pick(rng, &yaml_seeds);
                    mutate_bytes(rng, seed, YOLO_TOKENS, b"[")
                }
                _ => {
                    let seed = pick(rng, &label_seeds);
                    mutate_bytes(rng, seed, YOLO_TOKENS, b"")
                }
            };
            let mut b = vec![which];
            b.extend(content);
            b
        },
        |bytes| {
            let (which, content) = bytes.split_first().unwrap();
            let file = match which {
                0 => &label_a,
                1 => &label_b,
                _ => &yaml,
            };
            std::fs::write(file, content).unwrap();
            let ok = yolo_seg::read(root).is_ok();
            let original = match which {
                0 => &label_seeds[0],
                1 => &label_seeds[1],
                _ => &yaml_seeds[0],
            };
            std::fs::write(file, original).unwrap();
            ok
        },
    );
    assert!(counts.accepted > 0 && counts.rejected > 0, "{counts:?}");
}

// ---------------------------------------------------------------------------------------------
// Reproducers of the defects found (regular tests)
// ---------------------------------------------------------------------------------------------

/// Runs `f` on a thread and waits at most two minutes: what used to walk 2^40 paths must not
/// turn into a test that never ends. The bound is only a backstop for the old behaviour; the
/// assertions are on the result.
fn finishes<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("fuzz-{what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    rx.recv_timeout(std::time::Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("{what}: no result after 120 s (an exponential walk?)"))
}

/// Both containers of a checkpoint: a `.pth` zip and the legacy stream, over storage "0".
/// An empty `data` means no storage at all (a legacy file lists only storages in use).
fn both_formats(pkl: &[u8], data: &[u8]) -> [(&'static str, Vec<u8>); 2] {
    let n = (data.len() / 4) as i64;
    if data.is_empty() {
        return [("zip", torch_zip(pkl, &[])), ("legacy", legacy(pkl, &[]))];
    }
    [
        ("zip", torch_zip(pkl, &[("0", data)])),
        ("legacy", legacy(pkl, &[("0", n, data)])),
    ]
}

/// 40 levels of `[x, x]` with `x` one memoised list: 2^40 paths through 41 lists. Without
/// tensors the shared lists are skipped (one visit each); with a tensor at the bottom it is an
/// error (its tensor would need 2^40 names). Both fail fast instead of walking every path.
#[test]
fn memo_shared_lists_are_walked_once() {
    let _g = serial();
    let data = floats(4);
    for (format, file) in both_formats(&pickle::shared_lists(40, None), &[]) {
        let (all, sd) = finishes(format, move || {
            let src = Path::new("shared.pth");
            (
                read_checkpoint_from_bytes(&file, src)
                    .map(|t| t.len())
                    .map_err(|e| e.to_string()),
                read_state_dict_from_bytes(&file, src)
                    .map(|t| t.len())
                    .map_err(|e| e.to_string()),
            )
        });
        assert_eq!(all, Ok(0), "{format}");
        assert_eq!(sd, Ok(0), "{format}");
    }
    let tensor = pickle::float_tensor("0", 4, 0, &[4], &[1]);
    for levels in [3, 40] {
        let pkl = pickle::shared_lists(levels, Some(tensor.clone()));
        for (format, file) in both_formats(&pkl, &data) {
            let (all, sd) = finishes(format, move || {
                let src = Path::new("shared.pth");
                (
                    read_checkpoint_from_bytes(&file, src)
                        .map(|t| t.len())
                        .map_err(|e| e.to_string()),
                    read_state_dict_from_bytes(&file, src)
                        .map(|t| t.len())
                        .map_err(|e| e.to_string()),
                )
            });
            for r in [all, sd] {
                let err = r.expect_err(format);
                assert!(
                    err.contains("checkpoint \"shared.pth\"")
                        && err.contains("is also reached by another path")
                        && err.contains("a.0.0"),
                    "{format}, {levels} levels: {err}"
                );
            }
        }
    }
}

/// A view asking for more elements than its storage holds (stride 0 repeating one float 2^26
/// times, or a stride reaching far past the end) is refused before anything is allocated, and
/// the message names the tensor.
#[test]
fn views_beyond_their_storage_name_the_tensor() {
    let _g = serial();
    let data = floats(4);
    let cases: [(&[i64], &[i64], &str); 3] = [
        (
            &[1 << 26],
            &[0],
            "has 67108864 elements but storage \"0\" holds only 4",
        ),
        (
            &[2, 2],
            &[1, 1 << 40],
            "reaches element 1099511627777 of storage \"0\"",
        ),
        (&[3, 3], &[1, i64::MAX], "overflows"),
    ];
    for (size, stride, want) in cases {
        let pkl = pickle::tensor_dict(&[
            ("ok", pickle::float_tensor("0", 4, 0, &[4], &[1])),
            ("big.weight", pickle::float_tensor("0", 4, 0, size, stride)),
        ]);
        for (format, file) in both_formats(&pkl, &data) {
            let err = read_checkpoint_from_bytes(&file, Path::new("view.pth"))
                .expect_err(format)
                .to_string();
            assert!(
                err.contains("tensor \"big.weight\"") && err.contains(want),
                "{format} {size:?}/{stride:?}: {err}"
            );
        }
    }
}

/// Many full views of one storage: each is valid alone, but together they would materialise
/// 16 copies of the data; the total is capped at `MAX_VIEW_EXPANSION` times the file's data.
#[test]
fn views_adding_up_past_the_data_are_refused() {
    let _g = serial();
    let n = 1 << 16;
    let data = floats(n);
    let names: Vec<String> = (0..16).map(|i| format!("w{i}")).collect();
    let items: Vec<(&str, Vec<u8>)> = names
        .iter()
        .map(|name| {
            (
                name.as_str(),
                pickle::float_tensor("0", n as i64, 0, &[n as i64], &[1]),
            )
        })
        .collect();
    let pkl = pickle::tensor_dict(&items);
    for (format, file) in both_formats(&pkl, &data) {
        let err = read_checkpoint_from_bytes(&file, Path::new("views.pth"))
            .expect_err(format)
            .to_string();
        assert!(
            err.contains("add up to more than") && err.contains("4 times the 262144 bytes"),
            "{format}: {err}"
        );
    }
    // Two names on one storage (tied weights) are fine.
    let pkl = pickle::tensor_dict(&items[..2]);
    for (format, file) in both_formats(&pkl, &data) {
        let t = read_checkpoint_from_bytes(&file, Path::new("tied.pth")).expect(format);
        assert_eq!(t.len(), 2);
        assert!(t[0].1.equal(&t[1].1), "{format}");
        let last: f64 = t[1].1.double_value(&[n as i64 - 1]);
        assert_eq!(last, (n - 1) as f64);
    }
}

/// A zip64 locator pointing at offset 2^64 - 16 made the zip reader's `at + 4` overflow
/// (a panic in debug builds); it is now a "truncated" error.
#[test]
fn zip64_locator_past_the_end_is_an_error() {
    let _g = serial();
    let mut file = torch_zip(&seed_pickle(), &[("0", &floats(12)), ("1", &floats(4))]);
    let eocd = file.len() - 22;
    // Saturate the entry count so the reader looks for the zip64 locator before the EOCD.
    file[eocd + 10..eocd + 12].copy_from_slice(&0xffffu16.to_le_bytes());
    let mut locator = 0x0706_4b50u32.to_le_bytes().to_vec();
    locator.extend_from_slice(&0u32.to_le_bytes());
    locator.extend_from_slice(&(u64::MAX - 15).to_le_bytes());
    locator.extend_from_slice(&1u32.to_le_bytes());
    file.splice(eocd..eocd, locator);
    let err = read_checkpoint_from_bytes(&file, Path::new("z64.pth")).unwrap_err();
    assert!(
        err.to_string()
            .contains("zip structure extends past the end of the file"),
        "{err}"
    );
}
