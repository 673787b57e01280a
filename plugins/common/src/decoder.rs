//! The forward pass of a decoder-only transformer, written once for every family.
//!
//! Per layer: `x += post_attn_norm?(attention(norm(x)))`, then
//! `x += post_ffn_norm?(down(act(gate(norm(x))) · up(norm(x))))`; the logits are
//! `softcap?(output(norm(x)))`. What differs between families is data: [`Family`] (fixed per
//! architecture) and [`LayerPlan`] (per layer: RoPE base, sliding window).
//!
//! A batch may mix tokens of several sequences: the matrix products run over the whole batch,
//! attention runs per sequence against that sequence's cache.

use crate::ops::{Attention, Ops, Product};
use crate::tensors::{self, MatrixId, TensorIndex};
use abi_stable::std_types::RSlice;
use plugin_api::{
    ArchModel, BinaryOp, ForwardArgs, GluKind, KvShape, ModelInfo, RopeMode, TensorRef, UnaryOp,
};

/// What an architecture fixes for all its models.
#[derive(Debug, Clone)]
pub struct Family {
    /// `general.architecture`
    pub architecture: String,
    pub rope_mode: RopeMode,
    /// The feed-forward gate's activation.
    pub ffn: GluKind,
    /// Multiply the embeddings by √n_embd (Gemma).
    pub scale_embeddings: bool,
    /// RMS-normalise each query and key head before RoPE, with its own weight (Gemma 3).
    pub qk_norm: bool,
    /// Norms after attention and after the feed-forward, before the residual add (Gemma 2, 3).
    pub post_norms: bool,
    /// `cap · tanh(score / cap)` on attention scores; 0 = off (Gemma 2).
    pub attn_softcap: f32,
    /// The same on the final logits; 0 = off (Gemma 2).
    pub final_softcap: f32,
}

impl Family {
    /// A Llama-like family: SwiGLU, no extra norms, no soft-capping, unscaled embeddings.
    pub fn plain(architecture: &str, rope_mode: RopeMode) -> Family {
        Family {
            architecture: architecture.into(),
            rope_mode,
            ffn: GluKind::Silu,
            scale_embeddings: false,
            qk_norm: false,
            post_norms: false,
            attn_softcap: 0.0,
            final_softcap: 0.0,
        }
    }
}

/// Loads a family whose layers are all global with the model's RoPE base (Llama, Qwen2).
pub fn load_uniform(args: plugin_api::LoadArgs<'_>, family: Family) -> Result<Decoder, String> {
    let tensors = args.tensors.as_slice();
    let hp = crate::hparams::HParams::new(&args.metadata, &family.architecture);
    let dims = Dims::read(&hp, tensors, 10_000.0, |_, plan| plan)?;
    Decoder::load(family, dims, tensors)
}

/// Per-layer choices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerPlan {
    pub rope_base: f32,
    pub rope_scale: f32,
    /// Sliding-window size; 0 = global attention.
    pub window: u32,
}

/// The dimensions of one model.
#[derive(Debug, Clone)]
pub struct Dims {
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_rot: usize,
    pub n_ctx_train: usize,
    pub norm_eps: f32,
    /// Multiplier of q·k (usually 1/√head_dim).
    pub attn_scale: f32,
    pub layers: Vec<LayerPlan>,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: MatrixId,
    wk: MatrixId,
    wv: MatrixId,
    wo: MatrixId,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: MatrixId,
    up: MatrixId,
    down: MatrixId,
    post_ffn_norm: Option<Vec<f32>>,
}

/// A loaded decoder: dimensions, family, small weights copied out (norms, biases), and the
/// indices of the matrices in the host's tensor table.
pub struct Decoder {
    family: Family,
    dims: Dims,
    n_tensors: usize,
    token_embd: MatrixId,
    output_norm: Vec<f32>,
    output: MatrixId,
    layers: Vec<Layer>,
}

