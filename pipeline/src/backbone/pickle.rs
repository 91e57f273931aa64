//! A restricted reader of PyTorch's legacy (pre-zip) checkpoint format, enough for a
//! `state_dict` of plain tensors: four pickles (magic number, protocol, system info, the
//! object), then the storage keys, then each storage's bytes.
//!
//! Nothing in the file is executed: the unpickler knows a closed set of opcodes and of
//! globals (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, the typed storage
//! classes) and refuses anything else with an error that names it.

use std::collections::{BTreeMap, HashMap};

/// The magic number that opens a legacy torch file.
const MAGIC: u128 = 0x1950a86a20f9469cfc6c;
/// The protocol version a legacy torch file records.
const PROTOCOL: i64 = 1001;

pub use vigil_model::onnx::graph::Tensor;

/// What went wrong reading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    /// The bytes end early or a structure is malformed.
    #[error("{0}: the file is cut short or is not a legacy torch checkpoint")]
    Malformed(String),
    /// An opcode this reader does not handle.
    #[error("pickle opcode 0x{0:02x} at byte {1} is not supported by vigil's restricted reader")]
    Opcode(u8, usize),
    /// A global (class or function) outside the allowed set.
    #[error("the checkpoint refers to `{0}.{1}`, which vigil's restricted reader does not allow")]
    Global(String, String),
}

/// A pickled value, as far as a state dict needs.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    /// A storage reference: element type and key.
    Storage(StorageType, String),
    /// A rebuilt tensor view over a storage.
    Tensor {
        storage: Box<Value>,
        offset: usize,
        shape: Vec<usize>,
        stride: Vec<usize>,
    },
    Mark,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StorageType {
    F32,
    F64,
    F16,
    I64,
    I32,
    U8,
    Bool,
}

impl StorageType {
    fn from_name(name: &str) -> Option<StorageType> {
        Some(match name {
            "FloatStorage" => StorageType::F32,
            "DoubleStorage" => StorageType::F64,
            "HalfStorage" => StorageType::F16,
            "LongStorage" => StorageType::I64,
            "IntStorage" => StorageType::I32,
            "ByteStorage" => StorageType::U8,
            "BoolStorage" => StorageType::Bool,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            StorageType::F64 | StorageType::I64 => 8,
            StorageType::F32 | StorageType::I32 => 4,
            StorageType::F16 => 2,
            StorageType::U8 | StorageType::Bool => 1,
        }
    }

    fn read(self, b: &[u8]) -> f32 {
        match self {
            StorageType::F32 => f32::from_le_bytes(b.try_into().expect("4 bytes")),
            StorageType::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
            StorageType::F16 => f16_to_f32(u16::from_le_bytes(b.try_into().expect("2 bytes"))),
            StorageType::I64 => i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
            StorageType::I32 => i32::from_le_bytes(b.try_into().expect("4 bytes")) as f32,
            StorageType::U8 | StorageType::Bool => b[0] as f32,
        }
    }
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: normalise it.
            let shift = f.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | (((f << shift) & 0x3ff) << 13)
        }
        (31, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| PickleError::Malformed(format!("{n} bytes at byte {}", self.pos)))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| PickleError::Malformed("a text line".into()))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
}

fn malformed(what: &str) -> PickleError {
    PickleError::Malformed(what.into())
}

fn pop_mark(stack: &mut Vec<Value>) -> Result<Vec<Value>, PickleError> {
    let at = stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or_else(|| malformed("a MARK"))?;
    let items = stack.split_off(at + 1);
    stack.pop();
    Ok(items)
}

fn pop(stack: &mut Vec<Value>) -> Result<Value, PickleError> {
    stack.pop().ok_or_else(|| malformed("a value on the stack"))
}

