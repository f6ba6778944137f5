//! What a torch zip checkpoint's `data.pkl` says of each tensor: its storage, offset, shape and
//! strides, so that every tensor can be checked against the storage entry it reads before
//! burn-store's reader runs (that reader pads a short storage with zeros, reads a missing one as
//! zeros and ignores strides, so a damaged file or a strided view would load silently wrong).
//!
//! A small pickle machine runs the opcodes `torch.save` writes (protocols 2–5) and records every
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)` call; storages are the
//! persistent ids `('storage', <type>, <key>, <location>, <numel>)`. Anything else is kept as an
//! opaque value. A pickle it cannot follow (an opcode it does not know, an ill-formed stack, or
//! more work than [`BUDGET`]) gives `None`: the reader then judges the file as before.

use std::collections::HashMap;
use std::rc::Rc;

/// A tensor as the pickle describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredTensor {
    /// Where it sits in the pickled object (`state_dict.blocks.0.norm1.weight`), or `None` when
    /// it is reachable only through values the machine does not follow.
    pub name: Option<String>,
    /// The storage's key: the entry `<archive>/data/<key>` holds its bytes.
    pub storage: String,
    /// The storage's class name (`FloatStorage`, `HalfStorage`, …).
    pub storage_type: String,
    /// Elements the storage holds (the persistent id's `numel`).
    pub storage_numel: u64,
    /// First element of the tensor in its storage.
    pub offset: u64,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// Strides, in elements.
    pub stride: Vec<u64>,
}

impl StoredTensor {
    /// Bytes per element of the storage type, `None` for a type vapt does not know.
    pub fn element_size(&self) -> Option<u64> {
        Some(match self.storage_type.as_str() {
            "DoubleStorage" | "LongStorage" => 8,
            "FloatStorage" | "IntStorage" => 4,
            "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
            "ByteStorage" | "CharStorage" | "BoolStorage" => 1,
            _ => return None,
        })
    }

    /// Whether the strides are those of a row-major (contiguous) tensor of its shape; a
    /// dimension of size 1 may carry any stride.
    pub fn is_contiguous(&self) -> bool {
        let mut want = 1u64;
        for (&n, &s) in self.shape.iter().zip(&self.stride).rev() {
            if n != 1 && s != want {
                return self.shape.contains(&0);
            }
            want = want.saturating_mul(n);
        }
        self.shape.len() == self.stride.len()
    }

    /// One past the last storage element the tensor reads (`offset` + its element count, as
    /// a contiguous tensor; 0 for an empty tensor), `None` on overflow.
    pub fn end(&self) -> Option<u64> {
        match self.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))? {
            0 => Some(0),
            n => n.checked_add(self.offset),
        }
    }
}

/// Work (values built, copied or visited) after which the machine gives up: far above what a
/// state dict of thousands of tensors needs, far below what a crafted pickle could demand.
const BUDGET: u64 = 20_000_000;
/// Values visited while naming tensors; a tensor not reached within it stays unnamed.
const NAMING_BUDGET: u64 = 1_000_000;

#[derive(Debug, Clone)]
enum Value {
    Mark,
    Opaque,
    Int(i64),
    Str(Rc<str>),
    Global(Rc<str>),
    PersId(Rc<Value>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<Vec<Value>>),
    Dict(Rc<Vec<(Value, Value)>>),
    Tensor(usize),
}

struct Machine<'a> {
    bytes: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    memo: HashMap<u64, Value>,
    tensors: Vec<StoredTensor>,
    work: u64,
}

/// Every tensor the pickle `bytes` rebuilds, named by where it sits; `None` when the machine
/// cannot follow the pickle.
pub(crate) fn stored_tensors(bytes: &[u8]) -> Option<Vec<StoredTensor>> {
    let mut m = Machine {
        bytes,
        at: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        tensors: Vec::new(),
        work: 0,
    };
    let root = m.run()?;
    let mut budget = NAMING_BUDGET;
    m.name(&root, &mut String::new(), &mut budget);
    Some(m.tensors)
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let out = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }

    fn uint(&mut self, n: usize) -> Option<u64> {
        let raw = self.take(n)?;
        Some(raw.iter().rev().fold(0u64, |v, &b| (v << 8) | b as u64))
    }

    fn line(&mut self) -> Option<String> {
        let rest = self.bytes.get(self.at..)?;
        let end = rest.iter().position(|&b| b == b'\n')?;
        let text = std::str::from_utf8(&rest[..end]).ok()?.to_string();
        self.at += end + 1;
        Some(text)
    }

    fn text(&mut self, n: u64) -> Option<Value> {
        let n = usize::try_from(n).ok()?;
        let raw = self.take(n)?;
        Some(Value::Str(Rc::from(std::str::from_utf8(raw).ok()?)))
    }

    fn pop(&mut self) -> Option<Value> {
        match self.stack.pop()? {
            Value::Mark => None,
            v => Some(v),
        }
    }

    /// The values above the topmost mark, the mark removed.
    fn pop_mark(&mut self) -> Option<Vec<Value>> {
        let mark = self.stack.iter().rposition(|v| matches!(v, Value::Mark))?;
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        self.spend(items.len())?;
        Some(items)
    }

    fn spend(&mut self, n: usize) -> Option<()> {
        self.work += n as u64 + 1;
        (self.work <= BUDGET).then_some(())
    }

    fn top(&mut self) -> Option<&mut Value> {
        self.stack.last_mut().filter(|v| !matches!(v, Value::Mark))
    }

    fn extend_list(&mut self, items: Vec<Value>) -> Option<()> {
        let len = match self.top()? {
            Value::List(l) => {
                let l = Rc::make_mut(l);
                l.extend(items);
                l.len()
            }
            Value::Opaque => 0,
            _ => return None,
        };
        self.spend(len)
    }

    fn extend_dict(&mut self, items: Vec<Value>) -> Option<()> {
        if !items.len().is_multiple_of(2) {
            return None;
        }
        let len = match self.top()? {
            Value::Dict(d) => {
                let d = Rc::make_mut(d);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
                d.len()
            }
            Value::Opaque => 0,
            _ => return None,
        };
        self.spend(len)
    }

    fn run(&mut self) -> Option<Value> {
        loop {
            self.spend(0)?;
            let op = *self.take(1)?.first()?;
            let value = match op {
                b'.' => return self.pop(),
                0x80 => {
                    self.take(1)?;
                    continue;
                }
                0x95 => {
                    self.take(8)?;
                    continue;
                }
                b'(' => Value::Mark,
                b'}' => Value::Dict(Rc::default()),
                b']' => Value::List(Rc::default()),
                b')' => Value::Tuple(Rc::default()),
                b'N' | 0x88 | 0x89 | b'G' => {
                    if op == b'G' {
                        self.take(8)?;
                    }
                    Value::Opaque
                }
                b'K' => Value::Int(self.uint(1)? as i64),
                b'M' => Value::Int(self.uint(2)? as i64),
                b'J' => Value::Int(self.uint(4)? as u32 as i32 as i64),
                0x8a => {
                    let n = self.uint(1)? as usize;
                    let raw = self.take(n)?;
                    if n > 8 {
                        Value::Opaque
                    } else {
                        let v = raw.iter().rev().fold(0u64, |v, &b| (v << 8) | b as u64);
                        let shift = 64 - 8 * n as u32;
                        Value::Int(if n == 0 { 0 } else { ((v << shift) as i64) >> shift })
                    }
                }
                b'X' => {
                    let n = self.uint(4)?;
                    self.text(n)?
                }
                0x8c => {
                    let n = self.uint(1)?;
                    self.text(n)?
                }
                0x8d => {
                    let n = self.uint(8)?;
                    self.text(n)?
                }
                b'C' | b'B' | 0x8e => {
                    let width = match op {
                        b'C' => 1,
                        b'B' => 4,
                        _ => 8,
                    };
                    let n = usize::try_from(self.uint(width)?).ok()?;
                    self.take(n)?;
                    Value::Opaque
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    Value::Global(Rc::from(format!("{module}.{name}")))
                }
                0x93 => {
                    let (Value::Str(name), Value::Str(module)) = (self.pop()?, self.pop()?) else {
                        return None;
                    };
                    Value::Global(Rc::from(format!("{module}.{name}")))
                }
                b'q' | b'r' | 0x94 => {
                    let key = match op {
                        b'q' => self.uint(1)?,
                        b'r' => self.uint(4)?,
                        _ => self.memo.len() as u64,
                    };
                    let top = self.top()?.clone();
                    self.memo.insert(key, top);
                    continue;
                }
                b'h' | b'j' => {
                    let key = self.uint(if op == b'h' { 1 } else { 4 })?;
                    self.memo.get(&key)?.clone()
                }
                b'Q' => Value::PersId(Rc::new(self.pop()?)),
                b't' => Value::Tuple(Rc::new(self.pop_mark()?)),
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let at = self.stack.len().checked_sub(n)?;
                    let items = self.stack.split_off(at);
                    if items.iter().any(|v| matches!(v, Value::Mark)) {
                        return None;
                    }
                    Value::Tuple(Rc::new(items))
                }
                b'l' => Value::List(Rc::new(self.pop_mark()?)),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(Rc::default()));
                    self.extend_dict(items)?;
                    continue;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_list(vec![v])?;
                    continue;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                    continue;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_dict(vec![k, v])?;
                    continue;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_dict(items)?;
                    continue;
                }
                b'b' => {
                    self.pop()?;
                    self.top()?;
                    continue;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.reduce(callable, args)?
                }
                0x81 => {
                    self.pop()?;
                    self.pop()?;
                    Value::Opaque
                }
                0x92 => {
                    self.pop()?;
                    self.pop()?;
                    self.pop()?;
                    Value::Opaque
                }
                b'0' => {
                    self.pop()?;
                    continue;
                }
                b'1' => {
                    self.pop_mark()?;
                    continue;
                }
                b'2' => self.top()?.clone(),
                // Sets: kept opaque, their items dropped.
                0x8f => Value::Opaque,
                0x90 => {
                    self.pop_mark()?;
                    continue;
                }
                0x91 => {
                    self.pop_mark()?;
                    Value::Opaque
                }
                _ => return None,
            };
            self.stack.push(value);
        }
    }

    fn reduce(&mut self, callable: Value, args: Value) -> Option<Value> {
        let Value::Global(name) = callable else {
            return Some(Value::Opaque);
        };
        let Value::Tuple(args) = args else {
            return Some(Value::Opaque);
        };
        Some(match name.as_ref() {
            "collections.OrderedDict" => Value::Dict(Rc::default()),
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
                args.first().cloned().unwrap_or(Value::Opaque)
            }
            "torch._utils._rebuild_tensor" | "torch._utils._rebuild_tensor_v2" => match self.tensor(&args) {
                Some(t) => {
                    self.tensors.push(t);
                    Value::Tensor(self.tensors.len() - 1)
                }
                None => Value::Opaque,
            },
            _ => Value::Opaque,
        })
    }

    /// `(storage, offset, size, stride, …)` with the storage a persistent id.
    fn tensor(&self, args: &[Value]) -> Option<StoredTensor> {
        let Value::PersId(pid) = args.first()? else {
            return None;
        };
        let Value::Tuple(pid) = pid.as_ref() else {
            return None;
        };
        let (Value::Global(kind), Value::Str(key), Value::Int(numel)) =
            (pid.get(1)?, pid.get(2)?, pid.get(4)?)
        else {
            return None;
        };
        let ints = |v: &Value| -> Option<Vec<u64>> {
            let Value::Tuple(items) = v else { return None };
            items
                .iter()
                .map(|i| match i {
                    Value::Int(n) => u64::try_from(*n).ok(),
                    _ => None,
                })
                .collect()
        };
        let Value::Int(offset) = args.get(1)? else {
            return None;
        };
        Some(StoredTensor {
            name: None,
            storage: key.to_string(),
            storage_type: kind.rsplit('.').next().unwrap_or_default().to_string(),
            storage_numel: u64::try_from(*numel).ok()?,
            offset: u64::try_from(*offset).ok()?,
            shape: ints(args.get(2)?)?,
            stride: ints(args.get(3)?)?,
        })
    }

    /// Names every tensor reachable from `v` by its dotted path (the first path found).
    fn name(&mut self, v: &Value, path: &mut String, budget: &mut u64) {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let mut child = |m: &mut Self, key: &str, v: &Value, budget: &mut u64| {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(key);
            m.name(v, path, budget);
            path.truncate(len);
        };
        match v {
            Value::Tensor(i) => {
                if let Some(t) = self.tensors.get_mut(*i) {
                    t.name.get_or_insert_with(|| path.clone());
                }
            }
            Value::Dict(items) => {
                for (k, v) in items.iter() {
                    let key = match k {
                        Value::Str(s) => s.to_string(),
                        Value::Int(n) => n.to_string(),
                        _ => continue,
                    };
                    child(self, &key, v, budget);
                }
            }
            Value::List(items) | Value::Tuple(items) => {
                for (i, v) in items.iter().enumerate() {
                    child(self, &i.to_string(), v, budget);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `torch.save({"w": t}, f)` for `t = torch.zeros(2, 3)[:, 1:]` (a strided view) and
    /// `b = torch.zeros(4)`, as protocol 2 writes it.
    fn pickle() -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        let s = |p: &mut Vec<u8>, t: &str| {
            p.push(b'X');
            p.extend_from_slice(&(t.len() as u32).to_le_bytes());
            p.extend_from_slice(t.as_bytes());
        };
        for (key, storage, numel, offset, shape, stride) in [
            ("w", "0", 6u8, 1u8, [2u8, 2], [3u8, 1]),
            ("b", "1", 4, 0, [4, 1], [1, 1]),
        ] {
            s(&mut p, key);
            p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\nq\x01(");
            p.push(b'(');
            s(&mut p, "storage");
            p.extend_from_slice(b"ctorch\nFloatStorage\nq\x02");
            s(&mut p, storage);
            s(&mut p, "cpu");
            p.extend_from_slice(&[b'K', numel, b't', b'Q', b'K', offset]);
            p.extend_from_slice(&[b'K', shape[0], b'K', shape[1], 0x86]);
            p.extend_from_slice(&[b'K', stride[0], b'K', stride[1], 0x86]);
            p.extend_from_slice(b"\x89ccollections\nOrderedDict\n)Rtq\x03R");
        }
        p.extend_from_slice(b"u.");
        p
    }

    #[test]
    fn tensors_are_read_with_their_storage_offset_and_strides() {
        let ts = stored_tensors(&pickle()).expect("followed");
        assert_eq!(ts.len(), 2);
        assert_eq!(ts[0].name.as_deref(), Some("w"));
        assert_eq!(
            (ts[0].storage.as_str(), ts[0].storage_numel, ts[0].offset),
            ("0", 6, 1)
        );
        assert_eq!(
            (ts[0].shape.clone(), ts[0].stride.clone()),
            (vec![2, 2], vec![3, 1])
        );
        assert!(!ts[0].is_contiguous());
        assert_eq!(ts[0].end(), Some(5));
        assert_eq!(ts[1].name.as_deref(), Some("b"));
        assert!(ts[1].is_contiguous(), "a size-1 dimension may carry any stride");
        assert_eq!(ts[1].element_size(), Some(4));
    }

    #[test]
    fn a_pickle_it_cannot_follow_gives_none() {
        let mut p = pickle();
        p.truncate(p.len() - 1);
        assert_eq!(stored_tensors(&p), None, "no STOP");
        assert_eq!(stored_tensors(&[0x80, 2, 0xff, b'.']), None, "unknown opcode");
        assert_eq!(stored_tensors(&[0x80, 2, b'a', b'.']), None, "empty stack");
        // A list that appends itself 64 times would hold 2^64 items if copied: bounded work.
        let mut bomb = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..64 {
            bomb.extend_from_slice(&[b'h', 0, b'h', 0, b'a', b'q', 0]);
        }
        bomb.push(b'.');
        assert!(stored_tensors(&bomb).is_some_and(|t| t.is_empty()));
    }
}
