//! Reading PyTorch checkpoints (`torch.save` files) and safetensors files without Python.
//!
//! Three container formats are recognised by their first bytes, never by the file extension:
//!
//! * **zip** (`torch.save` since PyTorch 1.6): `<folder>/data.pkl` holds the pickled object,
//!   every tensor storage is a STORED entry `<folder>/data/<key>`, and `<folder>/byteorder` says
//!   `little` or `big` (absent in old files: little). The folder name varies (file stem,
//!   `archive`).
//! * **legacy** (`_use_new_zipfile_serialization=False`, and older torchvision `.pth` files such
//!   as `mobilenet_v2-b0353104.pth`): five pickles one after the other — magic number, protocol
//!   version (1001), `sys_info`, the object, the sorted list of storage keys — followed by the
//!   raw storages in that key order, each prefixed by its element count as an `i64`.
//! * **safetensors**: `u64` header length, JSON header, raw little-endian data.
//!
//! Pickles are read by a restricted unpickler that *never executes anything*: it builds plain
//! values (dicts, lists, tuples, numbers, strings) and recognises tensors through an allow-list of
//! globals (`collections.OrderedDict`, `torch._utils._rebuild_tensor{,_v2,_v3}`,
//! `torch._utils._rebuild_parameter{,_with_state}`, the `torch.*Storage` classes,
//! `torch.storage.UntypedStorage`, `torch.<dtype>` and `torch.Size`). Any other global is an
//! error that names it. All lengths, offsets and strides are checked against the file, so a
//! truncated or corrupted file gives an error, not a panic.
//!
//! The work is bounded by the file's size whatever it claims: the unpickler copies values and
//! hashes keys within a budget of [`COPY_BUDGET_PER_BYTE`] per pickle byte; storage keys are
//! at most [`MAX_STORAGE_KEY_BYTES`] and tensors at most [`MAX_DIMS`] dimensions; the object
//! graph is walked once per container (a shared container of tensors is an error, a shared
//! one without tensors is skipped, so memo references cannot multiply paths); at most
//! [`MAX_TENSORS`] tensors, with names of at most [`MAX_NAME_BYTES`] each and
//! [`NAME_BYTES_PER_PICKLE_BYTE`] per pickle byte together; every view is checked against its
//! storage's real size (no more elements than the storage holds) and all views together
//! against [`MAX_VIEW_EXPANSION`] × the file's storage bytes before any tensor is allocated.
//!
//! Files that must be safetensors (model bundles) are read with [`read_safetensors`], which
//! parses safetensors only and validates it strictly.
//!
//! Tensors always come back on the CPU, contiguous, with the dtype stored in the file.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tch::{Kind, Tensor};

/// An error while reading or writing a checkpoint; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint \"{}\" {kind}", path.display())]
pub struct CheckpointError {
    /// The file that was being read or written.
    pub path: PathBuf,
    /// What went wrong.
    pub kind: CheckpointErrorKind,
}

impl CheckpointError {
    fn new(path: &Path, kind: CheckpointErrorKind) -> Self {
        Self {
            path: path.to_path_buf(),
            kind,
        }
    }
}

/// What went wrong while reading or writing a checkpoint (see [`CheckpointError`]).
#[derive(Debug, thiserror::Error)]
pub enum CheckpointErrorKind {
    /// The file could not be read or written.
    #[error("could not be accessed: {0}")]
    Io(std::io::Error),
    /// The file ends before the structure it describes.
    #[error("is truncated or damaged: {0}")]
    Truncated(String),
    /// The first bytes match none of the supported formats.
    #[error("is not a PyTorch checkpoint (zip or legacy format) nor a safetensors file ({0})")]
    UnknownFormat(String),
    /// The structure is inconsistent.
    #[error("is damaged or not a tensor checkpoint: {0}")]
    Malformed(String),
    /// The pickle stream contains an opcode this reader does not know.
    #[error("contains unknown pickle opcode 0x{opcode:02x} at byte {pos}")]
    UnknownOpcode {
        /// The opcode byte.
        opcode: u8,
        /// Its offset inside the pickle stream.
        pos: usize,
    },
    /// The pickle refers to a Python global outside the allow-list.
    #[error("refers to Python object \"{0}\"; only tensors and plain containers are accepted")]
    DisallowedGlobal(String),
    /// A tensor refers to a storage that the file does not contain.
    #[error("refers to tensor storage \"{0}\", which is missing from the file")]
    MissingStorage(String),
    /// A tensor uses a dtype that cannot be loaded (complex, quantized, unsigned > 8 bit, …).
    #[error("contains a tensor of unsupported type {0}")]
    UnsupportedDtype(String),
    /// Two tensors flatten to the same name.
    #[error("contains the tensor name \"{0}\" twice")]
    DuplicateName(String),
    /// libtorch refused an operation.
    #[error("could not be converted to tensors: {0}")]
    Torch(tch::TchError),
    /// A file read as safetensors breaks the format (header, offsets, sizes) or is another
    /// format altogether.
    #[error("is not a valid safetensors file: {0}")]
    Safetensors(String),
}

type Kindr<T> = Result<T, CheckpointErrorKind>;

fn malformed<T>(msg: impl Into<String>) -> Kindr<T> {
    Err(CheckpointErrorKind::Malformed(msg.into()))
}

fn truncated<T>(msg: impl Into<String>) -> Kindr<T> {
    Err(CheckpointErrorKind::Truncated(msg.into()))
}

/// The on-disk format of a checkpoint, detected from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// `torch.save` zip archive (PyTorch ≥ 1.6 default).
    Zip,
    /// `torch.save` legacy (pre-1.6) stream of pickles followed by raw storages.
    Legacy,
    /// Hugging Face safetensors.
    Safetensors,
}

/// Detects the format of a checkpoint from its first bytes (`None` when unrecognised).
pub fn detect_format(bytes: &[u8]) -> Option<CheckpointFormat> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Some(CheckpointFormat::Zip);
    }
    // Safetensors before pickles: a header of 640 bytes (0x280) starts with the bytes of a
    // protocol-2 pickle, `80 02`, but no pickle has a `{` at byte 8 after a length that fits.
    if bytes.len() >= 9 && bytes[8] == b'{' {
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[..8]);
        let len = u64::from_le_bytes(n);
        if len <= (bytes.len() as u64).saturating_sub(8) {
            return Some(CheckpointFormat::Safetensors);
        }
    }
    if bytes.len() >= 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]) {
        return Some(CheckpointFormat::Legacy);
    }
    None
}

/// Reads every tensor of a checkpoint file (zip, legacy or safetensors; detected from the
/// content), flattening nested dicts/lists with `.`-joined keys.
///
/// `{"model": {"conv.weight": t}, "epoch": 3}` gives `[("model.conv.weight", t)]`; non-tensor
/// leaves (numbers, strings, `None`) are skipped and listed in one `log::info!` line. Integer dict
/// keys and list indices become decimal components (`optimizer.state.0.momentum_buffer`).
/// A file holding a single tensor gives one entry with an empty name.
pub fn read_checkpoint(path: &Path) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let bytes =
        std::fs::read(path).map_err(|e| CheckpointError::new(path, CheckpointErrorKind::Io(e)))?;
    read_checkpoint_from_bytes(&bytes, path)
}

/// Like [`read_checkpoint`], but unwraps training checkpoints: when the top level is a dict with
/// exactly one entry named `model`, `state_dict` or `model_state_dict` that is a dict holding
/// tensors, only that entry's tensors are returned, without the prefix. Otherwise the same as
/// [`read_checkpoint`].
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let bytes =
        std::fs::read(path).map_err(|e| CheckpointError::new(path, CheckpointErrorKind::Io(e)))?;
    read_state_dict_from_bytes(&bytes, path)
}

/// [`read_checkpoint`] on bytes already in memory; `source` is only used in messages.
pub fn read_checkpoint_from_bytes(
    bytes: &[u8],
    source: &Path,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    read_impl(bytes, source, false).map_err(|k| CheckpointError::new(source, k))
}

/// [`read_state_dict`] on bytes already in memory; `source` is only used in messages.
pub fn read_state_dict_from_bytes(
    bytes: &[u8],
    source: &Path,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    read_impl(bytes, source, true).map_err(|k| CheckpointError::new(source, k))
}

const STATE_DICT_ENTRIES: [&str; 3] = ["model", "state_dict", "model_state_dict"];