fn load_vector(
    index: &TensorIndex,
    tensors: &[TensorRef<'_>],
    name: &str,
    len: usize,
) -> Result<Vec<f32>, String> {
    Ok(tensors::vector(tensors, index.vector(name, len)?))
}

fn load_optional(
    index: &TensorIndex,
    tensors: &[TensorRef<'_>],
    name: &str,
    len: usize,
    required: bool,
) -> Result<Option<Vec<f32>>, String> {
    if required {
        return load_vector(index, tensors, name, len).map(Some);
    }
    Ok(index
        .optional_vector(name, len)?
        .map(|id| tensors::vector(tensors, id)))
}

impl Decoder {
    /// Finds and checks every tensor the family needs.
    pub fn load(family: Family, dims: Dims, tensors: &[TensorRef<'_>]) -> Result<Decoder, String> {
        let d = &dims;
        if d.n_head == 0 || d.n_head_kv == 0 || !d.n_head.is_multiple_of(d.n_head_kv) {
            return Err(format!(
                "{} attention heads cannot be grouped over {} KV heads",
                d.n_head, d.n_head_kv
            ));
        }
        if d.n_rot > d.head_dim || !d.n_rot.is_multiple_of(2) {
            return Err(format!(
                "RoPE dimension {} must be even and at most the head size {}",
                d.n_rot, d.head_dim
            ));
        }
        let index = TensorIndex::new(tensors);
        let (e, q_dim, kv_dim) = (d.n_embd, d.n_head * d.head_dim, d.n_head_kv * d.head_dim);
        let token_embd = index.matrix("token_embd.weight", Some(e), None)?;
        if token_embd.rows != d.n_vocab {
            return Err(format!(
                "token_embd.weight has {} rows, the vocabulary {} tokens",
                token_embd.rows, d.n_vocab
            ));
        }
        // Tied embeddings: without output.weight the embedding matrix projects to logits.
        let output = if index.contains("output.weight") {
            index.matrix("output.weight", Some(e), Some(d.n_vocab))?
        } else {
            token_embd
        };
        let mut layers = Vec::with_capacity(d.layers.len());
        for i in 0..d.layers.len() {
            let name = |t: &str| format!("blk.{i}.{t}");
            let bias = |t: &str, len| load_optional(&index, tensors, &name(t), len, false);
            layers.push(Layer {
                attn_norm: load_vector(&index, tensors, &name("attn_norm.weight"), e)?,
                wq: index.matrix(&name("attn_q.weight"), Some(e), Some(q_dim))?,
                wk: index.matrix(&name("attn_k.weight"), Some(e), Some(kv_dim))?,
                wv: index.matrix(&name("attn_v.weight"), Some(e), Some(kv_dim))?,
                wo: index.matrix(&name("attn_output.weight"), Some(q_dim), Some(e))?,
                bq: bias("attn_q.bias", q_dim)?,
                bk: bias("attn_k.bias", kv_dim)?,
                bv: bias("attn_v.bias", kv_dim)?,
                q_norm: load_optional(
                    &index,
                    tensors,
                    &name("attn_q_norm.weight"),
                    d.head_dim,
                    family.qk_norm,
                )?,
                k_norm: load_optional(
                    &index,
                    tensors,
                    &name("attn_k_norm.weight"),
                    d.head_dim,
                    family.qk_norm,
                )?,
                post_attn_norm: load_optional(
                    &index,
                    tensors,
                    &name("post_attention_norm.weight"),
                    e,
                    family.post_norms,
                )?,
                ffn_norm: load_vector(&index, tensors, &name("ffn_norm.weight"), e)?,
                gate: index.matrix(&name("ffn_gate.weight"), Some(e), Some(d.n_ff))?,
                up: index.matrix(&name("ffn_up.weight"), Some(e), Some(d.n_ff))?,
                down: index.matrix(&name("ffn_down.weight"), Some(d.n_ff), Some(e))?,
                post_ffn_norm: load_optional(
                    &index,
                    tensors,
                    &name("post_ffw_norm.weight"),
                    e,
                    family.post_norms,
                )?,
            });
        }
        Ok(Decoder {
            output_norm: load_vector(&index, tensors, "output_norm.weight", e)?,
            family,
            n_tensors: tensors.len(),
            token_embd,
            output,
            layers,
            dims,
        })
    }

    pub fn dims(&self) -> &Dims {
        &self.dims
    }

    fn forward_impl(&mut self, args: ForwardArgs<'_>) -> Result<(), String> {
        let ForwardArgs {
            tensors,
            batch,
            mut kv,
            kernels,
            pool,
            mut logits,
        } = args;
        let t = tensors.as_slice();
        if t.len() != self.n_tensors {
            return Err(format!(
                "the tensor table has {} tensors, the model was loaded with {}",
                t.len(),
                self.n_tensors
            ));
        }
        let n = batch.tokens.len();
        if batch.positions.len() != n || batch.seq_ids.len() != n || batch.want_logits.len() != n {
            return Err("batch arrays differ in length".into());
        }
        let d = &self.dims;
        let f = &self.family;
        let (e, hd) = (d.n_embd, d.head_dim);
        let (q_dim, kv_dim) = (d.n_head * hd, d.n_head_kv * hd);
        if let Some(&tok) = batch.tokens.iter().find(|&&t| t as usize >= d.n_vocab) {
            return Err(format!(
                "token id {tok} is outside the vocabulary of {}",
                d.n_vocab
            ));
        }
        if let Some(&p) = batch.positions.iter().find(|&&p| p < 0) {
            return Err(format!("negative position {p}"));
        }
        let n_out = batch.want_logits.iter().filter(|&&w| w).count();
        if logits.len() < n_out * d.n_vocab {
            return Err(format!(
                "logits buffer holds {} floats, {} rows of {} are wanted",
                logits.len(),
                n_out,
                d.n_vocab
            ));
        }
        let ops = Ops::new(kernels, &pool);
        let positions = batch.positions.as_slice();

        // Embeddings.
        let mut x = vec![0f32; n * e];
        let emb = tensors::weight(t, self.token_embd);
        // Rows are read straight from the bytes: only GGUF's layout makes sense here (the host
        // never offers the embedding table for repacking).
        if emb.layout != 0 {
            return Err(format!(
                "token_embd.weight was repacked by the kernel plugin (layout {}); embeddings need the GGUF layout",
                emb.layout
            ));
        }
        let row_bytes = emb
            .dtype
            .row_bytes(e)
            .ok_or("token_embd rows are not whole blocks")?;
        for (i, &tok) in batch.tokens.iter().enumerate() {
            let row = &emb.data.as_slice()[tok as usize * row_bytes..][..row_bytes];
            ops.dequantize(emb.dtype, row, &mut x[i * e..][..e])?;
        }
        if f.scale_embeddings {
            ops.unary(UnaryOp::Scale, &mut x, (e as f32).sqrt())?;
        }

        // Tokens grouped by sequence, in order of first appearance.
        let mut groups: Vec<(u32, Vec<usize>)> = Vec::new();
        for (i, &s) in batch.seq_ids.iter().enumerate() {
            match groups.iter_mut().find(|(seq, _)| *seq == s) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((s, vec![i])),
            }
        }

        let mut q = vec![0f32; n * q_dim];
        let mut k = vec![0f32; n * kv_dim];
        let mut v = vec![0f32; n * kv_dim];
        let mut attn = vec![0f32; n * q_dim];
        let mut o = vec![0f32; n * e];
        let mut gate = vec![0f32; n * d.n_ff];
        let mut up = vec![0f32; n * d.n_ff];
        let mut scratch = Vec::new();
        let mut q_seq = Vec::new();
        let mut out_seq = Vec::new();
        let mut pos_seq = Vec::new();

        for (l, (layer, plan)) in self.layers.iter().zip(&d.layers).enumerate() {
            // Attention.
            ops.fused_matmul(
                &x,
                n,
                e,
                Some((&layer.attn_norm, d.norm_eps)),
                vec![
                    product(t, layer.wq, layer.bq.as_deref(), &mut q),
                    product(t, layer.wk, layer.bk.as_deref(), &mut k),
                    product(t, layer.wv, layer.bv.as_deref(), &mut v),
                ],
            )?;
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                ops.rms_norm_in_place(
                    &mut q,
                    Some(qn),
                    n * d.n_head,
                    hd,
                    d.norm_eps,
                    &mut scratch,
                )?;
                ops.rms_norm_in_place(
                    &mut k,
                    Some(kn),
                    n * d.n_head_kv,
                    hd,
                    d.norm_eps,
                    &mut scratch,
                )?;
            }
            for (buf, heads) in [(&mut q, d.n_head), (&mut k, d.n_head_kv)] {
                ops.rope(
                    buf,
                    n,
                    heads,
                    hd,
                    positions,
                    d.n_rot,
                    plan.rope_base,
                    plan.rope_scale,
                    f.rope_mode,
                )?;
            }
            for i in 0..n {
                kv.store(
                    l as u32,
                    batch.seq_ids[i],
                    positions[i] as u32,
                    RSlice::from_slice(&k[i * kv_dim..][..kv_dim]),
                    RSlice::from_slice(&v[i * kv_dim..][..kv_dim]),
                )
                .into_result()
                .map_err(|e| format!("KV cache: {e}"))?;
            }
            for (seq, idx) in &groups {
                q_seq.clear();
                pos_seq.clear();
                for &i in idx {
                    q_seq.extend_from_slice(&q[i * q_dim..][..q_dim]);
                    pos_seq.push(positions[i]);
                }
                let kv_len = pos_seq.iter().copied().max().unwrap_or(0) as usize + 1;
                let view = kv
                    .view(l as u32, *seq, kv_len as u32)
                    .into_result()
                    .map_err(|e| format!("KV cache: {e}"))?;
                out_seq.clear();
                out_seq.resize(idx.len() * q_dim, 0.0);
                ops.attention(
                    Attention {
                        q: &q_seq,
                        q_pos: &pos_seq,
                        k: view.k,
                        v: view.v,
                        kv_len,
                        n_head: d.n_head,
                        n_head_kv: d.n_head_kv,
                        head_dim: hd,
                        scale: d.attn_scale,
                        softcap: f.attn_softcap,
                        window: plan.window,
                    },
                    &mut out_seq,
                )?;
                for (j, &i) in idx.iter().enumerate() {
                    attn[i * q_dim..][..q_dim].copy_from_slice(&out_seq[j * q_dim..][..q_dim]);
                }
            }
            self.project_residual(
                &ops,
                t,
                layer.wo,
                &attn,
                q_dim,
                n,
                &layer.post_attn_norm,
                &mut x,
                &mut o,
                &mut scratch,
            )?;

            // Feed-forward.
            ops.fused_matmul(
                &x,
                n,
                e,
                Some((&layer.ffn_norm, d.norm_eps)),
                vec![
                    product(t, layer.gate, None, &mut gate),
                    product(t, layer.up, None, &mut up),
                ],
            )?;
            ops.glu(f.ffn, &mut gate, &up)?;
            self.project_residual(
                &ops,
                t,
                layer.down,
                &gate,
                d.n_ff,
                n,
                &layer.post_ffn_norm,
                &mut x,
                &mut o,
                &mut scratch,
            )?;
        }

        // Logits of the wanted tokens.
        if n_out == 0 {
            return Ok(());
        }
        let mut last = Vec::with_capacity(n_out * e);
        for (i, &want) in batch.want_logits.iter().enumerate() {
            if want {
                last.extend_from_slice(&x[i * e..][..e]);
            }
        }
        let mut normed = vec![0f32; n_out * e];
        ops.rms_norm(
            &last,
            Some(&self.output_norm),
            n_out,
            e,
            d.norm_eps,
            &mut normed,
        )?;
        let out = &mut logits.as_mut_slice()[..n_out * d.n_vocab];
        ops.matmul(tensors::weight(t, self.output), &normed, n_out, out)?;
        if f.final_softcap > 0.0 {
            ops.unary(UnaryOp::Softcap, out, f.final_softcap)?;
        }
        Ok(())
    }
}

/// `out = w · x (+ bias)` as a product of [`Ops::fused_matmul`].
fn product<'a>(
    t: &'a [TensorRef<'a>],
    w: MatrixId,
    bias: Option<&'a [f32]>,
    out: &'a mut [f32],
) -> Product<'a> {
    Product {
        w: tensors::weight(t, w),
        bias,
        out,
        accumulate: false,
    }
}

