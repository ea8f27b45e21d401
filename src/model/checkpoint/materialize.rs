//! From a loaded checkpoint (object graph + storage bytes) to named tensors: the graph is walked
//! once per container into `.`-joined names, every view is checked against its storage, and
//! only then are tensors allocated (CPU, contiguous, the file's dtype).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;

use tch::{Kind, Tensor};

use super::value::{Obj, TensorSpec, Value};
use super::{
    CheckpointErrorKind, Kindr, MAX_NAME_BYTES, MAX_TENSORS, MAX_VIEW_EXPANSION,
    NAME_BYTES_PER_PICKLE_BYTE, NAME_SLACK_BYTES, VIEW_SLACK_BYTES, malformed,
};

/// Deepest container nesting accepted when flattening (state dicts nest 1–3 levels).
const MAX_DEPTH: usize = 200;

const STATE_DICT_ENTRIES: [&str; 3] = ["model", "state_dict", "model_state_dict"];

/// Bytes of one storage in the file.
pub(super) struct StorageData<'a> {
    pub(super) bytes: &'a [u8],
    /// The stored data is big-endian and must be byte-swapped.
    pub(super) big_endian: bool,
}

/// A checkpoint's object graph and the bytes of the storages it refers to.
pub(super) struct Loaded<'a> {
    pub(super) root: Value,
    pub(super) arena: Vec<Obj>,
    pub(super) storages: HashMap<Rc<str>, StorageData<'a>>,
    /// Bytes of the pickle that described `root` (bounds the names built from it).
    pub(super) pickle_len: usize,
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
    /// The tensors under `root` (or under its single state-dict entry when `unwrap_state_dict`)
    /// with their `.`-joined names: every name and view is checked, and the total size bounded,
    /// before any tensor is allocated.
    pub(super) fn tensors(
        &self,
        source: &Path,
        unwrap_state_dict: bool,
    ) -> Kindr<Vec<(String, Tensor)>> {
        let mut root = self.root.clone();
        let mut prefix = String::new();
        let holders = self.tensor_holders();
        if unwrap_state_dict && let Some((name, inner)) = self.state_dict_entry(&holders) {
            log::debug!(
                "{}: using the \"{name}\" entry as the state dict",
                source.display()
            );
            root = inner;
        }
        let mut walk = Walk {
            name_budget: (self.pickle_len as u64)
                .saturating_mul(NAME_BYTES_PER_PICKLE_BYTE)
                .saturating_add(NAME_SLACK_BYTES),
            ..Walk::default()
        };
        self.flatten(&root, &mut prefix, 0, &holders, &mut walk)?;
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
        let allowance = self
            .storage_bytes()
            .saturating_mul(MAX_VIEW_EXPANSION)
            .saturating_add(VIEW_SLACK_BYTES);
        let mut total: u64 = 0;
        let mut views = Vec::with_capacity(out.len());
        for (name, spec) in &out {
            let view = self.check_view(name, spec)?;
            total = total.saturating_add(view.out_bytes);
            if total > allowance {
                return malformed(format!(
                    "its tensors (up to \"{name}\") add up to more than {allowance} bytes, over \
                 {MAX_VIEW_EXPANSION} times the {} bytes of data in the file",
                    self.storage_bytes()
                ));
            }
            views.push(view);
        }
        let mut tensors = Vec::with_capacity(out.len());
        for ((name, spec), view) in out.into_iter().zip(&views) {
            let t = self.materialize(&spec, view)?;
            tensors.push((name, t));
        }
        Ok(tensors)
    }

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
pub(super) fn tensor_from_bytes(bytes: &[u8], size: &[i64], kind: Kind) -> Kindr<Tensor> {
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

#[cfg(test)]
mod tests {
    use crate::model::checkpoint::fixtures::{floats, legacy, long_str, short_str, src, tensor_on};
    use crate::model::checkpoint::read_checkpoint_from_bytes;

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
}
