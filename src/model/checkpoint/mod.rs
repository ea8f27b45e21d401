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
//!
//! Files: `pickle` (the restricted unpickler) with `value` (the object graph it builds) and
//! `pickle::globals` (the allow-list and what it builds); `zipfile` (read through `crate::zip`)
//! and `legacy` (the two `torch.save` containers); `materialize` (object graph + storages →
//! named tensors); `safetensors` (strict reader and writer).

#[cfg(test)]
mod fixtures;
mod legacy;
mod materialize;
mod pickle;
mod safetensors;
mod value;
mod zipfile;

use std::fmt;
use std::path::{Path, PathBuf};

use tch::Tensor;

pub use self::safetensors::{
    MAX_SAFETENSORS_HEADER, read_safetensors, read_safetensors_from_bytes, write_safetensors,
};

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

impl fmt::Display for CheckpointFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckpointFormat::Zip => "PyTorch zip",
            CheckpointFormat::Legacy => "PyTorch legacy",
            CheckpointFormat::Safetensors => "safetensors",
        })
    }
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
        CheckpointFormat::Safetensors => return safetensors::read_safetensors_bytes(bytes),
        CheckpointFormat::Zip => zipfile::load_zip(bytes)?,
        CheckpointFormat::Legacy => legacy::load_legacy(bytes)?,
    };
    loaded.tensors(source, unwrap_state_dict)
}

// ---------------------------------------------------------------------------------------------
// Limits: the work is bounded by the file's size, whatever it claims
// ---------------------------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::{CheckpointFormat, detect_format};

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
}