impl Decoder {
    /// `x += post_norm?(w · input)`: the attention output and feed-forward down projections.
    /// Without a post-norm the residual add is fused into the matmul's epilogue.
    #[allow(clippy::too_many_arguments)]
    fn project_residual(
        &self,
        ops: &Ops<'_, '_>,
        t: &[TensorRef<'_>],
        w: MatrixId,
        input: &[f32],
        cols: usize,
        n: usize,
        post_norm: &Option<Vec<f32>>,
        x: &mut [f32],
        o: &mut [f32],
        scratch: &mut Vec<f32>,
    ) -> Result<(), String> {
        let e = self.dims.n_embd;
        match post_norm {
            None => ops.fused_matmul(
                input,
                n,
                cols,
                None,
                vec![Product {
                    w: tensors::weight(t, w),
                    bias: None,
                    out: x,
                    accumulate: true,
                }],
            ),
            Some(norm) => {
                ops.matmul(tensors::weight(t, w), input, n, o)?;
                ops.rms_norm_in_place(o, Some(norm), n, e, self.dims.norm_eps, scratch)?;
                ops.binary(BinaryOp::Add, x, o, n, e)
            }
        }
    }
}

impl ArchModel for Decoder {
    fn info(&self) -> ModelInfo {
        let d = &self.dims;
        ModelInfo {
            architecture: self.family.architecture.as_str().into(),
            n_vocab: d.n_vocab as u32,
            n_ctx_train: d.n_ctx_train as u32,
            kv: KvShape {
                n_layer: d.layers.len() as u32,
                k_dim: (d.n_head_kv * d.head_dim) as u32,
                v_dim: (d.n_head_kv * d.head_dim) as u32,
                head_dim: d.head_dim as u32,
            },
        }
    }

