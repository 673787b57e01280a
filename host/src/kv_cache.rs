//! The host-owned KV cache that architecture plugins write through [`plugin_api::KvCache`].
//!
//! Per sequence (any `u32` id) and layer, keys and values live in two contiguous buffers of
//! `n_ctx` token rows: row `pos` of K holds `k_dim = n_head_kv · head_dim` elements, heads one
//! after the other (and likewise V). Elements are F16 (the default, as llama.cpp's
//! `--cache-type-k/-v f16`) converted from f32 with round-to-nearest-even, or F32 as given.
//! Bytes are in native order, as the kernels read them.
//!
//! A sequence's buffers are reserved the first time it is written to (virtual memory; pages are
//! touched as rows are written) and released by [`KvCache::clear_seq`]. Within a layer, rows are
//! appended in position order: storing position `pos` needs `pos ≤` the layer's current length
//! (no holes); `pos <` length overwrites that row in place.

use abi_stable::{
    sabi_trait::prelude::TD_Opaque,
    std_types::{RResult, RSlice, RString},
};
use half::f16;
use plugin_api::{arch::KvCache_TO, GgmlType, KvCacheMut, KvRef, KvShape, KvView};
use std::collections::BTreeMap;

/// What can go wrong creating or using the cache. Every message is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("KV cache: element type {0:?} is not supported (use F16 or F32)")]
    UnsupportedType(GgmlType),
    #[error("KV cache: invalid shape: {0}")]
    InvalidShape(String),
    #[error(
        "KV cache: {n_layer} layers × {n_ctx} tokens × ({k_dim} + {v_dim}) elements of {elem} bytes does not fit in memory addresses; lower -c/--ctx-size"
    )]
    TooLarge {
        n_layer: u32,
        n_ctx: usize,
        k_dim: u32,
        v_dim: u32,
        elem: usize,
    },
    #[error("KV cache: cannot allocate {bytes} bytes for sequence {seq}; lower -c/--ctx-size")]
    OutOfMemory { seq: u32, bytes: usize },
    #[error("context full: position {pos}, context size {n_ctx}; raise -c/--ctx-size")]
    ContextFull { pos: usize, n_ctx: usize },
    #[error(
        "KV cache: position {pos} of sequence {seq} in layer {layer} would leave a hole: {len} positions stored so far"
    )]
    OutOfOrder {
        layer: usize,
        seq: u32,
        pos: usize,
        len: usize,
    },
    #[error("KV cache: layer {layer} out of range ({n_layer} layers)")]
    BadLayer { layer: usize, n_layer: u32 },
    #[error("KV cache: {what} row has {got} values, expected {want}")]
    BadRow {
        what: &'static str,
        got: usize,
        want: usize,
    },
    #[error(
        "KV cache: view of {len} positions of sequence {seq} in layer {layer}, but only {stored} are stored"
    )]
    ViewTooLong {
        layer: usize,
        seq: u32,
        len: usize,
        stored: usize,
    },
}

/// K and V of one layer of one sequence.
#[derive(Debug)]
struct LayerKv {
    k: Vec<u8>,
    v: Vec<u8>,
    len: usize,
}

#[derive(Debug)]
struct SeqKv {
    layers: Vec<LayerKv>,
}

/// The KV cache of one loaded model, for any number of sequences.
#[derive(Debug)]
pub struct KvCache {
    shape: KvShape,
    n_ctx: usize,
    dtype: GgmlType,
    head_dim: usize,
    /// Bytes per element.
    elem: usize,
    k_row: usize,
    v_row: usize,
    seqs: BTreeMap<u32, SeqKv>,
}