fn read_impl(bytes: &[u8], source: &Path, unwrap_state_dict: bool) -> Kindr<Vec<(String, Tensor)>> {
    let format = detect_format(bytes).ok_or_else(|| {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        CheckpointErrorKind::UnknownFormat(if bytes.is_empty() {
            "the file is empty".to_string()
        } else {
            format!("it starts with bytes {}", head.join(" "))
        })
    })?;
    let loaded = match format {
        CheckpointFormat::Safetensors => return read_safetensors_bytes(bytes),
        CheckpointFormat::Zip => load_zip(bytes)?,
        CheckpointFormat::Legacy => load_legacy(bytes)?,
    };
    let mut root = loaded.root.clone();
    let mut prefix = String::new();
    let holders = loaded.tensor_holders();
    if unwrap_state_dict && let Some((name, inner)) = loaded.state_dict_entry(&holders) {
        log::debug!(
            "{}: using the \"{name}\" entry as the state dict",
            source.display()
        );
        root = inner;
    }
    let mut walk = Walk {
        name_budget: (loaded.pickle_len as u64)
            .saturating_mul(NAME_BYTES_PER_PICKLE_BYTE)
            .saturating_add(NAME_SLACK_BYTES),
        ..Walk::default()
    };
    loaded.flatten(&root, &mut prefix, 0, &holders, &mut walk)?;
    if walk.skipped > 0 {
        log::info!(
            "{}: skipped {} non-tensor entr{} ({}{})",
            source.display(),
            walk.skipped,
            if walk.skipped == 1 { "y" } else { "ies" },
            walk.shown.join(", "),
            if walk.skipped > walk.shown.len() {
                ", …"
            } else {
                ""
            }
        );
    }
    let out = walk.out;
    let mut seen = HashSet::new();
    for (name, _) in &out {
        if !seen.insert(name.as_str()) {
            return Err(CheckpointErrorKind::DuplicateName(name.clone()));
        }
    }
    // Every view is checked, and the total size bounded, before any tensor is allocated.
    let allowance = loaded
        .storage_bytes()
        .saturating_mul(MAX_VIEW_EXPANSION)
        .saturating_add(VIEW_SLACK_BYTES);
    let mut total: u64 = 0;
    let mut views = Vec::with_capacity(out.len());
    for (name, spec) in &out {
        let view = loaded.check_view(name, spec)?;
        total = total.saturating_add(view.out_bytes);
        if total > allowance {
            return malformed(format!(
                "its tensors (up to \"{name}\") add up to more than {allowance} bytes, over \
                 {MAX_VIEW_EXPANSION} times the {} bytes of data in the file",
                loaded.storage_bytes()
            ));
        }
        views.push(view);
    }
    let mut tensors = Vec::with_capacity(out.len());
    for ((name, spec), view) in out.into_iter().zip(&views) {
        let t = loaded.materialize(&spec, view)?;
        tensors.push((name, t));
    }
    Ok(tensors)
}

// ---------------------------------------------------------------------------------------------
// Values produced by the restricted unpickler
// ---------------------------------------------------------------------------------------------

/// A pickle value. Composite objects live in an arena and are referenced by index, so values
/// are cheap to clone, cycles are harmless and dropping never recurses.
#[derive(Clone, Debug)]
enum Value {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Global(Global),
    Obj(usize),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum DictKey {
    Str(Rc<str>),
    Int(i128),
    Bool(bool),
    None,
}

#[derive(Debug)]
enum Obj {
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict {
        entries: Vec<(Value, Value)>,
        index: HashMap<DictKey, usize>,
    },
    Set(Vec<Value>),
    Storage(StorageRef),
    Tensor(TensorSpec),
}

/// Globals the unpickler accepts. Nothing is ever called; REDUCE on these builds plain values.
#[derive(Clone, Debug, PartialEq)]
enum Global {
    OrderedDict,
    Set,
    FrozenSet,
    TorchSize,
    RebuildTensor,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    /// `torch.FloatStorage` etc. (`None` = `UntypedStorage`, element type `u8`).
    StorageType {
        name: Rc<str>,
        dtype: Option<Dtype>,
    },
    Dtype(Dtype),
}

/// A tensor element type as named by PyTorch. Only some map to a `tch::Kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dtype {
    name: &'static str,
    kind: Option<Kind>,
    size: usize,
}

/// (canonical torch name, aliases, legacy storage class, kind, element size)
type DtypeRow = (
    &'static str,
    &'static [&'static str],
    &'static str,
    Option<Kind>,
    usize,
);

const DTYPES: &[DtypeRow] = &[
    // (canonical torch name, aliases, legacy storage class, kind, element size)
    ("float32", &["float"], "FloatStorage", Some(Kind::Float), 4),
    (
        "float64",
        &["double"],
        "DoubleStorage",
        Some(Kind::Double),
        8,
    ),
    ("float16", &["half"], "HalfStorage", Some(Kind::Half), 2),
    ("bfloat16", &[], "BFloat16Storage", Some(Kind::BFloat16), 2),
    ("int64", &["long"], "LongStorage", Some(Kind::Int64), 8),
    ("int32", &["int"], "IntStorage", Some(Kind::Int), 4),
    ("int16", &["short"], "ShortStorage", Some(Kind::Int16), 2),
    ("int8", &[], "CharStorage", Some(Kind::Int8), 1),
    ("uint8", &[], "ByteStorage", Some(Kind::Uint8), 1),
    ("bool", &[], "BoolStorage", Some(Kind::Bool), 1),
    ("complex32", &["chalf"], "ComplexHalfStorage", None, 4),
    ("complex64", &["cfloat"], "ComplexFloatStorage", None, 8),
    ("complex128", &["cdouble"], "ComplexDoubleStorage", None, 16),
    ("qint8", &[], "QInt8Storage", None, 1),
    ("quint8", &[], "QUInt8Storage", None, 1),
    ("qint32", &[], "QInt32Storage", None, 4),
    ("quint4x2", &[], "QUInt4x2Storage", None, 1),
    ("quint2x4", &[], "QUInt2x4Storage", None, 1),
    ("uint16", &[], "", None, 2),
    ("uint32", &[], "", None, 4),
    ("uint64", &[], "", None, 8),
    ("float8_e4m3fn", &[], "", None, 1),
    ("float8_e5m2", &[], "", None, 1),
    ("float8_e4m3fnuz", &[], "", None, 1),
    ("float8_e5m2fnuz", &[], "", None, 1),
];

fn dtype_by_torch_name(name: &str) -> Option<Dtype> {
    DTYPES
        .iter()
        .find(|d| d.0 == name || d.1.contains(&name))
        .map(|d| Dtype {
            name: d.0,
            kind: d.3,
            size: d.4,
        })
}

fn dtype_by_storage_class(name: &str) -> Option<Dtype> {
    DTYPES
        .iter()
        .find(|d| !d.2.is_empty() && d.2 == name)
        .map(|d| Dtype {
            name: d.0,
            kind: d.3,
            size: d.4,
        })
}

const UINT8: Dtype = Dtype {
    name: "uint8",
    kind: Some(Kind::Uint8),
    size: 1,
};

fn lookup_global(module: &str, name: &str) -> Kindr<Global> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("builtins" | "__builtin__", "set") => Some(Global::Set),
        ("builtins" | "__builtin__", "frozenset") => Some(Global::FrozenSet),
        ("torch", "Size") => Some(Global::TorchSize),
        ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_tensor_v3") => Some(Global::RebuildTensorV3),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => {
            Some(Global::RebuildParameterWithState)
        }
        ("torch" | "torch.storage", "UntypedStorage") => Some(Global::StorageType {
            name: Rc::from(name),
            dtype: None,
        }),
        ("torch" | "torch.cuda", _) if name.ends_with("Storage") => dtype_by_storage_class(name)
            .map(|d| Global::StorageType {
                name: Rc::from(name),
                dtype: Some(d),
            }),
        ("torch", _) => dtype_by_torch_name(name).map(Global::Dtype),
        _ => None,
    };
    g.ok_or_else(|| CheckpointErrorKind::DisallowedGlobal(format!("{module}.{name}")))
}

/// A reference to a storage, from a pickle persistent id.
#[derive(Clone, Debug)]
struct StorageRef {
    key: Rc<str>,
    /// Element type of the storage class (`None`: untyped bytes).
    dtype: Option<Dtype>,
    /// Number of storage elements recorded in the persistent id.
    numel: u64,
}

/// A tensor before its data is read: storage + view geometry.
#[derive(Clone, Debug)]
struct TensorSpec {
    storage: StorageRef,
    dtype: Dtype,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

// ---------------------------------------------------------------------------------------------
// The restricted unpickler
// ---------------------------------------------------------------------------------------------

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    arena: &'a mut Vec<Obj>,
    /// Storages referenced via persistent ids, by key.
    storages: &'a mut HashMap<Rc<str>, StorageRef>,
    /// Values that may still be copied (see [`COPY_BUDGET_PER_BYTE`]).
    copy_budget: u64,
}

