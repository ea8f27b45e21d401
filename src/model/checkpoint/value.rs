//! The object graph a restricted unpickle builds: plain Python values, and an arena of
//! containers, storage references and tensor views that values point into.

use std::collections::HashMap;
use std::rc::Rc;

use tch::Kind;

/// A pickle value. Composite objects live in an arena and are referenced by index, so values
/// are cheap to clone, cycles are harmless and dropping never recurses.
#[derive(Clone, Debug)]
pub(super) enum Value {
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
pub(super) enum DictKey {
    Str(Rc<str>),
    Int(i128),
    Bool(bool),
    None,
}

#[derive(Debug)]
pub(super) enum Obj {
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

/// A reference to a storage, from a pickle persistent id.
#[derive(Clone, Debug)]
pub(super) struct StorageRef {
    pub(super) key: Rc<str>,
    /// Element type of the storage class (`None`: untyped bytes).
    pub(super) dtype: Option<Dtype>,
    /// Number of storage elements recorded in the persistent id.
    pub(super) numel: u64,
}

/// A tensor before its data is read: storage + view geometry.
#[derive(Clone, Debug)]
pub(super) struct TensorSpec {
    pub(super) storage: StorageRef,
    pub(super) dtype: Dtype,
    pub(super) offset: i64,
    pub(super) size: Vec<i64>,
    pub(super) stride: Vec<i64>,
}

/// The key under which a dict indexes `v` (`None`: not hashable here, never deduplicated).
pub(super) fn dict_key(v: &Value) -> Option<DictKey> {
    match v {
        Value::Str(s) => Some(DictKey::Str(s.clone())),
        Value::Int(i) => Some(DictKey::Int(*i)),
        Value::Bool(b) => Some(DictKey::Bool(*b)),
        Value::None => Some(DictKey::None),
        _ => None,
    }
}

/// Globals the unpickler accepts. Nothing is ever called; REDUCE on these builds plain values.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Global {
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
    /// `argparse.Namespace` (torchvision's reference scripts save their arguments): built as an
    /// empty dict whose state is ignored, so the tensors beside it still load.
    Namespace,
}

/// A tensor element type as named by PyTorch. Only some map to a `tch::Kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Dtype {
    pub(super) name: &'static str,
    pub(super) kind: Option<Kind>,
    pub(super) size: usize,
}