/// Unpickles one object starting at `r.pos`; persistent ids become storage references.
fn load(r: &mut Reader<'_>) -> Result<Value, PickleError> {
    let mut stack: Vec<Value> = vec![];
    let mut memo: HashMap<u32, Value> = HashMap::new();
    loop {
        let at = r.pos;
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.take(8)?; // FRAME
            }
            b'.' => return pop(&mut stack), // STOP
            b'(' => stack.push(Value::Mark),
            b')' => stack.push(Value::Tuple(vec![])),
            b']' => stack.push(Value::List(vec![])),
            b'}' => stack.push(Value::Dict(vec![])),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool),
            0x89 => stack.push(Value::Bool),
            b'J' => stack.push(Value::Int(r.u32()? as i32 as i64)),
            b'K' => stack.push(Value::Int(r.u8()? as i64)),
            b'M' => stack.push(Value::Int(r.u16()? as i64)),
            0x8a => {
                // LONG1: a little-endian two's-complement integer of n bytes.
                let n = r.u8()? as usize;
                let bytes = r.take(n)?;
                let mut v: i128 = 0;
                for (i, b) in bytes.iter().enumerate().take(16) {
                    v |= (*b as i128) << (8 * i);
                }
                if n > 0 && n < 16 && bytes[n - 1] & 0x80 != 0 {
                    v -= 1i128 << (8 * n);
                }
                // The magic number does not fit an i64; it is only compared.
                stack.push(if v == MAGIC as i128 { Value::Int(i64::MIN) } else { Value::Int(v as i64) });
            }
            b'G' => {
                r.take(8)?;
                stack.push(Value::Float);
            }
            b'X' => {
                let n = r.u32()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()));
            }
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()));
            }
            b'U' => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()));
            }
            b'T' => {
                let n = r.u32()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()));
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err(malformed("tuple items"));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'q' => {
                let k = r.u8()? as u32;
                memo.insert(k, stack.last().cloned().ok_or_else(|| malformed("a value to memoise"))?);
            }
            b'r' => {
                let k = r.u32()?;
                memo.insert(k, stack.last().cloned().ok_or_else(|| malformed("a value to memoise"))?);
            }
            0x94 => {
                let k = memo.len() as u32;
                memo.insert(k, stack.last().cloned().ok_or_else(|| malformed("a value to memoise"))?);
            }
            b'h' => {
                let k = r.u8()? as u32;
                stack.push(memo.get(&k).cloned().ok_or_else(|| malformed("a memoised value"))?);
            }
            b'j' => {
                let k = r.u32()?;
                stack.push(memo.get(&k).cloned().ok_or_else(|| malformed("a memoised value"))?);
            }
            b'c' => {
                let (module, name) = (r.line()?, r.line()?);
                stack.push(global(module, name)?);
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(global(m, n)?),
                    _ => return Err(malformed("STACK_GLOBAL names")),
                }
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return Err(malformed("a list to append to")),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err(malformed("a list to extend")),
                }
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.push((k, v)),
                    _ => return Err(malformed("a dict to set an item in")),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                    _ => return Err(malformed("a dict to set items in")),
                }
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(persistent(pid)?);
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let f = pop(&mut stack)?;
                stack.push(reduce(f, args)?);
            }
            b'b' => {
                // BUILD: state for an object; tensors and dicts here take none that matters.
                pop(&mut stack)?;
            }
            _ => return Err(PickleError::Opcode(op, at)),
        }
    }
}

fn global(module: String, name: String) -> Result<Value, PickleError> {
    let allowed = matches!(
        (module.as_str(), name.as_str()),
        ("collections", "OrderedDict") | ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor")
    ) || (module == "torch" && StorageType::from_name(&name).is_some());
    if allowed { Ok(Value::Global(module, name)) } else { Err(PickleError::Global(module, name)) }
}

fn ints(v: &Value) -> Result<Vec<usize>, PickleError> {
    match v {
        Value::Tuple(t) | Value::List(t) => t
            .iter()
            .map(|x| match x {
                Value::Int(i) if *i >= 0 => Ok(*i as usize),
                _ => Err(malformed("a size or stride")),
            })
            .collect(),
        _ => Err(malformed("a size or stride tuple")),
    }
}