/// Deepest container nesting accepted when flattening (state dicts nest 1–3 levels).
const MAX_DEPTH: usize = 200;

/// Most tensors one checkpoint may yield. The largest real state dicts (language models with
/// hundreds of layers) hold well under 100,000 tensors; every entry costs a name and a view
/// description (about 200 bytes), so the cap also bounds that bookkeeping to about 200 MB
/// whatever the file claims.
pub const MAX_TENSORS: usize = 1_000_000;

/// Longest flattened name (`.`-joined keys), in bytes; torchvision's names are under 100. Keys
/// are shared through the pickle memo, so without a cap a few bytes of pickle could build
/// names of gigabytes.
pub const MAX_NAME_BYTES: usize = 4096;

/// The tensors read from one file may hold at most this many times the bytes of the storages
/// in the file (plus [`VIEW_SLACK_BYTES`]). Views may share a storage (tied weights put one
/// storage under two names), but views adding up to more than four copies of the data only
/// serve to make the reader allocate.
pub const MAX_VIEW_EXPANSION: u64 = 4;

/// Allowance on top of [`MAX_VIEW_EXPANSION`] for files whose storages are tiny (a few scalar
/// buffers viewed several times).
pub const VIEW_SLACK_BYTES: u64 = 1 << 20;

/// Values the unpickler may copy per byte of pickle (call arguments, containers built from a
/// sequence). A real pickle copies each value once or twice; a crafted one could REDUCE the
/// same memoised million-item list again and again (quadratic time and memory).
pub const COPY_BUDGET_PER_BYTE: u64 = 8;

/// Fixed part of the copy budget, so tiny pickles can still build a few containers.
pub const COPY_BUDGET_BASE: u64 = 4096;

/// Bytes of a dict key or storage key hashed per unit of the copy budget: a memoised key of a
/// megabyte used as a key a million times would otherwise hash a terabyte.
const HASHED_BYTES_PER_COPY: usize = 64;

/// Most dimensions of a tensor (PyTorch tensors in checkpoints have at most a handful; the
/// cap keeps every view description small however often it is shared).
pub const MAX_DIMS: usize = 64;

/// Longest storage key, in bytes (PyTorch writes decimal numbers: `"0"`, `"140234…"`).
pub const MAX_STORAGE_KEY_BYTES: usize = 1024;

/// All tensor names together may take at most this many bytes per byte of pickle (plus
/// [`NAME_SLACK_BYTES`]): real names are spelled out in the pickle, and nesting adds a short
/// prefix to each, but a long key above a list of a million memoised tensors would name each
/// of them with the whole key.
pub const NAME_BYTES_PER_PICKLE_BYTE: u64 = 16;

/// Allowance on top of [`NAME_BYTES_PER_PICKLE_BYTE`].
pub const NAME_SLACK_BYTES: u64 = 1 << 20;

/// Most open MARKs at once (torch pickles use a handful).
const MAX_MARKS: usize = 100_000;

