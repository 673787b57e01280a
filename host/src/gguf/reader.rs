//! The GGUF parser: header, metadata, tensor infos, and the validation of every tensor's shape,
//! type and data range. It reads only the front of the file; tensor data is never touched.
//!
//! Every read is bounds-checked, and every length or count is checked against the bytes left
//! in the file before anything is allocated for it, so a hostile file costs at most a small
//! multiple of its own size in memory and never panics.

use super::error::{printable, printable_bytes, ErrorKind, GgufError, Location};
use super::metadata::Metadata;
use super::value::{Array, Value, ValueType};
use super::TensorInfo;
use plugin_api::GgmlType;
use std::collections::HashMap;

/// "GGUF", the first four bytes of every file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that overrides the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Most dimensions a tensor may have (GGML_MAX_DIMS).
pub const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays of arrays accepted (the parser recurses once per level).
pub const MAX_ARRAY_DEPTH: usize = 16;

/// The fewest bytes one metadata entry takes: key length, empty key, type, a 1-byte value.
const MIN_KV_SIZE: u64 = 8 + 4 + 1;
/// The fewest bytes one tensor info takes: name length, empty name, n_dims, one dim, type,
/// offset.
const MIN_TENSOR_INFO_SIZE: u64 = 8 + 4 + 8 + 4 + 8;

/// Most elements reserved up front for a list whose length the file claims; longer lists grow
/// as their elements are actually read, so a hostile count reserves nothing large.
const MAX_RESERVE: usize = 1 << 16;

/// What `parse` finds in a file.
pub(crate) struct Parsed {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub by_name: HashMap<String, usize>,
    pub alignment: u64,
    pub data_offset: u64,
}

