//! The allow-list of Python globals a checkpoint's pickle may name (`OrderedDict`, `set`,
//! `torch.Size`, the tensor rebuild functions, the storage classes and dtypes, and
//! `argparse.Namespace` as an inert dict) and what
//! REDUCE / NEWOBJ and persistent ids build from them: plain containers, storage references
//! and tensor views. Nothing is ever executed; any other global is an error that names it.

use std::collections::HashMap;
use std::rc::Rc;

use tch::Kind;

use super::{HASHED_BYTES_PER_COPY, Unpickler};
use crate::model::checkpoint::value::{Dtype, Global, Obj, StorageRef, TensorSpec, Value};
use crate::model::checkpoint::{
    CheckpointErrorKind, Kindr, MAX_DIMS, MAX_STORAGE_KEY_BYTES, malformed,
};

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

pub(super) fn lookup_global(module: &str, name: &str) -> Kindr<Global> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("builtins" | "__builtin__", "set") => Some(Global::Set),
        ("builtins" | "__builtin__", "frozenset") => Some(Global::FrozenSet),
        ("torch", "Size") => Some(Global::TorchSize),
        ("argparse", "Namespace") => Some(Global::Namespace),
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

/// Building values from allow-listed globals: REDUCE / NEWOBJ arguments and persistent ids.
impl Unpickler<'_> {
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

    /// A copy of the items of the sequence in `args[0]` (none without arguments), charged to
    /// the copy budget; "`what` built from a non-sequence" otherwise.
    fn items_of_first(&mut self, args: &[Value], what: &str) -> Kindr<Vec<Value>> {
        let items = match args.first() {
            Some(v) => match self.seq_items(v) {
                Some(items) => items.to_vec(),
                None => return malformed(format!("{what} built from a non-sequence")),
            },
            None => Vec::new(),
        };
        self.charge(items.len())?;
        Ok(items)
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
    pub(super) fn call(&mut self, callable: Value, args: Value) -> Kindr<Value> {
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
                let items = self.items_of_first(&args, "set")?;
                Ok(self.alloc(Obj::Set(items)))
            }
            Global::TorchSize => {
                let items = self.items_of_first(&args, "torch.Size")?;
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
            // Nothing of the Namespace is kept: BUILD's state (its attributes) is dropped.
            Global::Namespace => Ok(self.alloc(Obj::Dict {
                entries: Vec::new(),
                index: HashMap::new(),
            })),
        }
    }

    /// BINPERSID: a `("storage", type, key, location, numel, …)` persistent id.
    pub(super) fn persistent_load(&mut self, pid: Value) -> Kindr<Value> {
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
}

#[cfg(test)]
mod tests {
    use super::lookup_global;
    use crate::model::checkpoint::fixtures::{
        floats, legacy, long_str, short_str, src, tensor_dict, tensor_on,
    };
    use crate::model::checkpoint::{MAX_STORAGE_KEY_BYTES, read_checkpoint_from_bytes};

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
}