impl<'a> Unpickler<'a> {
    fn take(&mut self, n: usize, what: &str) -> Kindr<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => truncated(format!(
                "pickle ends inside {what} at byte {} ({} bytes needed, {} left)",
                self.pos,
                n,
                self.data.len() - self.pos
            )),
        }
    }

    fn u8(&mut self) -> Kindr<u8> {
        Ok(self.take(1, "an opcode argument")?[0])
    }

    fn arr<const N: usize>(&mut self) -> Kindr<[u8; N]> {
        let s = self.take(N, "an opcode argument")?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn line(&mut self) -> Kindr<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return truncated("pickle ends inside a text argument");
        };
        let s = std::str::from_utf8(&rest[..n])
            .map_err(|_| CheckpointErrorKind::Malformed("non-UTF-8 text in pickle".into()))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn len_arg(&mut self, n: u64, what: &str) -> Kindr<usize> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return truncated(format!(
                "{what} of {n} bytes at byte {} but only {left} bytes left",
                self.pos
            ));
        }
        Ok(n as usize)
    }

    fn pop(&mut self) -> Kindr<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return malformed(format!("pickle stack underflow at byte {}", self.pos));
        }
        self.stack
            .pop()
            .ok_or_else(|| CheckpointErrorKind::Malformed("stack underflow".into()))
    }

    fn top(&self) -> Kindr<&Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return malformed(format!("pickle stack underflow at byte {}", self.pos));
        }
        self.stack
            .last()
            .ok_or_else(|| CheckpointErrorKind::Malformed("stack underflow".into()))
    }

    fn pop_mark(&mut self) -> Kindr<Vec<Value>> {
        let Some(m) = self.marks.pop() else {
            return malformed(format!("pickle uses a missing MARK at byte {}", self.pos));
        };
        if m > self.stack.len() {
            return malformed("pickle MARK beyond the stack");
        }
        Ok(self.stack.split_off(m))
    }

    /// Accounts for copying `n` values; an error once the pickle's copy budget is spent.
    fn charge(&mut self, n: usize) -> Kindr<()> {
        match self.copy_budget.checked_sub(n as u64) {
            Some(left) => {
                self.copy_budget = left;
                Ok(())
            }
            None => malformed(format!(
                "pickle makes the reader do more work (copying values, hashing keys) than its \
                 {} bytes can describe (at byte {})",
                self.data.len(),
                self.pos
            )),
        }
    }

    fn alloc(&mut self, obj: Obj) -> Value {
        self.arena.push(obj);
        Value::Obj(self.arena.len() - 1)
    }

    fn str_value(bytes: &[u8]) -> Kindr<Value> {
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Value::Str(Rc::from(s))),
            Err(_) => malformed("a pickled string is not valid UTF-8"),
        }
    }

    /// Python 2 `str` (BINSTRING): UTF-8 when valid, else Latin-1.
    fn py2_str_value(bytes: &[u8]) -> Value {
        match std::str::from_utf8(bytes) {
            Ok(s) => Value::Str(Rc::from(s)),
            Err(_) => Value::Str(Rc::from(
                bytes.iter().map(|&b| b as char).collect::<String>(),
            )),
        }
    }

    fn memo_put(&mut self, idx: u64) -> Kindr<()> {
        let v = self.top()?.clone();
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u64) -> Kindr<()> {
        match self.memo.get(&idx) {
            Some(v) => {
                self.stack.push(v.clone());
                Ok(())
            }
            None => malformed(format!(
                "pickle refers to memo entry {idx}, which was never set"
            )),
        }
    }

    fn int_from_le(bytes: &[u8]) -> Kindr<Value> {
        if bytes.is_empty() {
            return Ok(Value::Int(0));
        }
        if bytes.len() > 16 {
            return malformed("pickled integer too large");
        }
        let neg = bytes[bytes.len() - 1] & 0x80 != 0;
        let mut buf = if neg { [0xffu8; 16] } else { [0u8; 16] };
        buf[..bytes.len()].copy_from_slice(bytes);
        Ok(Value::Int(i128::from_le_bytes(buf)))
    }

    fn set_items(&mut self, target: &Value, items: Vec<Value>) -> Kindr<()> {
        if !items.len().is_multiple_of(2) {
            return malformed("SETITEMS with an odd number of items");
        }
        let Value::Obj(i) = target else {
            return malformed("SETITEM on a value that is not a dict");
        };
        if !matches!(self.arena.get(*i), Some(Obj::Dict { .. })) {
            return malformed("SETITEM on an object that is not a dict");
        }
        let hashed: usize = items
            .iter()
            .step_by(2)
            .map(|k| match k {
                Value::Str(s) => 1 + s.len() / HASHED_BYTES_PER_COPY,
                _ => 1,
            })
            .sum();
        self.charge(hashed)?;
        let Some(Obj::Dict { entries, index }) = self.arena.get_mut(*i) else {
            return malformed("SETITEM on an object that is not a dict");
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match dict_key(&k) {
                Some(dk) => match index.get(&dk) {
                    Some(&pos) => entries[pos].1 = v,
                    None => {
                        index.insert(dk, entries.len());
                        entries.push((k, v));
                    }
                },
                None => entries.push((k, v)),
            }
        }
        Ok(())
    }

    fn append_items(&mut self, target: &Value, items: Vec<Value>) -> Kindr<()> {
        let Value::Obj(i) = target else {
            return malformed("APPEND on a value that is not a list");
        };
        match self.arena.get_mut(*i) {
            Some(Obj::List(l)) | Some(Obj::Set(l)) => {
                l.extend(items);
                Ok(())
            }
            _ => malformed("APPEND on an object that is not a list"),
        }
    }

    fn as_int(&self, v: &Value, what: &str) -> Kindr<i64> {
        match v {
            Value::Int(i) => i64::try_from(*i)
                .map_err(|_| CheckpointErrorKind::Malformed(format!("{what} out of range"))),
            Value::Bool(b) => Ok(i64::from(*b)),
            _ => malformed(format!("{what} is not an integer")),
        }
    }

    fn seq_items(&self, v: &Value) -> Option<&[Value]> {
        match v {
            Value::Obj(i) => match self.arena.get(*i) {
                Some(Obj::Tuple(t)) | Some(Obj::List(t)) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }

    fn int_tuple(&self, v: &Value, what: &str) -> Kindr<Vec<i64>> {
        let Some(items) = self.seq_items(v) else {
            return malformed(format!("tensor {what} is not a tuple"));
        };
        items.iter().map(|x| self.as_int(x, what)).collect()
    }

    fn storage_of(&self, v: &Value) -> Kindr<StorageRef> {
        if let Value::Obj(i) = v
            && let Some(Obj::Storage(s)) = self.arena.get(*i)
        {
            return Ok(s.clone());
        }
        malformed("tensor data is not a storage reference")
    }

    fn build_tensor(&mut self, g: &Global, args: &[Value]) -> Kindr<Value> {
        let (min, name) = match g {
            Global::RebuildTensor => (4, "_rebuild_tensor"),
            Global::RebuildTensorV2 => (4, "_rebuild_tensor_v2"),
            _ => (7, "_rebuild_tensor_v3"),
        };
        if args.len() < min {
            return malformed(format!("{name} called with {} arguments", args.len()));
        }
        let storage = self.storage_of(&args[0])?;
        let offset = self.as_int(&args[1], "storage offset")?;
        for (arg, what) in [(&args[2], "size"), (&args[3], "stride")] {
            let dims = self.seq_items(arg).map_or(0, <[Value]>::len);
            if dims > MAX_DIMS {
                return malformed(format!(
                    "a tensor {what} has {dims} dimensions (at most {MAX_DIMS})"
                ));
            }
        }
        let size = self.int_tuple(&args[2], "size")?;
        let stride = self.int_tuple(&args[3], "stride")?;
        let dtype = if matches!(g, Global::RebuildTensorV3) {
            match &args[6] {
                Value::Global(Global::Dtype(d)) => *d,
                _ => return malformed("_rebuild_tensor_v3 without a dtype"),
            }
        } else {
            match storage.dtype {
                Some(d) => d,
                None => UINT8,
            }
        };
        if size.len() != stride.len() {
            return malformed(format!(
                "tensor size {size:?} and stride {stride:?} have different lengths"
            ));
        }
        Ok(self.alloc(Obj::Tensor(TensorSpec {
            storage,
            dtype,
            offset,
            size,
            stride,
        })))
    }

    /// REDUCE / NEWOBJ on an allow-listed global.
    fn call(&mut self, callable: Value, args: Value) -> Kindr<Value> {
        let Value::Global(g) = callable else {
            return malformed("pickle calls something that is not an allowed global");
        };
        let args: Vec<Value> = match &args {
            Value::Obj(i) => match self.arena.get(*i) {
                Some(Obj::Tuple(t)) => t.clone(),
                _ => return malformed("call arguments are not a tuple"),
            },
            _ => return malformed("call arguments are not a tuple"),
        };
        self.charge(args.len())?;
        match &g {
            Global::OrderedDict => {
                let d = self.alloc(Obj::Dict {
                    entries: Vec::new(),
                    index: HashMap::new(),
                });
                if let Some(first) = args.first() {
                    let pairs: Vec<Value> = match self.seq_items(first) {
                        Some(items) => items.to_vec(),
                        None => return malformed("OrderedDict built from a non-sequence"),
                    };
                    self.charge(pairs.len().saturating_mul(3))?;
                    let mut flat = Vec::with_capacity(pairs.len() * 2);
                    for p in &pairs {
                        match self.seq_items(p) {
                            Some([k, v]) => {
                                flat.push(k.clone());
                                flat.push(v.clone());
                            }
                            _ => return malformed("OrderedDict item is not a pair"),
                        }
                    }
                    self.set_items(&d, flat)?;
                }
                Ok(d)
            }
            Global::Set | Global::FrozenSet => {
                let items = match args.first() {
                    Some(v) => match self.seq_items(v) {
                        Some(items) => items.to_vec(),
                        None => return malformed("set built from a non-sequence"),
                    },
                    None => Vec::new(),
                };
                self.charge(items.len())?;
                Ok(self.alloc(Obj::Set(items)))
            }
            Global::TorchSize => {
                let items = match args.first() {
                    Some(v) => match self.seq_items(v) {
                        Some(items) => items.to_vec(),
                        None => return malformed("torch.Size built from a non-sequence"),
                    },
                    None => Vec::new(),
                };
                self.charge(items.len())?;
                Ok(self.alloc(Obj::Tuple(items)))
            }
            Global::RebuildTensor | Global::RebuildTensorV2 | Global::RebuildTensorV3 => {
                self.build_tensor(&g, &args)
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => match args.first() {
                Some(v @ Value::Obj(i)) if matches!(self.arena.get(*i), Some(Obj::Tensor(_))) => {
                    Ok(v.clone())
                }
                _ => malformed("_rebuild_parameter without a tensor"),
            },
            Global::StorageType { name, .. } => {
                malformed(format!("pickle constructs a {name} directly"))
            }
            Global::Dtype(d) => malformed(format!("pickle calls torch.{}", d.name)),
        }
    }

    fn persistent_load(&mut self, pid: Value) -> Kindr<Value> {
        let Some(items) = self.seq_items(&pid).map(<[Value]>::to_vec) else {
            return malformed("persistent id is not a tuple");
        };
        self.charge(items.len())?;
        match items.first() {
            Some(Value::Str(s)) if &**s == "storage" => {}
            _ => return malformed("persistent id is not a storage reference"),
        }
        if items.len() < 5 {
            return malformed("storage reference with too few fields");
        }
        let dtype = match &items[1] {
            Value::Global(Global::StorageType { dtype, .. }) => *dtype,
            _ => return malformed("storage reference without a storage type"),
        };
        let key: Rc<str> = match &items[2] {
            Value::Str(s) => s.clone(),
            Value::Int(i) => Rc::from(i.to_string()),
            _ => return malformed("storage key is not a string"),
        };
        if key.len() > MAX_STORAGE_KEY_BYTES {
            return malformed(format!(
                "a storage key of {} bytes (at most {MAX_STORAGE_KEY_BYTES})",
                key.len()
            ));
        }
        self.charge(key.len() / HASHED_BYTES_PER_COPY)?;
        let numel = match &items[4] {
            Value::Int(n) if *n >= 0 => u64::try_from(*n)
                .map_err(|_| CheckpointErrorKind::Malformed("storage size out of range".into()))?,
            _ => return malformed("storage size is not a non-negative integer"),
        };
        if let Some(v) = items.get(5)
            && !matches!(v, Value::None)
        {
            return malformed(
                "the file uses storage views (PyTorch < 0.4); re-save it with a recent PyTorch",
            );
        }
        let s = StorageRef {
            key: key.clone(),
            dtype,
            numel,
        };
        if let Some(prev) = self.storages.get(&key) {
            if prev.dtype.map(|d| d.size) != dtype.map(|d| d.size) {
                return malformed(format!("storage \"{key}\" is used with two element types"));
            }
        } else {
            self.storages.insert(key, s.clone());
        }
        Ok(self.alloc(Obj::Storage(s)))
    }

    /// Runs until STOP and returns the result.
    fn load(&mut self) -> Kindr<Value> {
        loop {
            let op_pos = self.pos;
            let Some(&op) = self.data.get(self.pos) else {
                return truncated(format!("pickle ends without STOP at byte {}", self.pos));
            };
            self.pos += 1;
            if self.marks.len() > MAX_MARKS {
                return malformed("too many nested MARKs");
            }
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return malformed(format!("unsupported pickle protocol {p}"));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    self.arr::<8>()?;
                }
                b'.' => return self.pop(),
                b'}' => {
                    let v = self.alloc(Obj::Dict {
                        entries: Vec::new(),
                        index: HashMap::new(),
                    });
                    self.stack.push(v);
                }
                b']' => {
                    let v = self.alloc(Obj::List(Vec::new()));
                    self.stack.push(v);
                }
                b')' => {
                    let v = self.alloc(Obj::Tuple(Vec::new()));
                    self.stack.push(v);
                }
                0x8f => {
                    let v = self.alloc(Obj::Set(Vec::new()));
                    self.stack.push(v);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(u64::from(i))?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.arr()?);
                    self.memo_put(u64::from(i))?;
                }
                0x94 => {
                    let i = self.memo.len() as u64;
                    self.memo_put(i)?;
                }
                b'p' => {
                    let l = self.line()?;
                    let i: u64 = l
                        .trim()
                        .parse()
                        .map_err(|_| CheckpointErrorKind::Malformed("bad PUT index".into()))?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    self.memo_get(u64::from(i))?;
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.arr()?);
                    self.memo_get(u64::from(i))?;
                }
                b'g' => {
                    let l = self.line()?;
                    let i: u64 = l
                        .trim()
                        .parse()
                        .map_err(|_| CheckpointErrorKind::Malformed("bad GET index".into()))?;
                    self.memo_get(i)?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.arr()?);
                    self.stack.push(Value::Int(i128::from(v)));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(i128::from(v)));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.arr()?);
                    self.stack.push(Value::Int(i128::from(v)));
                }
                0x8a => {
                    let n = self.u8()?;
                    let b = self.take(usize::from(n), "a LONG1 integer")?;
                    let v = Self::int_from_le(b)?;
                    self.stack.push(v);
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.arr()?);
                    if n < 0 {
                        return malformed("negative LONG4 length");
                    }
                    let n = self.len_arg(n as u64, "a LONG4 integer")?;
                    let b = self.take(n, "a LONG4 integer")?;
                    let v = Self::int_from_le(b)?;
                    self.stack.push(v);
                }
                b'I' | b'L' => {
                    let l = self.line()?.trim().trim_end_matches('L');
                    let v = match l {
                        "01" if op == b'I' => Value::Bool(true),
                        "00" if op == b'I' => Value::Bool(false),
                        _ => Value::Int(l.parse().map_err(|_| {
                            CheckpointErrorKind::Malformed("bad text integer".into())
                        })?),
                    };
                    self.stack.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.arr()?);
                    self.stack.push(Value::Float(v));
                }
                b'F' => {
                    let l = self.line()?;
                    let v: f64 = l
                        .trim()
                        .parse()
                        .map_err(|_| CheckpointErrorKind::Malformed("bad text float".into()))?;
                    self.stack.push(Value::Float(v));
                }
                0x8c => {
                    let n = self.u8()?;
                    let b = self.take(usize::from(n), "a string")?;
                    let v = Self::str_value(b)?;
                    self.stack.push(v);
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.arr()?);
                    let n = self.len_arg(u64::from(n), "a string")?;
                    let b = self.take(n, "a string")?;
                    let v = Self::str_value(b)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.arr()?);
                    let n = self.len_arg(n, "a string")?;
                    let b = self.take(n, "a string")?;
                    let v = Self::str_value(b)?;
                    self.stack.push(v);
                }
                b'U' => {
                    let n = self.u8()?;
                    let b = self.take(usize::from(n), "a string")?;
                    self.stack.push(Self::py2_str_value(b));
                }
                b'T' => {
                    let n = i32::from_le_bytes(self.arr()?);
                    if n < 0 {
                        return malformed("negative BINSTRING length");
                    }
                    let n = self.len_arg(n as u64, "a string")?;
                    let b = self.take(n, "a string")?;
                    self.stack.push(Self::py2_str_value(b));
                }
                b'C' => {
                    let n = self.u8()?;
                    let b = self.take(usize::from(n), "bytes")?;
                    self.stack.push(Value::Bytes(Rc::from(b)));
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.arr()?);
                    let n = self.len_arg(u64::from(n), "bytes")?;
                    let b = self.take(n, "bytes")?;
                    self.stack.push(Value::Bytes(Rc::from(b)));
                }
                0x8e | 0x96 => {
                    let n = u64::from_le_bytes(self.arr()?);
                    let n = self.len_arg(n, "bytes")?;
                    let b = self.take(n, "bytes")?;
                    self.stack.push(Value::Bytes(Rc::from(b)));
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.alloc(Obj::Tuple(items));
                    self.stack.push(v);
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.alloc(Obj::Tuple(items));
                    self.stack.push(v);
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.alloc(Obj::List(items));
                    self.stack.push(v);
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = self.alloc(Obj::Dict {
                        entries: Vec::new(),
                        index: HashMap::new(),
                    });
                    self.set_items(&d, items)?;
                    self.stack.push(d);
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?.clone();
                    self.set_items(&d, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?.clone();
                    self.set_items(&d, items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?.clone();
                    self.append_items(&l, vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    let l = self.top()?.clone();
                    self.append_items(&l, items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    let v = self.alloc(Obj::Set(items));
                    self.stack.push(v);
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    let g = lookup_global(&module, &name)?;
                    self.stack.push(Value::Global(g));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return malformed("STACK_GLOBAL with non-string names");
                    };
                    let g = lookup_global(&module, &name)?;
                    self.stack.push(Value::Global(g));
                }
                b'i' => {
                    // INST: module and class name follow; never allowed.
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    lookup_global(&module, &name)?;
                    return malformed(format!("pickle instantiates {module}.{name} with INST"));
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.call(f, args)?;
                    self.stack.push(v);
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args)?;
                    self.stack.push(v);
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let empty_kwargs = match &kwargs {
                        Value::Obj(i) => match self.arena.get(*i) {
                            Some(Obj::Dict { entries, .. }) => entries.is_empty(),
                            _ => false,
                        },
                        _ => false,
                    };
                    if !empty_kwargs {
                        return malformed("NEWOBJ_EX with keyword arguments");
                    }
                    let v = self.call(cls, args)?;
                    self.stack.push(v);
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return malformed("OBJ without a class");
                    }
                    let cls = items.remove(0);
                    let args = self.alloc(Obj::Tuple(items));
                    let v = self.call(cls, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    let _state = self.pop()?;
                    // Only dicts may receive state (an OrderedDict's `_metadata`, which holds
                    // module versions); it is ignored.
                    let target = self.top()?;
                    let ok = match target {
                        Value::Obj(i) => matches!(self.arena.get(*i), Some(Obj::Dict { .. })),
                        _ => false,
                    };
                    if !ok {
                        return malformed("BUILD on an object that is not a dict");
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.stack.push(v);
                }
                b'P' => return malformed("text persistent ids are not used by PyTorch"),
                0x82..=0x84 => return malformed("pickle uses the extension registry"),
                0x97 | 0x98 => return malformed("pickle uses out-of-band buffers"),
                _ => {
                    return Err(CheckpointErrorKind::UnknownOpcode {
                        opcode: op,
                        pos: op_pos,
                    });
                }
            }
            if self.stack.len() > self.data.len() + 16 {
                return malformed("pickle stack grows beyond the input size");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loaded checkpoint: object graph + storage bytes
// ---------------------------------------------------------------------------------------------

/// Bytes of one storage in the file.
struct StorageData<'a> {
    bytes: &'a [u8],
    /// The stored data is big-endian and must be byte-swapped.
    big_endian: bool,
}

struct Loaded<'a> {
    root: Value,
    arena: Vec<Obj>,
    storages: HashMap<Rc<str>, StorageData<'a>>,
    /// Bytes of the pickle that described `root` (bounds the names built from it).
    pickle_len: usize,
}

/// Short description of a non-container value for log messages.
fn describe(v: &Value) -> String {
    match v {
        Value::None => "None".to_string(),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(x) => x.to_string(),
        Value::Str(s) if s.chars().count() <= 40 => format!("{s:?}"),
        Value::Str(s) => format!("<text of {} characters>", s.chars().count()),
        Value::Bytes(b) => format!("<{} bytes>", b.len()),
        Value::Global(g) => format!("<{g:?}>"),
        Value::Obj(_) => "<object>".to_string(),
    }
}

fn dict_key(v: &Value) -> Option<DictKey> {
    match v {
        Value::Str(s) => Some(DictKey::Str(s.clone())),
        Value::Int(i) => Some(DictKey::Int(*i)),
        Value::Bool(b) => Some(DictKey::Bool(*b)),
        Value::None => Some(DictKey::None),
        _ => None,
    }
}

fn key_string(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) => Some(s.to_string()),
        Value::Int(i) => Some(i.to_string()),
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_string()),
        Value::None => Some("None".to_string()),
        _ => None,
    }
}