impl KvCache {
    /// A cache for a model with `shape`, `n_ctx` positions per sequence, `dtype` elements (F16
    /// or F32) and heads of `head_dim` elements (`k_dim` and `v_dim` must be multiples of it,
    /// and `shape.head_dim`, when not 0, equal to it).
    ///
    /// Fails when the shape is empty or inconsistent, or when one sequence
    /// (`n_layer × n_ctx × (k_dim + v_dim) × element size` bytes) could not even be addressed.
    /// Nothing is allocated yet.
    pub fn new(
        shape: KvShape,
        n_ctx: usize,
        dtype: GgmlType,
        head_dim: usize,
    ) -> Result<KvCache, KvError> {
        let elem = match dtype {
            GgmlType::F16 => 2,
            GgmlType::F32 => 4,
            other => return Err(KvError::UnsupportedType(other)),
        };
        if shape.n_layer == 0 || shape.k_dim == 0 || shape.v_dim == 0 {
            return Err(KvError::InvalidShape(format!(
                "n_layer {}, k_dim {}, v_dim {} (all must be > 0)",
                shape.n_layer, shape.k_dim, shape.v_dim
            )));
        }
        if n_ctx == 0 {
            return Err(KvError::InvalidShape("context size 0".into()));
        }
        if head_dim == 0
            || !(shape.k_dim as usize).is_multiple_of(head_dim)
            || !(shape.v_dim as usize).is_multiple_of(head_dim)
        {
            return Err(KvError::InvalidShape(format!(
                "head_dim {head_dim} does not divide k_dim {} and v_dim {}",
                shape.k_dim, shape.v_dim
            )));
        }
        if shape.head_dim != 0 && shape.head_dim as usize != head_dim {
            return Err(KvError::InvalidShape(format!(
                "head_dim {head_dim} differs from the model's {}",
                shape.head_dim
            )));
        }
        let too_large = KvError::TooLarge {
            n_layer: shape.n_layer,
            n_ctx,
            k_dim: shape.k_dim,
            v_dim: shape.v_dim,
            elem,
        };
        let row_elems = (shape.k_dim as usize)
            .checked_add(shape.v_dim as usize)
            .ok_or_else(|| too_large.clone())?;
        let seq_bytes = (shape.n_layer as usize)
            .checked_mul(n_ctx)
            .and_then(|x| x.checked_mul(row_elems))
            .and_then(|x| x.checked_mul(elem))
            .ok_or_else(|| too_large.clone())?;
        if seq_bytes > isize::MAX as usize {
            return Err(too_large);
        }
        Ok(KvCache {
            shape,
            n_ctx,
            dtype,
            head_dim,
            elem,
            k_row: shape.k_dim as usize * elem,
            v_row: shape.v_dim as usize * elem,
            seqs: BTreeMap::new(),
        })
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn dtype(&self) -> GgmlType {
        self.dtype
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// KV heads per token: `k_dim / head_dim`.
    pub fn n_head_kv(&self) -> usize {
        self.shape.k_dim as usize / self.head_dim
    }

    /// Bytes one sequence takes once written to: `n_layer × n_ctx × (k_dim + v_dim) × elem`.
    pub fn bytes_per_sequence(&self) -> usize {
        // Checked in `new`.
        self.shape.n_layer as usize * self.n_ctx * (self.k_row + self.v_row)
    }

    /// Bytes reserved for all live sequences.
    pub fn bytes_allocated(&self) -> usize {
        self.seqs
            .values()
            .flat_map(|s| &s.layers)
            .map(|l| l.k.capacity() + l.v.capacity())
            .sum()
    }

    /// Bytes of stored rows, over all live sequences.
    pub fn bytes_used(&self) -> usize {
        self.seqs
            .values()
            .flat_map(|s| &s.layers)
            .map(|l| l.k.len() + l.v.len())
            .sum()
    }

    /// Ids of the sequences that hold memory, in increasing order.
    pub fn seq_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.seqs.keys().copied()
    }

    /// Positions of `seq` stored in every layer (0 for an unknown sequence).
    pub fn seq_len(&self, seq: u32) -> usize {
        self.seqs
            .get(&seq)
            .and_then(|s| s.layers.iter().map(|l| l.len).min())
            .unwrap_or(0)
    }

    /// Forgets `seq` and releases its memory.
    pub fn clear_seq(&mut self, seq: u32) {
        self.seqs.remove(&seq);
    }

    /// Forgets every sequence.
    pub fn clear(&mut self) {
        self.seqs.clear();
    }

    /// Keeps positions `0..len` of `seq` in every layer (memory stays reserved).
    pub fn truncate(&mut self, seq: u32, len: usize) {
        let (k_row, v_row) = (self.k_row, self.v_row);
        if let Some(s) = self.seqs.get_mut(&seq) {
            for l in &mut s.layers {
                if len < l.len {
                    l.len = len;
                    l.k.truncate(len * k_row);
                    l.v.truncate(len * v_row);
                }
            }
        }
    }

    /// Stores the K and V rows (`k_dim` and `v_dim` floats) of the token at `pos` of `seq` in
    /// `layer`.
    pub fn store(
        &mut self,
        layer: usize,
        seq: u32,
        pos: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<(), KvError> {
        if layer >= self.shape.n_layer as usize {
            return Err(KvError::BadLayer {
                layer,
                n_layer: self.shape.n_layer,
            });
        }
        let (k_dim, v_dim) = (self.shape.k_dim as usize, self.shape.v_dim as usize);
        if k.len() != k_dim {
            return Err(KvError::BadRow {
                what: "K",
                got: k.len(),
                want: k_dim,
            });
        }
        if v.len() != v_dim {
            return Err(KvError::BadRow {
                what: "V",
                got: v.len(),
                want: v_dim,
            });
        }
        if pos >= self.n_ctx {
            return Err(KvError::ContextFull {
                pos,
                n_ctx: self.n_ctx,
            });
        }
        let stored = self.seqs.get(&seq).map_or(0, |s| s.layers[layer].len);
        if pos > stored {
            return Err(KvError::OutOfOrder {
                layer,
                seq,
                pos,
                len: stored,
            });
        }
        let (k_row, v_row, dtype) = (self.k_row, self.v_row, self.dtype);
        let entry = match self.seqs.entry(seq) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(new_seq(
                seq,
                self.shape.n_layer as usize,
                self.n_ctx,
                k_row,
                v_row,
            )?),
        };
        let l = &mut entry.layers[layer];
        if pos == l.len {
            l.k.resize((pos + 1) * k_row, 0);
            l.v.resize((pos + 1) * v_row, 0);
            l.len += 1;
        }
        encode(dtype, k, &mut l.k[pos * k_row..(pos + 1) * k_row]);
        encode(dtype, v, &mut l.v[pos * v_row..(pos + 1) * v_row]);
        Ok(())
    }

    /// Keys and values of positions `0..len` of `seq` in `layer`, all stored before.
    pub fn view(&self, layer: usize, seq: u32, len: usize) -> Result<KvView<'_>, KvError> {
        if layer >= self.shape.n_layer as usize {
            return Err(KvError::BadLayer {
                layer,
                n_layer: self.shape.n_layer,
            });
        }
        let l = self.seqs.get(&seq).map(|s| &s.layers[layer]);
        let stored = l.map_or(0, |l| l.len);
        if len > stored {
            return Err(KvError::ViewTooLong {
                layer,
                seq,
                len,
                stored,
            });
        }
        let (k, v): (&[u8], &[u8]) = match l {
            Some(l) => (&l.k[..len * self.k_row], &l.v[..len * self.v_row]),
            None => (&[], &[]),
        };
        let head_stride = self.head_dim * self.elem;
        Ok(KvView {
            k: KvRef {
                dtype: self.dtype,
                data: RSlice::from_slice(k),
                token_stride: self.k_row,
                head_stride,
            },
            v: KvRef {
                dtype: self.dtype,
                data: RSlice::from_slice(v),
                token_stride: self.v_row,
                head_stride,
            },
            len,
        })
    }

