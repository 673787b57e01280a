//! Safe, shape-explicit calls into the kernel plugin's op table, for one forward pass.

use abi_stable::std_types::{ROption, RSlice, RSliceMut};
use plugin_api::{
    AttentionArgs, BinaryArgs, BinaryOp, DequantizeArgs, FusedMatmulArgs, GgmlType, GluArgs,
    GluKind, KernelPluginRef, KvRef, MatmulArgs, MatmulTarget, PoolRef, RmsNormArgs, RopeArgs,
    RopeMode, UnaryArgs, UnaryOp, WeightRef,
};

/// The kernels and the pool of the current forward pass.
pub struct Ops<'r, 'p> {
    kernels: KernelPluginRef,
    pool: &'r PoolRef<'p>,
}

/// One product of [`Ops::fused_matmul`]: `out (+)= w · input (+ bias)`, `out` holding
/// contiguous rows of `w.rows`.
pub struct Product<'a> {
    pub w: WeightRef<'a>,
    pub bias: Option<&'a [f32]>,
    pub out: &'a mut [f32],
    /// Add to `out` (a residual connection) instead of overwriting it.
    pub accumulate: bool,
}

/// How a query block attends to one sequence's cache.
pub struct Attention<'a> {
    pub q: &'a [f32],
    pub q_pos: &'a [i32],
    pub k: KvRef<'a>,
    pub v: KvRef<'a>,
    pub kv_len: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub softcap: f32,
    pub window: u32,
}

impl<'r, 'p> Ops<'r, 'p> {
    pub fn new(kernels: KernelPluginRef, pool: &'r PoolRef<'p>) -> Self {
        Ops { kernels, pool }
    }

    /// `out[b] = w · x[b]` for `n` rows of `x` (contiguous, `w.cols` each) into `out`
    /// (contiguous, `w.rows` each).
    pub fn matmul(
        &self,
        w: WeightRef<'_>,
        x: &[f32],
        n: usize,
        out: &mut [f32],
    ) -> Result<(), String> {
        let (cols, rows) = (w.cols, w.rows);
        (self.kernels.matmul())(
            MatmulArgs {
                weight: w,
                input: RSlice::from_slice(x),
                input_stride: cols,
                n_batch: n,
                output: RSliceMut::from_mut_slice(out),
                output_stride: rows,
            },
            self.pool,
        )
        .into_result()
        .map_err(|e| format!("matmul: {e}"))
    }

    /// Several products of one input (`n` contiguous rows of `cols`), optionally
    /// RMS-normalised with `norm = (weight, eps)` first, as one kernel op: the input is
    /// quantized once and all products share one pass over the pool.
    pub fn fused_matmul(
        &self,
        x: &[f32],
        n: usize,
        cols: usize,
        norm: Option<(&[f32], f32)>,
        products: Vec<Product<'_>>,
    ) -> Result<(), String> {
        let mut targets: Vec<MatmulTarget<'_>> = products
            .into_iter()
            .map(|p| MatmulTarget {
                output_stride: p.w.rows,
                weight: p.w,
                bias: p.bias.map(RSlice::from_slice).into(),
                output: RSliceMut::from_mut_slice(p.out),
                accumulate: p.accumulate,
            })
            .collect();
        (self.kernels.fused_matmul())(
            FusedMatmulArgs {
                input: RSlice::from_slice(x),
                input_stride: cols,
                n_batch: n,
                cols,
                norm: norm.map(|(w, _)| RSlice::from_slice(w)).into(),
                norm_eps: norm.map_or(0.0, |(_, eps)| eps),
                targets: RSliceMut::from_mut_slice(&mut targets),
            },
            self.pool,
        )
        .into_result()
        .map_err(|e| format!("matmul: {e}"))
    }

    /// Row-wise RMS norm of `rows` rows of `dim` with an optional weight.
    pub fn rms_norm(
        &self,
        x: &[f32],
        weight: Option<&[f32]>,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), String> {
        (self.kernels.rms_norm())(
            RmsNormArgs {
                x: RSlice::from_slice(x),
                out: RSliceMut::from_mut_slice(out),
                weight: match weight {
                    Some(w) => ROption::RSome(RSlice::from_slice(w)),
                    None => ROption::RNone,
                },
                rows,
                dim,
                eps,
            },
            self.pool,
        )
        .into_result()
        .map_err(|e| format!("rms_norm: {e}"))
    }