/// What a walk over the object graph found: tensors by name, and skipped non-tensor leaves.
#[derive(Default)]
struct Walk {
    out: Vec<(String, TensorSpec)>,
    /// Containers already walked (each is walked once: a shared one would multiply paths).
    visited: HashSet<usize>,
    /// Containers on the current path (a second visit there is a cycle).
    on_path: HashSet<usize>,
    skipped: usize,
    /// The first few skipped entries, for the log line.
    shown: Vec<String>,
    /// Bytes that tensor names may still take (see [`NAME_BYTES_PER_PICKLE_BYTE`]).
    name_budget: u64,
}

/// How many skipped entries the log line names.
const SHOWN_SKIPPED: usize = 8;

impl Walk {
    fn skip(&mut self, what: impl FnOnce() -> String) {
        self.skipped += 1;
        if self.shown.len() < SHOWN_SKIPPED {
            self.shown.push(what());
        }
    }
}

/// `prefix` for messages: the top level has no name.
fn path_name(prefix: &str) -> String {
    if prefix.is_empty() {
        "the top level".to_string()
    } else {
        let cut: String = prefix.chars().take(80).collect();
        let more = if cut.len() < prefix.len() { "…" } else { "" };
        format!("\"{cut}{more}\"")
    }
}

/// A tensor view checked against its storage: what [`Loaded::materialize`] copies.
struct CheckedView<'s> {
    kind: Kind,
    /// The storage's bytes from the view's first element to its last.
    bytes: &'s [u8],
    /// Number of storage elements in `bytes`.
    count: usize,
    /// Bytes of the materialised (contiguous) tensor.
    out_bytes: u64,
    big_endian: bool,
}