    /// This cache as the ABI's trait object, for `ForwardArgs::kv`.
    pub fn as_abi(&mut self) -> KvCacheMut<'_> {
        KvCache_TO::from_ptr(self, TD_Opaque)
    }
}

fn reserve(bytes: usize, seq: u32, total: usize) -> Result<Vec<u8>, KvError> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(bytes)
        .map_err(|_| KvError::OutOfMemory { seq, bytes: total })?;
    Ok(buf)
}

fn new_seq(
    seq: u32,
    n_layer: usize,
    n_ctx: usize,
    k_row: usize,
    v_row: usize,
) -> Result<SeqKv, KvError> {
    let total = n_layer * n_ctx * (k_row + v_row);
    let layers = (0..n_layer)
        .map(|_| {
            Ok(LayerKv {
                k: reserve(n_ctx * k_row, seq, total)?,
                v: reserve(n_ctx * v_row, seq, total)?,
                len: 0,
            })
        })
        .collect::<Result<Vec<_>, KvError>>()?;
    Ok(SeqKv { layers })
}

/// Writes `src` into `dst` as `dtype` elements, native byte order.
fn encode(dtype: GgmlType, src: &[f32], dst: &mut [u8]) {
    if dtype == GgmlType::F16 {
        for (d, &x) in dst.chunks_exact_mut(2).zip(src) {
            d.copy_from_slice(&f16::from_f32(x).to_ne_bytes());
        }
    } else {
        for (d, &x) in dst.chunks_exact_mut(4).zip(src) {
            d.copy_from_slice(&x.to_ne_bytes());
        }
    }
}

impl plugin_api::arch::KvCache for KvCache {
    fn dtype(&self) -> GgmlType {
        self.dtype
    }

    fn store(
        &mut self,
        layer: u32,
        seq: u32,
        pos: u32,
        k: RSlice<'_, f32>,
        v: RSlice<'_, f32>,
    ) -> RResult<(), RString> {
        KvCache::store(
            self,
            layer as usize,
            seq,
            pos as usize,
            k.as_slice(),
            v.as_slice(),
        )
        .map_err(|e| RString::from(e.to_string()))
        .into()
    }

    fn view(&self, layer: u32, seq: u32, len: u32) -> RResult<KvView<'_>, RString> {
        KvCache::view(self, layer as usize, seq, len as usize)
            .map_err(|e| RString::from(e.to_string()))
            .into()
    }
}
