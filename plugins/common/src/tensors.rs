//! Finding a model's tensors by name in the host's tensor table and checking their shapes once
//! at load. Models keep indices into the table, which the host hands back with every forward.

use plugin_api::{GgmlType, TensorRef, WeightRef};
use std::collections::HashMap;

/// Name → index over the host's tensor table.
pub struct TensorIndex {
    by_name: HashMap<String, usize>,
    shapes: Vec<([u64; 4], u32, GgmlType)>,
}

/// A tensor used as a matrix: `rows` outputs × `cols` inputs (GGML `dims[1]` × `dims[0]`).
#[derive(Debug, Clone, Copy)]
pub struct MatrixId {
    pub index: usize,
    pub rows: usize,
    pub cols: usize,
}

/// A tensor used as an f32 vector (norm weights, biases).
#[derive(Debug, Clone, Copy)]
pub struct VectorId {
    pub index: usize,
    pub len: usize,
}

impl TensorIndex {
    pub fn new(tensors: &[TensorRef<'_>]) -> Self {
        TensorIndex {
            by_name: tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.as_str().to_string(), i))
                .collect(),
            shapes: tensors
                .iter()
                .map(|t| (t.dims, t.n_dims, t.dtype))
                .collect(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    fn find(&self, name: &str) -> Result<usize, String> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| format!("tensor '{name}' is missing from the model file"))
    }

    /// A 2-D weight of `cols` inputs and `rows` outputs (either may be `None` = any).
    pub fn matrix(
        &self,
        name: &str,
        cols: Option<usize>,
        rows: Option<usize>,
    ) -> Result<MatrixId, String> {
        let index = self.find(name)?;
        let (dims, n_dims, _) = self.shapes[index];
        let (c, r) = (dims[0] as usize, dims[1] as usize);
        if n_dims != 2 || cols.is_some_and(|x| x != c) || rows.is_some_and(|x| x != r) {
            return Err(format!(
                "tensor '{name}' has shape {:?}, expected [{}, {}]",
                &dims[..n_dims as usize],
                cols.map_or("any".into(), |x| x.to_string()),
                rows.map_or("any".into(), |x| x.to_string())
            ));
        }
        Ok(MatrixId {
            index,
            rows: r,
            cols: c,
        })
    }

    /// A 1-D f32 tensor of `len` elements.
    pub fn vector(&self, name: &str, len: usize) -> Result<VectorId, String> {
        let index = self.find(name)?;
        let (dims, n_dims, dtype) = self.shapes[index];
        if n_dims != 1 || dims[0] as usize != len || dtype != GgmlType::F32 {
            return Err(format!(
                "tensor '{name}' is {} {:?}, expected F32 [{len}]",
                dtype.name(),
                &dims[..n_dims as usize]
            ));
        }
        Ok(VectorId { index, len })
    }

    /// An optional 1-D f32 tensor.
    pub fn optional_vector(&self, name: &str, len: usize) -> Result<Option<VectorId>, String> {
        if self.contains(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// The weight view of a matrix for a kernel call.
pub fn weight<'a>(tensors: &[TensorRef<'a>], id: MatrixId) -> WeightRef<'a> {
    let t = &tensors[id.index];
    WeightRef {
        dtype: t.dtype,
        layout: t.layout,
        rows: id.rows,
        cols: id.cols,
        data: t.data,
    }
}

/// The f32 values of a vector tensor. GGUF data is little-endian and 32-byte aligned, but the
/// ABI hands bytes, so decode rather than reinterpret (vectors are small: norm weights, biases).
pub fn vector(tensors: &[TensorRef<'_>], id: VectorId) -> Vec<f32> {
    tensors[id.index].data.as_slice()[..id.len * 4]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}