impl<'a> Loaded<'a> {
    fn dict_entries(&self, v: &Value) -> Option<&[(Value, Value)]> {
        match v {
            Value::Obj(i) => match self.arena.get(*i) {
                Some(Obj::Dict { entries, .. }) => Some(entries),
                _ => None,
            },
            _ => None,
        }
    }

    /// For every arena object, whether it (transitively) holds a tensor through dict values,
    /// list or tuple items. One backwards sweep from the tensors over the parent links: linear
    /// in the size of the graph, whatever its sharing or cycles.
    fn tensor_holders(&self) -> Vec<bool> {
        let n = self.arena.len();
        let mut parents: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut holds = vec![false; n];
        let mut queue = Vec::new();
        let link = |parents: &mut Vec<Vec<usize>>, child: &Value, parent: usize| {
            if let Value::Obj(c) = child
                && let Some(p) = parents.get_mut(*c)
            {
                p.push(parent);
            }
        };
        for (i, obj) in self.arena.iter().enumerate() {
            match obj {
                Obj::Tensor(_) => {
                    holds[i] = true;
                    queue.push(i);
                }
                Obj::Dict { entries, .. } => {
                    for (_, v) in entries {
                        link(&mut parents, v, i);
                    }
                }
                Obj::List(l) | Obj::Tuple(l) => {
                    for v in l {
                        link(&mut parents, v, i);
                    }
                }
                Obj::Set(_) | Obj::Storage(_) => {}
            }
        }
        while let Some(c) = queue.pop() {
            for &p in &parents[c] {
                if !holds[p] {
                    holds[p] = true;
                    queue.push(p);
                }
            }
        }
        holds
    }

    /// The single `model` / `state_dict` / `model_state_dict` entry of a top-level dict.
    fn state_dict_entry(&self, holders: &[bool]) -> Option<(String, Value)> {
        let entries = self.dict_entries(&self.root)?;
        let holds = |v: &Value| matches!(v, Value::Obj(i) if holders.get(*i) == Some(&true));
        let mut found = entries.iter().filter_map(|(k, v)| match k {
            Value::Str(s)
                if STATE_DICT_ENTRIES.contains(&&**s)
                    && self.dict_entries(v).is_some()
                    && holds(v) =>
            {
                Some((s.to_string(), v.clone()))
            }
            _ => None,
        });
        let first = found.next()?;
        if found.next().is_some() {
            None
        } else {
            Some(first)
        }
    }

    /// Appends `.key` to `prefix`, refusing names over [`MAX_NAME_BYTES`].
    /// `Ok(false)`: the key cannot be part of a name (not a string or number, or too long
    /// above a value that holds no tensor); the entry is skipped.
    fn push_key(prefix: &mut String, key: &Value, holds_tensor: bool) -> Kindr<bool> {
        let key_len = match key {
            Value::Str(s) => s.len(),
            Value::Int(_) | Value::Bool(_) | Value::None => 40,
            _ => return Ok(false),
        };
        if prefix.len().saturating_add(key_len).saturating_add(1) > MAX_NAME_BYTES {
            if !holds_tensor {
                return Ok(false);
            }
            return malformed(format!(
                "a name under {} is longer than {MAX_NAME_BYTES} bytes",
                path_name(prefix)
            ));
        }
        if !prefix.is_empty() {
            prefix.push('.');
        }
        match key_string(key) {
            Some(k) => prefix.push_str(&k),
            None => return Ok(false),
        }
        Ok(true)
    }

    /// Walks the object graph from `v`, collecting tensors under `.`-joined names.
    ///
    /// Each container is walked once. A container reached a second time is a cycle (an error)
    /// when it is on the current path; otherwise it is shared: skipped when it holds no tensor,
    /// an error when it does (its tensors would need two names, and 40 levels of `[x, x]`
    /// would otherwise expand to 2^40 paths).
    fn flatten(
        &self,
        v: &Value,
        prefix: &mut String,
        depth: usize,
        holders: &[bool],
        walk: &mut Walk,
    ) -> Kindr<()> {
        if depth > MAX_DEPTH {
            return malformed(format!("containers nested deeper than {MAX_DEPTH} levels"));
        }
        let Value::Obj(idx) = v else {
            walk.skip(|| format!("{prefix} = {}", describe(v)));
            return Ok(());
        };
        let idx = *idx;
        let obj = self.arena.get(idx);
        match obj {
            Some(Obj::Tensor(spec)) => {
                if walk.out.len() >= MAX_TENSORS {
                    return malformed(format!("the file holds more than {MAX_TENSORS} tensors"));
                }
                walk.name_budget = match walk.name_budget.checked_sub(prefix.len() as u64) {
                    Some(left) => left,
                    None => {
                        return malformed(format!(
                            "its tensor names (up to {}) add up to more bytes than its pickle \
                             of {} bytes can spell",
                            path_name(prefix),
                            self.pickle_len
                        ));
                    }
                };
                walk.out.push((prefix.clone(), spec.clone()));
                return Ok(());
            }
            Some(Obj::Dict { .. }) | Some(Obj::List(_)) | Some(Obj::Tuple(_)) => {}
            _ => {
                walk.skip(|| prefix.clone());
                return Ok(());
            }
        }
        if walk.on_path.contains(&idx) {
            return malformed("containers refer to themselves");
        }
        if !walk.visited.insert(idx) {
            if holders.get(idx) == Some(&true) {
                return malformed(format!(
                    "the container at {} holding tensors is also reached by another path; \
                     shared containers of tensors are not supported",
                    path_name(prefix)
                ));
            }
            walk.skip(|| format!("{prefix} (shared)"));
            return Ok(());
        }
        walk.on_path.insert(idx);
        let len = prefix.len();
        match obj {
            Some(Obj::Dict { entries, .. }) => {
                for (k, x) in entries {
                    let holds = matches!(x, Value::Obj(c) if holders.get(*c) == Some(&true));
                    if Self::push_key(prefix, k, holds)? {
                        self.flatten(x, prefix, depth + 1, holders, walk)?;
                    } else {
                        walk.skip(|| format!("{prefix}[?]"));
                    }
                    prefix.truncate(len);
                }
            }
            Some(Obj::List(l)) | Some(Obj::Tuple(l)) => {
                for (i, x) in l.iter().enumerate() {
                    let holds = matches!(x, Value::Obj(c) if holders.get(*c) == Some(&true));
                    if Self::push_key(prefix, &Value::Int(i as i128), holds)? {
                        self.flatten(x, prefix, depth + 1, holders, walk)?;
                    } else {
                        walk.skip(|| format!("{prefix}[{i}]"));
                    }
                    prefix.truncate(len);
                }
            }
            _ => {}
        }
        walk.on_path.remove(&idx);
        Ok(())
    }

    /// Total bytes of the storages in the file.
    fn storage_bytes(&self) -> u64 {
        self.storages
            .values()
            .map(|s| s.bytes.len() as u64)
            .fold(0, u64::saturating_add)
    }

