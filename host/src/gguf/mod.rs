//! GGUF model files: a validating reader over a memory map, and a small writer for tests.
//!
//! [`GgufFile::open`] maps the file ([`crate::mmap`]), parses the header, the metadata and the
//! tensor table, and checks every tensor (shape, type, alignment, bounds, overlap) before
//! anyone uses it; after that, [`GgufFile::tensor_data`] hands out zero-copy slices of the
//! mapping. Opening reads only the front of the file (metadata and tensor infos, a few MB for
//! a vocabulary of 150k tokens); tensor data is not touched.
//!
//! Layout of a file (versions 2 and 3, little-endian):
//!
//! ```text
//! "GGUF" u32 version, u64 tensor_count, u64 kv_count
//! kv_count × (string key, u32 value type, value)
//! tensor_count × (string name, u32 n_dims, n_dims × u64 dim, u32 ggml type, u64 offset)
//! padding to `general.alignment` (default 32), then the data section
//! ```
//!
//! A string is a u64 byte length and UTF-8 bytes; an array is a u32 element type, a u64
//! count and the elements (arrays may nest). Tensor offsets are relative to the data section
//! and multiples of the alignment.

mod error;
mod metadata;
mod reader;
mod value;
pub mod writer;

pub use error::{ErrorKind, GgufError, Location};
pub use metadata::Metadata;
pub use reader::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS};
pub use value::{Array, Value, ValueType};

use crate::mmap::MappedFile;
use plugin_api::abi_stable::std_types::{RSlice, RStr};
use plugin_api::{GgmlType, TensorRef};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// One tensor of a GGUF file, as validated at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: GgmlType,
    /// GGML order: `dims[0]` is the length of a row (contiguous in memory). 1 to 4 entries.
    pub dims: Vec<u64>,
    /// Where its data starts, absolute in the file.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl TensorInfo {
    /// The number of elements (the product of the dimensions).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }

    /// The dimensions padded with 1s to four (GGML's `ne`).
    pub fn dims4(&self) -> [u64; 4] {
        let mut out = [1u64; 4];
        for (o, &d) in out.iter_mut().zip(&self.dims) {
            *o = d;
        }
        out
    }

    /// The number of rows (elements / row length).
    pub fn n_rows(&self) -> u64 {
        self.dims
            .iter()
            .skip(1)
            .fold(1u64, |n, &d| n.saturating_mul(d))
    }
}

enum Storage {
    Mapped(MappedFile),
    Owned(Vec<u8>),
}

/// A parsed, validated GGUF file, owning its bytes (a memory map, or a buffer in tests).
pub struct GgufFile {
    storage: Storage,
    name: String,
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl GgufFile {
    /// Maps the file at `path` and parses and validates all of it but the tensor data.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let name = path.display().to_string();
        let map = MappedFile::open(path).map_err(|e| GgufError::io(&name, e))?;
        GgufFile::build(Storage::Mapped(map), name)
    }

    /// The same parser over an owned buffer; `name` stands for the file in errors.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<GgufFile, GgufError> {
        GgufFile::build(Storage::Owned(bytes), name.to_owned())
    }

    fn build(storage: Storage, name: String) -> Result<GgufFile, GgufError> {
        let bytes = match &storage {
            Storage::Mapped(m) => m.bytes(),
            Storage::Owned(v) => v.as_slice(),
        };
        let p = reader::parse(bytes, &name)?;
        Ok(GgufFile {
            storage,
            name,
            version: p.version,
            metadata: p.metadata,
            tensors: p.tensors,
            by_name: p.by_name,
            alignment: p.alignment,
            data_offset: p.data_offset,
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped(m) => m.bytes(),
            Storage::Owned(v) => v,
        }
    }

    /// The path (or the name given to [`GgufFile::from_bytes`]), as errors show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The data of `t`, a tensor of this file: a zero-copy slice of the mapping (its range was
    /// checked at open). A `TensorInfo` that does not describe this file's bytes gets an empty
    /// slice.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let range = usize::try_from(t.offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(usize::try_from(t.size).ok()?)?));
        range.and_then(|r| self.bytes().get(r)).unwrap_or_default()
    }

    /// Releases the resident file pages that hold only `t`'s data (see
    /// [`MappedFile::release_pages`]): for a tensor the kernel plugin repacked into a buffer of
    /// its own, so that the mapped copy stops counting. The bytes stay readable (a later read
    /// faults them in again). Returns the bytes released; 0 for a file read into memory
    /// ([`GgufFile::from_bytes`]).
    pub fn release_tensor_pages(&self, t: &TensorInfo) -> std::io::Result<u64> {
        match &self.storage {
            Storage::Mapped(m) => {
                let bad = || {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("tensor '{}' lies outside {}", t.name, self.name),
                    )
                };
                let offset = usize::try_from(t.offset).map_err(|_| bad())?;
                let len = usize::try_from(t.size).map_err(|_| bad())?;
                m.release_pages(offset, len).map(|n| n as u64)
            }
            Storage::Owned(_) => Ok(0),
        }
    }

    /// `t` as plugins see it (zero-copy, `layout` 0).
    pub fn tensor_ref<'a>(&'a self, t: &'a TensorInfo) -> TensorRef<'a> {
        TensorRef {
            name: RStr::from_str(&t.name),
            dtype: t.dtype,
            layout: 0,
            dims: t.dims4(),
            n_dims: t.dims.len() as u32,
            data: RSlice::from_slice(self.tensor_data(t)),
        }
    }

    /// `general.architecture`: the model family ("llama", "qwen2", "gemma3", ...).
    pub fn architecture(&self) -> Result<&str, GgufError> {
        const KEY: &str = "general.architecture";
        match self.metadata.get(KEY) {
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(self.metadata_error(
                ErrorKind::WrongType,
                KEY,
                format!("the key is a {}, expected a string", v.value_type()),
            )),
            None => Err(self.metadata_error(
                ErrorKind::MissingKey,
                KEY,
                "the required key is missing".to_owned(),
            )),
        }
    }

    /// An error about metadata key `key` of this file (missing, wrong type, bad value), in
    /// the same one-line shape as the parser's.
    pub fn metadata_error(&self, kind: ErrorKind, key: &str, what: String) -> GgufError {
        GgufError::invalid(
            &self.name,
            kind,
            what,
            Location::Key(error::printable(key)),
            None,
        )
    }

    pub fn file_size(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// The alignment of the data section and of every tensor (`general.alignment`, default
    /// 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Where the data section starts, absolute in the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("file_size", &self.file_size())
            .field("metadata_len", &self.metadata.len())
            .field("tensors_len", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}