    /// RMS norm in place (through a scratch copy: the op reads and writes different slices).
    pub fn rms_norm_in_place(
        &self,
        x: &mut [f32],
        weight: Option<&[f32]>,
        rows: usize,
        dim: usize,
        eps: f32,
        scratch: &mut Vec<f32>,
    ) -> Result<(), String> {
        scratch.clear();
        scratch.extend_from_slice(x);
        self.rms_norm(scratch, weight, rows, dim, eps, x)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        x: &mut [f32],
        n_tokens: usize,
        n_heads: usize,
        head_dim: usize,
        positions: &[i32],
        n_rot: usize,
        freq_base: f32,
        freq_scale: f32,
        mode: RopeMode,
    ) -> Result<(), String> {
        (self.kernels.rope())(
            RopeArgs {
                x: RSliceMut::from_mut_slice(x),
                n_tokens,
                n_heads,
                head_dim,
                token_stride: n_heads * head_dim,
                positions: RSlice::from_slice(positions),
                n_rot,
                freq_base,
                freq_scale,
                mode,
            },
            self.pool,
        )
        .into_result()
        .map_err(|e| format!("rope: {e}"))
    }

    /// Causal attention of a block of queries (contiguous `n_head × head_dim` rows) over one
    /// sequence's cache, into `out` (same layout as `q`).
    pub fn attention(&self, a: Attention<'_>, out: &mut [f32]) -> Result<(), String> {
        let row = a.n_head * a.head_dim;
        (self.kernels.attention())(
            AttentionArgs {
                q: RSlice::from_slice(a.q),
                q_stride: row,
                q_pos: RSlice::from_slice(a.q_pos),
                n_q: a.q_pos.len(),
                k: a.k,
                v: a.v,
                kv_len: a.kv_len,
                n_head: a.n_head,
                n_head_kv: a.n_head_kv,
                head_dim: a.head_dim,
                scale: a.scale,
                softcap: a.softcap,
                window: a.window,
                causal: true,
                out: RSliceMut::from_mut_slice(out),
                out_stride: row,
            },
            self.pool,
        )
        .into_result()
        .map_err(|e| format!("attention: {e}"))
    }

    /// `a op= b`, `b` one row broadcast over `rows` or the same shape as `a`.
    pub fn binary(
        &self,
        op: BinaryOp,
        a: &mut [f32],
        b: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<(), String> {
        (self.kernels.binary())(
            BinaryArgs {
                op,
                a: RSliceMut::from_mut_slice(a),
                b: RSlice::from_slice(b),
                rows,
                cols,
            },
            self.pool,
        )
        .into_result()
        .map_err(|e| format!("binary: {e}"))
    }

    pub fn unary(&self, op: UnaryOp, x: &mut [f32], param: f32) -> Result<(), String> {
        (self.kernels.unary())(
            UnaryArgs {
                op,
                x: RSliceMut::from_mut_slice(x),
                param,
            },
            self.pool,
        )
        .into_result()
        .map_err(|e| format!("unary: {e}"))
    }

    /// `gate = act(gate) · up`.
    pub fn glu(&self, kind: GluKind, gate: &mut [f32], up: &[f32]) -> Result<(), String> {
        (self.kernels.glu())(
            GluArgs {
                kind,
                gate: RSliceMut::from_mut_slice(gate),
                up: RSlice::from_slice(up),
            },
            self.pool,
        )
        .into_result()
        .map_err(|e| format!("glu: {e}"))
    }

    /// One row of a (possibly quantized) matrix as f32: embedding look-up.
    pub fn dequantize(&self, dtype: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), String> {
        (self.kernels.dequantize())(
            DequantizeArgs {
                dtype,
                src: RSlice::from_slice(src),
                dst: RSliceMut::from_mut_slice(dst),
            },
            self.pool,
        )
        .into_result()
        .map_err(|e| format!("dequantize: {e}"))
    }
}