    /// Checks the view of tensor `name` against its storage's real byte size (checked
    /// arithmetic throughout) before anything is allocated for it.
    fn check_view(&self, name: &str, spec: &TensorSpec) -> Kindr<CheckedView<'a>> {
        let Some(kind) = spec.dtype.kind else {
            return Err(CheckpointErrorKind::UnsupportedDtype(format!(
                "torch.{} (tensor \"{name}\")",
                spec.dtype.name
            )));
        };
        let Some(data) = self.storages.get(&spec.storage.key) else {
            return Err(CheckpointErrorKind::MissingStorage(
                spec.storage.key.to_string(),
            ));
        };
        let bad = |msg: String| CheckpointErrorKind::Malformed(format!("tensor \"{name}\": {msg}"));
        let esize = spec.dtype.size;
        let n_elems = (data.bytes.len() / esize) as u64;
        let mut numel: u64 = 1;
        for &s in &spec.size {
            let s = u64::try_from(s).map_err(|_| bad(format!("negative size {s}")))?;
            numel = numel
                .checked_mul(s)
                .ok_or_else(|| bad(format!("size {:?} overflows", spec.size)))?;
        }
        if spec.offset < 0 || spec.stride.iter().any(|&s| s < 0) {
            return Err(bad(format!(
                "negative storage offset or stride ({} / {:?})",
                spec.offset, spec.stride
            )));
        }
        let offset = spec.offset as u64;
        if numel == 0 {
            return Ok(CheckedView {
                kind,
                bytes: &[],
                count: 0,
                out_bytes: 0,
                big_endian: data.big_endian,
            });
        }
        // Highest storage element touched by the view.
        let mut last = offset;
        for (&s, &st) in spec.size.iter().zip(&spec.stride) {
            let span = (s as u64 - 1).checked_mul(st as u64);
            last = span.and_then(|x| last.checked_add(x)).ok_or_else(|| {
                bad(format!(
                    "view {:?} / {:?} overflows",
                    spec.size, spec.stride
                ))
            })?;
        }
        if last >= n_elems {
            return Err(bad(format!(
                "view (offset {}, size {:?}, stride {:?}) reaches element {last} of storage \
                 \"{}\", which holds {n_elems} elements",
                spec.offset, spec.size, spec.stride, spec.storage.key
            )));
        }
        if numel > n_elems {
            return Err(bad(format!(
                "view (size {:?}, stride {:?}) has {numel} elements but storage \"{}\" holds \
                 only {n_elems}; repeated (stride 0) views are not loaded",
                spec.size, spec.stride, spec.storage.key
            )));
        }
        // `last < n_elems` and `numel <= n_elems`, so none of these overflow.
        let first = offset as usize;
        let count = (last - offset) as usize + 1;
        Ok(CheckedView {
            kind,
            bytes: &data.bytes[first * esize..(first + count) * esize],
            count,
            out_bytes: numel * esize as u64,
            big_endian: data.big_endian,
        })
    }

    fn materialize(&self, spec: &TensorSpec, view: &CheckedView<'_>) -> Kindr<Tensor> {
        let kind = view.kind;
        if view.count == 0 {
            return Tensor::f_zeros(&spec.size, (kind, tch::Device::Cpu))
                .map_err(CheckpointErrorKind::Torch);
        }
        let esize = spec.dtype.size;
        let slice = view.bytes;
        let owned;
        let bytes: &[u8] = if view.big_endian && esize > 1 {
            let mut v = slice.to_vec();
            for chunk in v.chunks_exact_mut(esize) {
                chunk.reverse();
            }
            owned = v;
            &owned
        } else if kind == Kind::Bool && slice.iter().any(|&b| b > 1) {
            owned = slice.iter().map(|&b| u8::from(b != 0)).collect();
            &owned
        } else {
            slice
        };
        let flat = tensor_from_bytes(bytes, &[view.count as i64], kind)?;
        let view = flat
            .f_as_strided(&spec.size, &spec.stride, Some(0))
            .map_err(CheckpointErrorKind::Torch)?;
        view.f_contiguous().map_err(CheckpointErrorKind::Torch)
    }
}

/// Creates a CPU tensor from raw little-endian bytes, checking the length first
/// (`Tensor::from_data_size` trusts it).
fn tensor_from_bytes(bytes: &[u8], size: &[i64], kind: Kind) -> Kindr<Tensor> {
    let mut numel: usize = 1;
    for &s in size {
        let s = usize::try_from(s)
            .map_err(|_| CheckpointErrorKind::Malformed(format!("negative size {s}")))?;
        numel = numel
            .checked_mul(s)
            .ok_or_else(|| CheckpointErrorKind::Malformed("tensor size overflows".to_string()))?;
    }
    let need = numel.checked_mul(kind.elt_size_in_bytes());
    if need != Some(bytes.len()) {
        return malformed(format!(
            "tensor of shape {size:?} needs {} bytes but {} are stored",
            need.map_or_else(|| "too many".to_string(), |n| n.to_string()),
            bytes.len()
        ));
    }
    if numel == 0 {
        return Tensor::f_zeros(size, (kind, tch::Device::Cpu)).map_err(CheckpointErrorKind::Torch);
    }
    Tensor::f_from_data_size(bytes, size, kind).map_err(CheckpointErrorKind::Torch)
}

fn unpickle(
    data: &[u8],
    arena: &mut Vec<Obj>,
    storages: &mut HashMap<Rc<str>, StorageRef>,
) -> Kindr<(Value, usize)> {
    let mut u = Unpickler {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        arena,
        storages,
        copy_budget: (data.len() as u64)
            .saturating_mul(COPY_BUDGET_PER_BYTE)
            .saturating_add(COPY_BUDGET_BASE),
    };
    let v = u.load()?;
    Ok((v, u.pos))
}

// ---------------------------------------------------------------------------------------------
// Zip format
// ---------------------------------------------------------------------------------------------

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

fn load_zip(b: &[u8]) -> Kindr<Loaded<'_>> {
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

// ---------------------------------------------------------------------------------------------
// Legacy format
// ---------------------------------------------------------------------------------------------

/// `torch.serialization.MAGIC_NUMBER`.
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;

fn load_legacy(b: &[u8]) -> Kindr<Loaded<'_>> {
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

