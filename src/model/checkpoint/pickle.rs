//! The restricted unpickler: a pickle machine (protocols 0–5) that only builds values (see
//! [`super::value`]) and resolves globals through the allow-list in [`super::globals`]. Every
//! length is checked against the input, and copying values or hashing keys is charged to a
//! budget proportional to the pickle's size ([`COPY_BUDGET_PER_BYTE`]).

use std::collections::HashMap;
use std::rc::Rc;

mod globals;

use super::value::{Obj, StorageRef, Value, dict_key};
use super::{
    COPY_BUDGET_BASE, COPY_BUDGET_PER_BYTE, CheckpointErrorKind, Kindr, malformed, truncated,
};
use globals::lookup_global;

pub(super) struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    pub(super) arena: &'a mut Vec<Obj>,
    /// Storages referenced via persistent ids, by key.
    pub(super) storages: &'a mut HashMap<Rc<str>, StorageRef>,
    /// Values that may still be copied (see [`COPY_BUDGET_PER_BYTE`]).
    copy_budget: u64,
}

/// Bytes of a dict key or storage key hashed per unit of the copy budget: a memoised key of a
/// megabyte used as a key a million times would otherwise hash a terabyte.
pub(super) const HASHED_BYTES_PER_COPY: usize = 64;

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

    /// `n` bytes announced by a length argument, checked against what is left first.
    fn counted(&mut self, n: u64, what: &str) -> Kindr<&'a [u8]> {
        let n = self.len_arg(n, what)?;
        self.take(n, what)
    }

    /// A signed 4-byte length argument of opcode `opcode` (negative is malformed).
    fn i32_len(&mut self, opcode: &str) -> Kindr<u64> {
        let n = i32::from_le_bytes(self.arr()?);
        if n < 0 {
            return malformed(format!("negative {opcode} length"));
        }
        Ok(n as u64)
    }

    /// A text-line argument parsed as `T` (surrounding white space ignored); "bad {what}"
    /// when it does not parse.
    fn line_arg<T: std::str::FromStr>(&mut self, what: &str) -> Kindr<T> {
        self.line()?
            .trim()
            .parse()
            .map_err(|_| CheckpointErrorKind::Malformed(format!("bad {what}")))
    }

    /// An error unless the stack holds a value above the innermost MARK.
    fn above_mark(&self) -> Kindr<()> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return malformed(format!("pickle stack underflow at byte {}", self.pos));
        }
        Ok(())
    }

    fn pop(&mut self) -> Kindr<Value> {
        self.above_mark()?;
        self.stack
            .pop()
            .ok_or_else(|| CheckpointErrorKind::Malformed("stack underflow".into()))
    }

    fn top(&self) -> Kindr<&Value> {
        self.above_mark()?;
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
    pub(super) fn charge(&mut self, n: usize) -> Kindr<()> {
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

    pub(super) fn alloc(&mut self, obj: Obj) -> Value {
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

    pub(super) fn set_items(&mut self, target: &Value, items: Vec<Value>) -> Kindr<()> {
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
                    let i = self.line_arg("PUT index")?;
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
                    let i = self.line_arg("GET index")?;
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
                    let n = self.i32_len("LONG4")?;
                    let v = Self::int_from_le(self.counted(n, "a LONG4 integer")?)?;
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
                    let v = self.line_arg("text float")?;
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
                    let v = Self::str_value(self.counted(u64::from(n), "a string")?)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.arr()?);
                    let v = Self::str_value(self.counted(n, "a string")?)?;
                    self.stack.push(v);
                }
                b'U' => {
                    let n = self.u8()?;
                    let b = self.take(usize::from(n), "a string")?;
                    self.stack.push(Self::py2_str_value(b));
                }
                b'T' => {
                    let n = self.i32_len("BINSTRING")?;
                    let b = self.counted(n, "a string")?;
                    self.stack.push(Self::py2_str_value(b));
                }
                b'C' => {
                    let n = self.u8()?;
                    let b = self.take(usize::from(n), "bytes")?;
                    self.stack.push(Value::Bytes(Rc::from(b)));
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.arr()?);
                    let b = self.counted(u64::from(n), "bytes")?;
                    self.stack.push(Value::Bytes(Rc::from(b)));
                }
                0x8e | 0x96 => {
                    let n = u64::from_le_bytes(self.arr()?);
                    let b = self.counted(n, "bytes")?;
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

/// Unpickles one pickle from the start of `data` into `arena`, recording the storages its
/// persistent ids name in `storages`; returns the value and the bytes it used.
pub(super) fn unpickle(
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

#[cfg(test)]
mod tests {
    use crate::model::checkpoint::fixtures::{legacy, long_str, src};
    use crate::model::checkpoint::read_checkpoint_from_bytes;

    /// `pickle(many)` runs out of the copy budget ("more work"); `pickle(few)` reads (empty).
    fn assert_work_is_bounded(pickle: impl Fn(usize) -> Vec<u8>, many: usize, few: usize) {
        let b = pickle(many);
        let err = read_checkpoint_from_bytes(&legacy(&b, &[], &[]), src()).unwrap_err();
        assert!(err.to_string().contains("more work"), "{err}");
        let b = pickle(few);
        assert!(
            read_checkpoint_from_bytes(&legacy(&b, &[], &[]), src())
                .unwrap()
                .is_empty()
        );
    }

    /// One memoised 64 KiB key set 20,000 times: hashing it each time is 1.3 GB of work from
    /// 150 KB of pickle. Key hashing is charged to the copy budget.
    #[test]
    fn hashing_a_memoised_long_key_again_and_again_is_bounded() {
        // A dict whose memoised 64 KiB key is set again `times` times.
        let pickle = |times: usize| {
            let mut b = b"\x80\x02}".to_vec();
            b.extend(long_str(&"k".repeat(1 << 16)));
            b.extend_from_slice(b"q\x00Ns");
            for _ in 0..times {
                b.extend_from_slice(b"h\x00Ns");
            }
            b.push(b'.');
            b
        };
        // A handful of long keys is fine.
        assert_work_is_bounded(pickle, 20_000, 10);
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

    /// REDUCE of `torch.Size` on the same memoised 1000-item list, 200 times: each call copies
    /// the list, so the work grows with the square of the file size. The copy budget stops it.
    #[test]
    fn repeated_copies_of_a_memoised_list_are_bounded() {
        // `torch.Size` reduced `times` times on the memoised list.
        let pickle = |times: usize| {
            let mut b = b"\x80\x02]q\x00(".to_vec();
            b.extend(std::iter::repeat_n(&b"K\x01"[..], 1000).flatten());
            b.extend_from_slice(b"ectorch\nSize\nq\x010");
            for _ in 0..times {
                b.extend_from_slice(b"h\x01h\x00\x85R0");
            }
            b.extend_from_slice(b"N.");
            b
        };
        // Ten calls fit the budget.
        assert_work_is_bounded(pickle, 200, 10);
    }
}