/// `('storage', torch.FloatStorage, key, location, numel[, view])`.
fn persistent(pid: Value) -> Result<Value, PickleError> {
    let Value::Tuple(items) = pid else { return Err(malformed("a persistent id tuple")) };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(_, class), Value::Str(key), _, Value::Int(_), rest @ ..]
            if tag == "storage" && rest.iter().all(|v| matches!(v, Value::None)) =>
        {
            let ty = StorageType::from_name(class).ok_or_else(|| malformed("a storage type"))?;
            Ok(Value::Storage(ty, key.clone()))
        }
        _ => Err(malformed("a storage reference (views of storages are not supported)")),
    }
}

fn reduce(f: Value, args: Value) -> Result<Value, PickleError> {
    let Value::Global(module, name) = f else { return Err(malformed("a callable")) };
    let Value::Tuple(a) = args else { return Err(malformed("call arguments")) };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Ok(Value::Dict(vec![])),
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => match a.as_slice() {
            [storage @ Value::Storage(..), Value::Int(offset), size, stride, ..] => Ok(Value::Tensor {
                storage: Box::new(storage.clone()),
                offset: *offset as usize,
                shape: ints(size)?,
                stride: ints(stride)?,
            }),
            _ => Err(malformed("tensor rebuild arguments")),
        },
        _ => Err(PickleError::Global(module, name)),
    }
}