// ---------------------------------------------------------------------------------------------
// Safetensors
// ---------------------------------------------------------------------------------------------

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
fn read_safetensors_bytes(b: &[u8]) -> Kindr<Vec<(String, Tensor)>> {
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

impl fmt::Display for CheckpointFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckpointFormat::Zip => "PyTorch zip",
            CheckpointFormat::Legacy => "PyTorch legacy",
            CheckpointFormat::Safetensors => "safetensors",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> &'static Path {
        Path::new("t.pth")
    }

    /// A legacy-format stream around `body` (the main pickle, protocol 2 header included),
    /// with the given storage keys and raw storages (each prefixed by its element count).
    fn legacy(body: &[u8], keys: &[&str], storages: &[(i64, &[u8])]) -> Vec<u8> {
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

    fn short_str(s: &str) -> Vec<u8> {
        let mut v = vec![0x8c, s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    /// `_rebuild_tensor_v2(storage(key, FloatStorage, 4), 0, size, stride, False,
    /// OrderedDict())` left on the stack.
    fn tensor_on(key: &str, size: &[u8], stride: &[u8]) -> Vec<u8> {
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
    fn tensor_dict(size: &[u8], stride: &[u8]) -> Vec<u8> {
        let mut b = b"\x80\x02}".to_vec();
        b.extend(short_str("w"));
        b.extend(tensor_on("0", size, stride));
        b.extend_from_slice(b"s.");
        b
    }

    /// BINUNICODE (any length).
    fn long_str(s: &str) -> Vec<u8> {
        let mut v = vec![b'X'];
        v.extend_from_slice(&(s.len() as u32).to_le_bytes());
        v.extend_from_slice(s.as_bytes());
        v
    }

    /// One memoised 64 KiB key set 20,000 times: hashing it each time is 1.3 GB of work from
    /// 150 KB of pickle. Key hashing is charged to the copy budget.
    #[test]
    fn hashing_a_memoised_long_key_again_and_again_is_bounded() {
        let mut b = b"\x80\x02}".to_vec();
        b.extend(long_str(&"k".repeat(1 << 16)));
        b.extend_from_slice(b"q\x00Ns");
        for _ in 0..20_000 {
            b.extend_from_slice(b"h\x00Ns");
        }
        b.push(b'.');
        let err = read_checkpoint_from_bytes(&legacy(&b, &[], &[]), src()).unwrap_err();
        assert!(err.to_string().contains("more work"), "{err}");
        // A handful of long keys is fine.
        let mut b = b"\x80\x02}".to_vec();
        b.extend(long_str(&"k".repeat(1 << 16)));
        b.extend_from_slice(b"q\x00Ns");
        for _ in 0..10 {
            b.extend_from_slice(b"h\x00Ns");
        }
        b.push(b'.');
        assert!(
            read_checkpoint_from_bytes(&legacy(&b, &[], &[]), src())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn long_storage_keys_and_many_dimensions_are_refused() {
        let data = floats(&[1.0, 2.0, 3.0, 4.0]);
        let key = "7".repeat(MAX_STORAGE_KEY_BYTES + 1);
        let mut body = b"\x80\x02}".to_vec();
        body.extend(short_str("w"));
        body.extend(tensor_on(&key, b"K\x04\x85", b"K\x01\x85"));
        body.extend_from_slice(b"s.");
        let mut file = legacy(&body, &[], &[]);
        // `legacy` takes short keys; append the long key list and the storage by hand.
        let list_at = file.len() - 3;
        file.truncate(list_at);
        file.extend_from_slice(b"](");
        file.extend(long_str(&key));
        file.extend_from_slice(b"e.");
        file.extend_from_slice(&4i64.to_le_bytes());
        file.extend_from_slice(&data);
        let err = read_checkpoint_from_bytes(&file, src()).unwrap_err();
        assert!(
            err.to_string()
                .contains("a storage key of 1025 bytes (at most 1024)"),
            "{err}"
        );

        let ones = |n: usize| {
            let mut t = vec![b'('];
            t.extend(std::iter::repeat_n(&b"K\x01"[..], n).flatten());
            t.push(b't');
            t
        };
        let b = legacy(&tensor_dict(&ones(65), &ones(65)), &["0"], &[(4, &data)]);
        let err = read_checkpoint_from_bytes(&b, src()).unwrap_err();
        assert!(
            err.to_string()
                .contains("size has 65 dimensions (at most 64)"),
            "{err}"
        );
        let b = legacy(&tensor_dict(&ones(64), &ones(64)), &["0"], &[(4, &data)]);
        let t = read_checkpoint_from_bytes(&b, src()).unwrap();
        assert_eq!(t[0].1.size(), vec![1; 64]);
    }

    /// A 4000-byte key above a list of 20,000 references to one tensor: 80 MB of names from
    /// 44 KB of file.
    #[test]
    fn names_are_bounded_by_the_pickle() {
        let data = floats(&[1.0, 2.0, 3.0, 4.0]);
        let list_of = |n: usize| {
            let mut b = b"\x80\x02}".to_vec();
            b.extend(long_str(&"k".repeat(4000)));
            b.extend_from_slice(b"](");
            b.extend(tensor_on("0", b"K\x04\x85", b"K\x01\x85"));
            b.extend_from_slice(b"q\x00");
            for _ in 1..n {
                b.extend_from_slice(b"h\x00");
            }
            b.extend_from_slice(b"es.");
            legacy(&b, &["0"], &[(4, &data)])
        };
        let err = read_checkpoint_from_bytes(&list_of(20_000), src()).unwrap_err();
        assert!(
            err.to_string()
                .contains("add up to more bytes than its pickle"),
            "{err}"
        );
        let t = read_checkpoint_from_bytes(&list_of(100), src()).unwrap();
        assert_eq!(t.len(), 100);
        assert_eq!(t[99].0, format!("{}.99", "k".repeat(4000)));
    }

    fn floats(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

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

    #[test]
    fn disallowed_globals_are_named() {
        for (module, name) in [
            ("os", "system"),
            ("builtins", "eval"),
            ("torch", "load"),
            ("numpy", "dtype"),
        ] {
            let mut b = b"\x80\x02c".to_vec();
            b.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
            b.extend_from_slice(b"X\x02\x00\x00\x00ls\x85R.");
            let err = read_checkpoint_from_bytes(&b, src()).unwrap_err();
            let want = format!(
                "checkpoint \"t.pth\" refers to Python object \"{module}.{name}\"; only tensors \
                 and plain containers are accepted"
            );
            assert_eq!(err.to_string(), want);
        }
        // STACK_GLOBAL (protocol 4) too.
        let mut b = b"\x80\x04".to_vec();
        b.extend(short_str("subprocess"));
        b.extend(short_str("Popen"));
        b.extend_from_slice(b"\x93.");
        let err = read_checkpoint_from_bytes(&b, src()).unwrap_err();
        assert!(err.to_string().contains("\"subprocess.Popen\""), "{err}");
    }

    #[test]
    fn allow_list() {
        assert!(lookup_global("torch.cuda", "FloatStorage").is_ok());
        assert!(lookup_global("torch", "BFloat16Storage").is_ok());
        assert!(lookup_global("torch.storage", "UntypedStorage").is_ok());
        assert!(lookup_global("torch", "float16").is_ok());
        assert!(lookup_global("torch", "uint16").is_ok());
        assert!(lookup_global("torch", "save").is_err());
        assert!(lookup_global("torch", "FooStorage").is_err());
        assert!(lookup_global("torch._utils", "_rebuild_qtensor").is_err());
    }

    #[test]
    fn deep_nesting_and_cycles_are_errors_not_crashes() {
        let n = 200_000;
        let mut b = b"\x80\x02".to_vec();
        b.extend(std::iter::repeat_n(b']', n));
        b.extend(std::iter::repeat_n(b'a', n - 1));
        b.push(b'.');
        let err = read_checkpoint_from_bytes(&legacy(&b, &[], &[]), src()).unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{err}");

        // A list that contains itself.
        let b = b"\x80\x02]q\x00h\x00a.";
        let err = read_checkpoint_from_bytes(&legacy(b, &[], &[]), src()).unwrap_err();
        assert!(err.to_string().contains("refer to themselves"), "{err}");
    }

    #[test]
    fn bad_lengths_and_memo_are_errors() {
        let cases: [&[u8]; 6] = [
            b"\x80\x02X\xff\xff\xff\xff.",
            b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff.",
            b"\x80\x02h\x05.",
            b"\x80\x02s.",
            b"\x80\x02(\x85.",
            b"\x80\x02.",
        ];
        for c in cases {
            let err = read_checkpoint_from_bytes(&legacy(c, &[], &[]), src()).unwrap_err();
            assert!(err.to_string().starts_with("checkpoint \"t.pth\""), "{err}");
        }
    }

    #[test]
    fn non_tensor_leaves_are_skipped() {
        // {"a": 1, "b": [2.5, None], "c": "x"} has no tensors.
        let mut b = b"\x80\x02}(".to_vec();
        b.extend(short_str("a"));
        b.extend_from_slice(b"K\x01");
        b.extend(short_str("b"));
        b.extend_from_slice(b"](G\x40\x04\x00\x00\x00\x00\x00\x00Ne");
        b.extend(short_str("c"));
        b.extend(short_str("x"));
        b.extend_from_slice(b"u.");
        let t = read_checkpoint_from_bytes(&legacy(&b, &[], &[]), src()).unwrap();
        assert!(t.is_empty());
    }

    #[test]
    fn detects_formats() {
        assert_eq!(
            detect_format(b"PK\x03\x04rest"),
            Some(CheckpointFormat::Zip)
        );
        assert_eq!(
            detect_format(b"\x80\x02\x8a"),
            Some(CheckpointFormat::Legacy)
        );
        assert_eq!(
            detect_format(b"\x02\x00\x00\x00\x00\x00\x00\x00{}"),
            Some(CheckpointFormat::Safetensors)
        );
        assert_eq!(detect_format(b"\xff\x00\x00\x00\x00\x00\x00\x00{}"), None);
        assert_eq!(detect_format(b"hello"), None);
    }

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

    /// REDUCE of `torch.Size` on the same memoised 1000-item list, 200 times: each call copies
    /// the list, so the work grows with the square of the file size. The copy budget stops it.
    #[test]
    fn repeated_copies_of_a_memoised_list_are_bounded() {
        let mut b = b"\x80\x02]q\x00(".to_vec();
        b.extend(std::iter::repeat_n(&b"K\x01"[..], 1000).flatten());
        b.extend_from_slice(b"ectorch\nSize\nq\x010");
        for _ in 0..200 {
            b.extend_from_slice(b"h\x01h\x00\x85R0");
        }
        b.extend_from_slice(b"N.");
        let err = read_checkpoint_from_bytes(&legacy(&b, &[], &[]), src()).unwrap_err();
        assert!(err.to_string().contains("more work"), "{err}");
        // Ten calls fit the budget.
        let mut b = b"\x80\x02]q\x00(".to_vec();
        b.extend(std::iter::repeat_n(&b"K\x01"[..], 1000).flatten());
        b.extend_from_slice(b"ectorch\nSize\nq\x010");
        for _ in 0..10 {
            b.extend_from_slice(b"h\x01h\x00\x85R0");
        }
        b.extend_from_slice(b"N.");
        assert!(
            read_checkpoint_from_bytes(&legacy(&b, &[], &[]), src())
                .unwrap()
                .is_empty()
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
