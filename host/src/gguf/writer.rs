//! A small GGUF writer, for tests that synthesize files (valid ones, tiny models, and broken
//! ones: the `raw_*` methods and header overrides write what they are given, unchecked).
//!
//! ```
//! use llmhost::gguf::{writer::GgufWriter, GgufFile, Value};
//! use plugin_api::GgmlType;
//! let bytes = GgufWriter::new(3)
//!     .kv("general.architecture", Value::String("llama".into()))
//!     .tensor("w", GgmlType::F32, &[2, 3], vec![0u8; 24])
//!     .to_bytes();
//! let f = GgufFile::from_bytes(bytes, "test.gguf").unwrap();
//! assert_eq!(f.tensor("w").unwrap().dims, [2, 3]);
//! ```

use super::reader::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use super::value::{Array, Value};
use plugin_api::GgmlType;
use std::path::Path;

/// A tensor exactly as it will be written: any name bytes, dimension count, type number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTensor {
    pub name: Vec<u8>,
    /// Written as the dimension count; `dims` are written as they are regardless.
    pub n_dims: u32,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Offset relative to the data section; `None` places the data after the previous
    /// tensor's, aligned. Data at an explicit offset is written there (give no data to point
    /// a tensor far outside the file).
    pub offset: Option<u64>,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone)]
struct RawKv {
    key: Vec<u8>,
    value_type: u32,
    payload: Vec<u8>,
    /// The value, when it was given as one (for `general.alignment`).
    value: Option<Value>,
}

/// Builds a GGUF file in memory. Chain the calls, then [`GgufWriter::to_bytes`].
#[derive(Debug, Clone)]
pub struct GgufWriter {
    magic: [u8; 4],
    version: u32,
    tensor_count: Option<u64>,
    kv_count: Option<u64>,
    kvs: Vec<RawKv>,
    tensors: Vec<RawTensor>,
}

/// Where each part of a written file lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Byte where each metadata entry (its key length) starts.
    pub kv_offsets: Vec<u64>,
    /// Byte where each tensor info (its name length) starts.
    pub tensor_info_offsets: Vec<u64>,
    /// Byte where the data section starts.
    pub data_offset: u64,
    /// Absolute byte of each tensor's data.
    pub tensor_data_offsets: Vec<u64>,
}