/// Reads a legacy torch checkpoint holding a state dict: name → tensor (as f32), in the
/// file's order kept by name.
pub fn read_state_dict(bytes: &[u8]) -> Result<BTreeMap<String, Tensor>, PickleError> {
    let mut r = Reader { data: bytes, pos: 0 };
    match load(&mut r)? {
        Value::Int(i64::MIN) => {}
        _ => return Err(malformed("the legacy torch magic number (a zip-format checkpoint is not supported)")),
    }
    match load(&mut r)? {
        Value::Int(PROTOCOL) => {}
        _ => return Err(malformed("protocol version 1001")),
    }
    let _system = load(&mut r)?;
    let object = load(&mut r)?;
    let keys = match load(&mut r)? {
        Value::List(k) => k,
        _ => return Err(malformed("the list of storage keys")),
    };
    // Each storage: its element count (i64), then its bytes, in the order of `keys`.
    let mut storages: HashMap<String, (StorageType, &[u8])> = HashMap::new();
    let types = storage_types(&object);
    for k in keys {
        let Value::Str(key) = k else { return Err(malformed("a storage key")) };
        let numel = i64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
        let ty = *types.get(&key).ok_or_else(|| malformed("a storage that the object refers to"))?;
        let len = usize::try_from(numel).map_err(|_| malformed("a storage size"))?.saturating_mul(ty.size());
        storages.insert(key, (ty, r.take(len)?));
    }
    let Value::Dict(entries) = object else { return Err(malformed("a state dict (an OrderedDict of tensors)")) };
    let mut out = BTreeMap::new();
    for (k, v) in entries {
        let (Value::Str(name), Value::Tensor { storage, offset, shape, stride }) = (k, v) else {
            return Err(malformed("a state dict entry of a name and a tensor"));
        };
        let Value::Storage(_, key) = *storage else { return Err(malformed("a tensor's storage")) };
        let (ty, raw) = storages[&key];
        let numel: usize = shape.iter().product();
        let mut data = Vec::with_capacity(numel);
        let mut index = vec![0usize; shape.len()];
        for _ in 0..numel {
            let at = offset + index.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
            let b = raw
                .get(at * ty.size()..(at + 1) * ty.size())
                .ok_or_else(|| malformed("a tensor inside its storage"))?;
            data.push(ty.read(b));
            for d in (0..shape.len()).rev() {
                index[d] += 1;
                if index[d] < shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        out.insert(name, Tensor { shape, data });
    }
    Ok(out)
}

fn storage_types(v: &Value) -> HashMap<String, StorageType> {
    let mut out = HashMap::new();
    fn walk(v: &Value, out: &mut HashMap<String, StorageType>) {
        match v {
            Value::Storage(ty, key) => {
                out.insert(key.clone(), *ty);
            }
            Value::Tensor { storage, .. } => walk(storage, out),
            Value::Tuple(items) | Value::List(items) => items.iter().for_each(|i| walk(i, out)),
            Value::Dict(entries) => entries.iter().for_each(|(k, v)| {
                walk(k, out);
                walk(v, out);
            }),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-assembled legacy file: one 2x2 float tensor `w` (transposed view) and a long
    /// scalar `n`, in an OrderedDict.
    fn tiny_checkpoint() -> Vec<u8> {
        let mut b = vec![];
        // Magic number as LONG1, protocol, system info.
        b.extend([0x80, 2, 0x8a, 10]);
        b.extend(&MAGIC.to_le_bytes()[..10]);
        b.push(b'.');
        b.extend([0x80, 2, b'M', 0xe9, 0x03, b'.']);
        b.extend([0x80, 2, b'}', b'.']);
        // The object.
        b.extend([0x80, 2]);
        b.extend(b"ccollections\nOrderedDict\n");
        b.extend([b')', b'R', b'q', 0, b'(']);
        for (name, storage, key, numel, shape, stride) in
            [("w", "FloatStorage", "k1", 4u8, [2u8, 2], [1u8, 2]), ("n", "LongStorage", "k2", 1, [0, 0], [0, 0])]
        {
            b.push(b'X');
            b.extend((name.len() as u32).to_le_bytes());
            b.extend(name.as_bytes());
            b.extend(b"ctorch._utils\n_rebuild_tensor_v2\n");
            b.push(b'(');
            // Persistent id tuple.
            b.push(b'(');
            b.push(b'X');
            b.extend(7u32.to_le_bytes());
            b.extend(b"storage");
            b.extend(format!("ctorch\n{storage}\n").as_bytes());
            b.push(b'X');
            b.extend(2u32.to_le_bytes());
            b.extend(key.as_bytes());
            b.push(b'X');
            b.extend(3u32.to_le_bytes());
            b.extend(b"cpu");
            b.extend([b'K', numel, b'N', b't', b'Q']);
            b.extend([b'K', 0]);
            if name == "w" {
                b.extend([b'K', shape[0], b'K', shape[1], 0x86, b'K', stride[0], b'K', stride[1], 0x86]);
            } else {
                b.extend([b')', b')']);
            }
            b.extend([0x89, b')', b't', b'R']);
        }
        b.extend([b'u', b'.']);
        // Storage keys, then storages.
        b.extend([0x80, 2, b']', b'(']);
        for key in ["k1", "k2"] {
            b.push(b'X');
            b.extend(2u32.to_le_bytes());
            b.extend(key.as_bytes());
        }
        b.extend([b'e', b'.']);
        b.extend(4i64.to_le_bytes());
        for v in [1f32, 2.0, 3.0, 4.0] {
            b.extend(v.to_le_bytes());
        }
        b.extend(1i64.to_le_bytes());
        b.extend(7i64.to_le_bytes());
        b
    }

    #[test]
    fn reads_tensors_through_their_strides() {
        let sd = read_state_dict(&tiny_checkpoint()).unwrap();
        // Stride (1, 2) over [1, 2, 3, 4] is the transpose: [[1, 3], [2, 4]].
        assert_eq!(sd["w"], Tensor { shape: vec![2, 2], data: vec![1.0, 3.0, 2.0, 4.0] });
        assert_eq!(sd["n"], Tensor { shape: vec![], data: vec![7.0] });
    }

    #[test]
    fn refuses_other_globals_and_cut_files() {
        let mut evil = tiny_checkpoint();
        let at = evil.windows(11).position(|w| w == b"collections").unwrap();
        evil.splice(at..at + 11, b"os\nsystem\n\n".iter().copied());
        assert!(read_state_dict(&evil).is_err());
        let full = tiny_checkpoint();
        let err = read_state_dict(&full[..full.len() - 3]).unwrap_err();
        assert!(err.to_string().contains("cut short"), "{err}");
    }

    #[test]
    fn half_floats_convert() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
    }
}