/// Which part of the file is being read, for error messages.
#[derive(Clone, Copy)]
enum Ctx<'s> {
    File,
    Key(&'s str),
    KeyIndex(u64),
    Tensor(&'s str),
    TensorIndex(u64),
}

impl Ctx<'_> {
    fn location(self) -> Location {
        match self {
            Ctx::File => Location::File,
            Ctx::Key(k) => Location::Key(printable(k)),
            Ctx::KeyIndex(i) => Location::KeyIndex(i),
            Ctx::Tensor(t) => Location::Tensor(printable(t)),
            Ctx::TensorIndex(i) => Location::TensorIndex(i),
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    file: &'a str,
}

fn as_u64(n: usize) -> u64 {
    // usize is at most 64 bits on every target Rust supports.
    n as u64
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn len(&self) -> u64 {
        as_u64(self.bytes.len())
    }

    fn err(&self, kind: ErrorKind, what: impl Into<String>, ctx: Ctx, at: usize) -> GgufError {
        GgufError::invalid(self.file, kind, what, ctx.location(), Some(as_u64(at)))
    }

    /// The error for the `needed` bytes of `what`, starting at `at`, that are not there.
    fn truncated(&self, needed: u64, what: &str, ctx: Ctx, at: usize) -> GgufError {
        let left = self.bytes.len().saturating_sub(at);
        self.err(
            ErrorKind::Truncated,
            format!(
                "the file ends inside the {what}: it needs {needed} bytes, only {left} are left"
            ),
            ctx,
            at,
        )
    }

    /// The error for a length or count that asks for `needed` bytes that are not there: a
    /// truncated file, unless `needed` is more than the whole file, which only a corrupted
    /// length or count can ask for.
    /// `needed` is `None` when the size overflows u64.
    fn too_long(&self, needed: Option<u64>, what: String, ctx: Ctx, at: usize) -> GgufError {
        match needed {
            Some(n) if n <= self.len() => self.truncated(n, &what, ctx, at),
            _ => self.err(
                ErrorKind::ImplausibleSize,
                format!(
                    "{what} needs {}bytes, more than the whole file ({} bytes)",
                    needed.map_or(String::new(), |n| format!("{n} ")),
                    self.len()
                ),
                ctx,
                at,
            ),
        }
    }

    fn take(&mut self, n: usize, ctx: Ctx, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(self.truncated(as_u64(n), what, ctx, self.pos));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, ctx: Ctx, what: &str) -> Result<[u8; N], GgufError> {
        let b = self.take(N, ctx, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, ctx: Ctx, what: &str) -> Result<u32, GgufError> {
        self.array(ctx, what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, ctx: Ctx, what: &str) -> Result<u64, GgufError> {
        self.array(ctx, what).map(u64::from_le_bytes)
    }

    /// The bytes of a length-prefixed string, not yet checked for UTF-8.
    fn string_bytes(&mut self, ctx: Ctx, what: &str) -> Result<&'a [u8], GgufError> {
        let at = self.pos;
        let len = self.u64(ctx, what)?;
        let needed = len.checked_add(8);
        match usize::try_from(len) {
            Ok(n) if n <= self.remaining() => self.take(n, ctx, what),
            _ => Err(self.too_long(needed, format!("{what} (length {len})"), ctx, at)),
        }
    }

    fn string(&mut self, ctx: Ctx, what: &str) -> Result<String, GgufError> {
        let at = self.pos;
        let b = self.string_bytes(ctx, what)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.err(
                ErrorKind::InvalidUtf8,
                format!(
                    "the {what} is not valid UTF-8 (bad byte {} of {})",
                    e.valid_up_to(),
                    b.len()
                ),
                ctx,
                at,
            )),
        }
    }

    fn value_type(&mut self, ctx: Ctx, what: &str) -> Result<ValueType, GgufError> {
        let at = self.pos;
        let n = self.u32(ctx, what)?;
        ValueType::from_u32(n).ok_or_else(|| {
            self.err(
                ErrorKind::UnknownValueType,
                format!("unknown {what} {n} (GGUF defines 0 to 12)"),
                ctx,
                at,
            )
        })
    }

    fn bool(&self, b: u8, ctx: Ctx, at: usize) -> Result<bool, GgufError> {
        match b {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.err(
                ErrorKind::InvalidValue,
                format!("bool value {b} is neither 0 nor 1"),
                ctx,
                at,
            )),
        }
    }

    fn value(&mut self, ty: ValueType, ctx: Ctx) -> Result<Value, GgufError> {
        let at = self.pos;
        let what = "value";
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(ctx, what)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(ctx, what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(ctx, what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(ctx, what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(ctx, what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(ctx, what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(ctx, what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(ctx, what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(ctx, what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(ctx, what)?)),
            ValueType::Bool => {
                let [b] = self.array(ctx, what)?;
                Value::Bool(self.bool(b, ctx, at)?)
            }
            ValueType::String => Value::String(self.string(ctx, "string value")?),
            ValueType::Array => Value::Array(self.array_value(ctx, 1)?),
        })
    }

    /// An array value (element type, count, elements); `depth` is 1 for a top-level array.
    fn array_value(&mut self, ctx: Ctx, depth: usize) -> Result<Array, GgufError> {
        let at = self.pos;
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.err(
                ErrorKind::InvalidValue,
                format!("arrays nested more than {MAX_ARRAY_DEPTH} deep"),
                ctx,
                at,
            ));
        }
        let elem = self.value_type(ctx, "array element type")?;
        let count = self.u64(ctx, "array length")?;
        // Every element takes at least this many bytes: check that they can all be there
        // before allocating for them.
        let min = as_u64(elem.min_encoded_size());
        let n = match count.checked_mul(min) {
            Some(bytes) if bytes <= as_u64(self.remaining()) => count as usize,
            bytes => {
                return Err(self.too_long(
                    bytes.and_then(|b| b.checked_add(12)),
                    format!("array of {count} {elem} elements"),
                    ctx,
                    at,
                ))
            }
        };
        let what = "array";
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                const W: usize = std::mem::size_of::<$t>();
                let b = self.take(n * W, ctx, what)?;
                Array::$variant(
                    b.chunks_exact(W)
                        .map(|c| {
                            let mut a = [0u8; W];
                            a.copy_from_slice(c);
                            <$t>::from_le_bytes(a)
                        })
                        .collect(),
                )
            }};
        }
        Ok(match elem {
            ValueType::U8 => Array::U8(self.take(n, ctx, what)?.to_vec()),
            ValueType::I8 => fixed!(I8, i8),
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::Bool => {
                let start = self.pos;
                let b = self.take(n, ctx, what)?;
                let mut v = Vec::with_capacity(n);
                for (i, &x) in b.iter().enumerate() {
                    v.push(self.bool(x, ctx, start + i)?);
                }
                Array::Bool(v)
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(n.min(MAX_RESERVE));
                for _ in 0..n {
                    v.push(self.string(ctx, "string array element")?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n.min(MAX_RESERVE));
                for _ in 0..n {
                    v.push(self.array_value(ctx, depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }
}

/// A tensor info as read, with where its fields are for error messages.
struct RawTensor {
    info: TensorInfo,
    /// Offset relative to the data section, as in the file.
    rel_offset: u64,
    /// Byte of the offset field.
    offset_at: usize,
}

/// Names of GGML types llmhost does not implement, for messages.
fn ggml_type_name(n: u32) -> Option<&'static str> {
    Some(match n {
        4 => "Q4_2, removed from GGML",
        5 => "Q4_3, removed from GGML",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

/// Parses and validates the whole front of a GGUF file held in `bytes`; `file` names it in
/// errors.
pub(crate) fn parse(bytes: &[u8], file: &str) -> Result<Parsed, GgufError> {
    let mut r = Reader {
        bytes,
        pos: 0,
        file,
    };

    // Header.
    let magic: [u8; 4] = r.array(Ctx::File, "magic")?;
    if magic != GGUF_MAGIC {
        return Err(r.err(
            ErrorKind::NotGguf,
            format!(
                // Escaped: the bytes of a non-GGUF file are rarely printable.
                "the file starts with \"{}\" instead of \"GGUF\"",
                magic.escape_ascii()
            ),
            Ctx::File,
            0,
        ));
    }
    let version = r.u32(Ctx::File, "version")?;
    if version != 0 && version & 0xFFFF == 0 {
        return Err(r.err(
            ErrorKind::BigEndian,
            format!(
                "the version field reads {version:#010x}: the file was written big-endian \
                 (GGUF version {})",
                version.swap_bytes()
            ),
            Ctx::File,
            4,
        ));
    }
    if version != 2 && version != 3 {
        let what = if version == 1 {
            "GGUF version 1 (the 2023 pre-release format) is not supported".to_owned()
        } else {
            format!("GGUF version {version} is not supported")
        };
        return Err(r.err(ErrorKind::UnsupportedVersion, what, Ctx::File, 4));
    }
    let tensor_count = r.u64(Ctx::File, "tensor count")?;
    let kv_count = r.u64(Ctx::File, "metadata count")?;

    // Both tables must fit in the rest of the file, even at their smallest entries.
    let left = as_u64(r.remaining());
    let kv_min = kv_count.checked_mul(MIN_KV_SIZE);
    let t_min = tensor_count.checked_mul(MIN_TENSOR_INFO_SIZE);
    match (kv_min, t_min) {
        (Some(k), Some(t)) if k.checked_add(t).is_some_and(|s| s <= left) => {}
        _ => {
            return Err(r.too_long(
                kv_min.and_then(|k| k.checked_add(t_min?)),
                format!(
                    "the header's counts ({kv_count} metadata entries, {tensor_count} tensors)"
                ),
                Ctx::File,
                8,
            ));
        }
    }

    // Metadata.
    let mut metadata = Metadata::new();
    let mut alignment_at = 0usize;
    for i in 0..kv_count {
        let at = r.pos;
        let key_bytes = r.string_bytes(Ctx::KeyIndex(i), "key")?;
        let key = match std::str::from_utf8(key_bytes) {
            Ok(k) => k,
            Err(e) => {
                return Err(GgufError::invalid(
                    file,
                    ErrorKind::InvalidUtf8,
                    format!(
                        "the key is not valid UTF-8 (bad byte {} of {})",
                        e.valid_up_to(),
                        key_bytes.len()
                    ),
                    Location::Key(printable_bytes(key_bytes)),
                    Some(as_u64(at)),
                ))
            }
        };
        let ctx = Ctx::Key(key);
        let ty = r.value_type(ctx, "value type")?;
        let value = r.value(ty, ctx)?;
        if key == ALIGNMENT_KEY {
            alignment_at = at;
        }
        if metadata.insert(key.to_owned(), value).is_err() {
            return Err(r.err(ErrorKind::DuplicateKey, "the key appears twice", ctx, at));
        }
    }

    // Alignment, known before the tensor infos so each offset is checked as it is read.
    let alignment = match metadata.get(ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(Value::U32(a)) => {
            return Err(r.err(
                ErrorKind::BadAlignment,
                format!("alignment {a} is not a non-zero power of two"),
                Ctx::Key(ALIGNMENT_KEY),
                alignment_at,
            ))
        }
        Some(v) => {
            return Err(r.err(
                ErrorKind::BadAlignment,
                format!("alignment is a {}, expected a u32", v.value_type()),
                Ctx::Key(ALIGNMENT_KEY),
                alignment_at,
            ))
        }
    };

    // Tensor infos.
    let reserve = usize::try_from(tensor_count).map_or(MAX_RESERVE, |n| n.min(MAX_RESERVE));
    let mut raw: Vec<RawTensor> = Vec::with_capacity(reserve);
    let mut by_name: HashMap<String, usize> = HashMap::with_capacity(reserve);
    for i in 0..tensor_count {
        let at = r.pos;
        let name_bytes = r.string_bytes(Ctx::TensorIndex(i), "tensor name")?;
        let name = match std::str::from_utf8(name_bytes) {
            Ok(n) => n,
            Err(e) => {
                return Err(GgufError::invalid(
                    file,
                    ErrorKind::InvalidUtf8,
                    format!(
                        "the tensor name is not valid UTF-8 (bad byte {} of {})",
                        e.valid_up_to(),
                        name_bytes.len()
                    ),
                    Location::Tensor(printable_bytes(name_bytes)),
                    Some(as_u64(at)),
                ))
            }
        };
        let ctx = Ctx::Tensor(name);
        if by_name.contains_key(name) {
            return Err(r.err(
                ErrorKind::DuplicateTensor,
                "the tensor name appears twice",
                ctx,
                at,
            ));
        }
        let n_dims_at = r.pos;
        let n_dims = r.u32(ctx, "dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(r.err(
                ErrorKind::BadShape,
                format!("{n_dims} dimensions (must be 1 to {MAX_DIMS})"),
                ctx,
                n_dims_at,
            ));
        }
        let dims_at = r.pos;
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(ctx, "dimensions")?);
        }
        let type_at = r.pos;
        let type_n = r.u32(ctx, "type")?;
        let offset_at = r.pos;
        let rel_offset = r.u64(ctx, "data offset")?;

        let info = check_tensor(&r, ctx, dims, type_n, dims_at, type_at)?;
        if !rel_offset.is_multiple_of(alignment) {
            return Err(r.err(
                ErrorKind::BadTensorOffset,
                format!("data offset {rel_offset} is not a multiple of the alignment {alignment}"),
                ctx,
                offset_at,
            ));
        }
        by_name.insert(name.to_owned(), raw.len());
        raw.push(RawTensor {
            info: TensorInfo {
                name: name.to_owned(),
                ..info
            },
            rel_offset,
            offset_at,
        });
    }

    // Data section: starts at the next multiple of the alignment.
    let infos_end = as_u64(r.pos);
    let data_offset = infos_end.div_ceil(alignment) * alignment;
    for t in &mut raw {
        let ctx = Ctx::Tensor(&t.info.name);
        let range = data_offset
            .checked_add(t.rel_offset)
            .and_then(|start| Some((start, start.checked_add(t.info.size)?)));
        match range {
            Some((start, end)) if end <= r.len() => t.info.offset = start,
            Some((start, end)) if start <= r.len() => {
                return Err(r.err(
                    ErrorKind::Truncated,
                    format!(
                        "the file ends inside the tensor's data: bytes {start}..{end} of a file of {} bytes",
                        r.len()
                    ),
                    ctx,
                    t.offset_at,
                ))
            }
            _ => {
                return Err(r.err(
                    ErrorKind::BadTensorOffset,
                    format!(
                        "data offset {} (byte {} of the file) lies past the end of the file ({} bytes)",
                        t.rel_offset,
                        data_offset.saturating_add(t.rel_offset),
                        r.len()
                    ),
                    ctx,
                    t.offset_at,
                ))
            }
        }
    }

    // No two tensors share bytes.
    let mut order: Vec<usize> = (0..raw.len()).collect();
    order.sort_unstable_by_key(|&i| raw[i].info.offset);
    for w in order.windows(2) {
        let (a, b) = (&raw[w[0]], &raw[w[1]]);
        let a_end = a.info.offset + a.info.size;
        if b.info.offset < a_end {
            return Err(r.err(
                ErrorKind::OverlappingTensors,
                format!(
                    "its data (bytes {}..{}) overlaps that of tensor '{}' (bytes {}..{})",
                    b.info.offset,
                    b.info.offset + b.info.size,
                    printable(&a.info.name),
                    a.info.offset,
                    a_end
                ),
                Ctx::Tensor(&b.info.name),
                b.offset_at,
            ));
        }
    }

    Ok(Parsed {
        version,
        metadata,
        tensors: raw.into_iter().map(|t| t.info).collect(),
        by_name,
        alignment,
        data_offset,
    })
}

/// Checks a tensor's dimensions and type and computes its size. The name and offset of the
/// returned info are left for the caller to fill.
fn check_tensor(
    r: &Reader,
    ctx: Ctx,
    dims: Vec<u64>,
    type_n: u32,
    dims_at: usize,
    type_at: usize,
) -> Result<TensorInfo, GgufError> {
    let shape_err = |what: String| r.err(ErrorKind::BadShape, what, ctx, dims_at);
    if let Some(j) = dims.iter().position(|&d| d == 0) {
        return Err(shape_err(format!("dimension {j} is 0 (shape {dims:?})")));
    }
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| shape_err(format!("the element count of shape {dims:?} overflows")))?;
    let Some(dtype) = GgmlType::from_u32(type_n) else {
        let what = match ggml_type_name(type_n) {
            Some(name) => format!("unsupported ggml type {type_n} ({name})"),
            None => format!("unknown ggml type {type_n}"),
        };
        return Err(r.err(ErrorKind::UnknownTensorType, what, ctx, type_at));
    };
    let row_len = dims[0];
    let block = as_u64(dtype.block_size());
    if !row_len.is_multiple_of(block) {
        return Err(shape_err(format!(
            "row length {row_len} is not a multiple of the {} block size {block}",
            dtype.name()
        )));
    }
    let size = usize::try_from(row_len)
        .ok()
        .and_then(|n| dtype.row_bytes(n))
        .and_then(|rb| as_u64(rb).checked_mul(n_elements / row_len))
        .ok_or_else(|| {
            shape_err(format!(
                "the byte size of {} tensor of shape {dims:?} overflows",
                dtype.name()
            ))
        })?;
    Ok(TensorInfo {
        name: String::new(),
        dtype,
        dims,
        offset: 0,
        size,
    })
}