impl GgufWriter {
    /// An empty file of GGUF `version` (any number: 1 and 4 make unsupported files).
    pub fn new(version: u32) -> GgufWriter {
        GgufWriter {
            magic: GGUF_MAGIC,
            version,
            tensor_count: None,
            kv_count: None,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Adds a metadata entry. `general.alignment` as a `Value::U32` power of two also sets
    /// the alignment the writer lays the data out with.
    pub fn kv(mut self, key: &str, value: Value) -> GgufWriter {
        let mut payload = Vec::new();
        encode_value(&mut payload, &value);
        self.kvs.push(RawKv {
            key: key.as_bytes().to_vec(),
            value_type: value.value_type().to_u32(),
            payload,
            value: Some(value),
        });
        self
    }

    /// Adds a metadata entry from raw parts: key bytes, type number, encoded value.
    pub fn raw_kv(mut self, key: &[u8], value_type: u32, payload: &[u8]) -> GgufWriter {
        self.kvs.push(RawKv {
            key: key.to_vec(),
            value_type,
            payload: payload.to_vec(),
            value: None,
        });
        self
    }

    /// Adds a tensor, its data placed after the previous one's at the next aligned offset.
    /// `data` is written as given (its length is not checked against the shape).
    pub fn tensor(
        self,
        name: &str,
        dtype: GgmlType,
        dims: &[u64],
        data: impl Into<Vec<u8>>,
    ) -> GgufWriter {
        self.raw_tensor(RawTensor {
            name: name.as_bytes().to_vec(),
            n_dims: dims.len() as u32,
            dims: dims.to_vec(),
            ggml_type: dtype as u32,
            offset: None,
            data: data.into(),
        })
    }

    pub fn raw_tensor(mut self, t: RawTensor) -> GgufWriter {
        self.tensors.push(t);
        self
    }

    /// Writes these four bytes instead of "GGUF".
    pub fn magic(mut self, magic: [u8; 4]) -> GgufWriter {
        self.magic = magic;
        self
    }

    /// Writes `n` as the tensor count instead of the number of tensors added.
    pub fn tensor_count(mut self, n: u64) -> GgufWriter {
        self.tensor_count = Some(n);
        self
    }

    /// Writes `n` as the metadata count instead of the number of entries added.
    pub fn kv_count(mut self, n: u64) -> GgufWriter {
        self.kv_count = Some(n);
        self
    }

    /// The alignment the data is laid out with: the last `general.alignment` given as a u32
    /// power of two, else 32.
    pub fn alignment(&self) -> u64 {
        self.kvs
            .iter()
            .rev()
            .filter(|kv| kv.key == ALIGNMENT_KEY.as_bytes())
            .find_map(|kv| match kv.value {
                Some(Value::U32(a)) if a.is_power_of_two() => Some(u64::from(a)),
                _ => None,
            })
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.build().0
    }

    /// The file's bytes and where its parts lie.
    pub fn to_bytes_with_layout(&self) -> (Vec<u8>, Layout) {
        self.build()
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_bytes())
    }

    fn build(&self) -> (Vec<u8>, Layout) {
        let align = self.alignment();
        let pad = |n: u64| n.div_ceil(align) * align;

        // Relative data offsets.
        let mut cursor = 0u64;
        let mut rel = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let off = t.offset.unwrap_or_else(|| pad(cursor));
            if t.offset.is_none() {
                cursor = off + t.data.len() as u64;
            }
            rel.push(off);
        }

        let mut out = Vec::new();
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&self.version.to_le_bytes());
        let tc = self.tensor_count.unwrap_or(self.tensors.len() as u64);
        let kc = self.kv_count.unwrap_or(self.kvs.len() as u64);
        out.extend_from_slice(&tc.to_le_bytes());
        out.extend_from_slice(&kc.to_le_bytes());

        let mut layout = Layout {
            kv_offsets: Vec::new(),
            tensor_info_offsets: Vec::new(),
            data_offset: 0,
            tensor_data_offsets: Vec::new(),
        };
        for kv in &self.kvs {
            layout.kv_offsets.push(out.len() as u64);
            encode_str(&mut out, &kv.key);
            out.extend_from_slice(&kv.value_type.to_le_bytes());
            out.extend_from_slice(&kv.payload);
        }
        for (t, &off) in self.tensors.iter().zip(&rel) {
            layout.tensor_info_offsets.push(out.len() as u64);
            encode_str(&mut out, &t.name);
            out.extend_from_slice(&t.n_dims.to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
        }
        let data_offset = pad(out.len() as u64);
        out.resize(data_offset as usize, 0);
        layout.data_offset = data_offset;
        for (t, &off) in self.tensors.iter().zip(&rel) {
            let start = data_offset.wrapping_add(off);
            layout.tensor_data_offsets.push(start);
            // A tensor without data writes nothing, wherever its offset points.
            if t.data.is_empty() {
                continue;
            }
            let start = start as usize;
            let end = start + t.data.len();
            if out.len() < end {
                out.resize(end, 0);
            }
            out[start..end].copy_from_slice(&t.data);
        }
        (out, layout)
    }
}

fn encode_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

/// Appends `v`'s encoding (without its type number) to `out`.
pub fn encode_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => encode_str(out, s.as_bytes()),
        Value::Array(a) => encode_array(out, a),
    }
}

/// Appends an array's encoding (element type, count, elements) to `out`.
pub fn encode_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&a.elem_type().to_u32().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => each!(v),
        Array::U16(v) => each!(v),
        Array::I16(v) => each!(v),
        Array::U32(v) => each!(v),
        Array::I32(v) => each!(v),
        Array::U64(v) => each!(v),
        Array::I64(v) => each!(v),
        Array::F32(v) => each!(v),
        Array::F64(v) => each!(v),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => {
            for s in v {
                encode_str(out, s.as_bytes());
            }
        }
        Array::Array(v) => {
            for a in v {
                encode_array(out, a);
            }
        }
    }
}