    fn forward(&mut self, args: ForwardArgs<'_>) -> Result<(), String> {
        self.forward_impl(args)
    }
}

impl Dims {
    /// Reads the keys every family shares (`<arch>.embedding_length`, `.block_count`,
    /// `.feed_forward_length`, `.attention.head_count[_kv]`, `.attention.key_length`,
    /// `.attention.layer_norm_rms_epsilon`, `.rope.dimension_count`, `.rope.freq_base`,
    /// `.context_length`); the vocabulary size comes from `token_embd.weight`. Every layer
    /// starts global with the model's RoPE base; `plan` adjusts layer `i` (sliding windows,
    /// local RoPE bases).
    pub fn read(
        hp: &crate::hparams::HParams<'_, '_>,
        tensors: &[TensorRef<'_>],
        default_rope_base: f32,
        plan: impl Fn(usize, LayerPlan) -> LayerPlan,
    ) -> Result<Dims, String> {
        let n_embd = hp.count("embedding_length")?;
        let n_head = hp.count("attention.head_count")?;
        let n_head_kv = hp.count_or("attention.head_count_kv", n_head)?;
        let head_dim = hp.count_or("attention.key_length", n_embd / n_head)?;
        let value_dim = hp.count_or("attention.value_length", head_dim)?;
        if value_dim != head_dim {
            return Err(format!(
                "key heads of {head_dim} and value heads of {value_dim} differ: not supported"
            ));
        }
        let n_vocab = tensors
            .iter()
            .find(|t| t.name.as_str() == "token_embd.weight")
            .map(|t| t.dims[1] as usize)
            .ok_or("tensor 'token_embd.weight' is missing from the model file")?;
        let base = LayerPlan {
            rope_base: hp.f32_or("rope.freq_base", default_rope_base)?,
            rope_scale: 1.0
                / hp.f32_or("rope.scaling.factor", 1.0)?
                    .max(f32::MIN_POSITIVE),
            window: 0,
        };
        let n_layer = hp.count("block_count")?;
        Ok(Dims {
            n_vocab,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: hp.count("feed_forward_length")?,
            n_rot: hp.count_or("rope.dimension_count", head_dim)?,
            n_ctx_train: hp.count_or("context_length", 2048)?,
            norm_eps: hp.f32("attention.layer_norm_rms_epsilon")?,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            layers: (0..n_layer).map(|i| plan(i, base)).collect(),
        })
    }
}
