//! The Gemma family: `gemma`, `gemma2` and `gemma3`, their differences as data.
//!
//! All three: embeddings scaled by √n_embd, GeGLU (tanh GELU) feed-forward, NeoX RoPE, tied
//! embeddings, and RMSNorm with `(1 + w)`: the GGUF converter stores `1 + w`, so the weights
//! are used as stored, as llama.cpp does.
//! - Gemma 2 adds norms after attention and after the feed-forward, soft-capping of attention
//!   scores (`attn_logit_softcapping`, default 50) and of the final logits
//!   (`final_logit_softcapping`, default 30), and a sliding window on every other layer
//!   (even layers local).
//! - Gemma 3 keeps the post-norms, drops soft-capping, adds an RMSNorm of every query and key
//!   head (QK-norm), and has five local (sliding-window) layers for each global one; local
//!   layers use RoPE base 10 000, global ones the model's `rope.freq_base` and scaling.

use arch_common::decoder::{Decoder, Dims, Family, LayerPlan};
use arch_common::hparams::HParams;
use plugin_api::{ArchImpl, ArchInfo, GluKind, LoadArgs, RopeMode};

/// RoPE base of Gemma 3's local layers (llama.cpp's `rope_freq_base_train_swa`).
const GEMMA3_LOCAL_ROPE_BASE: f32 = 10_000.0;
/// One global layer in every this many (the last of each group).
const GEMMA3_SWA_PATTERN: usize = 6;

/// Layer counts of Gemma 2 27B and Gemma 3 27B.
const GEMMA2_27B_LAYERS: usize = 46;
const GEMMA3_27B_LAYERS: usize = 62;

pub struct Gemma;

fn family(architecture: &str, hp: &HParams<'_, '_>) -> Result<Family, String> {
    let gemma2 = architecture == "gemma2";
    let gemma3 = architecture == "gemma3";
    Ok(Family {
        ffn: GluKind::Gelu,
        scale_embeddings: true,
        qk_norm: gemma3,
        post_norms: gemma2 || gemma3,
        attn_softcap: if gemma2 {
            hp.f32_or("attn_logit_softcapping", 50.0)?
        } else {
            0.0
        },
        final_softcap: if gemma2 {
            hp.f32_or("final_logit_softcapping", 30.0)?
        } else {
            0.0
        },
        ..Family::plain(architecture, RopeMode::Neox)
    })
}

impl ArchImpl for Gemma {
    type Model = Decoder;

    fn info() -> ArchInfo {
        ArchInfo {
            name: "arch-gemma".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            architectures: vec!["gemma".into(), "gemma2".into(), "gemma3".into()].into(),
        }
    }

    fn load(args: LoadArgs<'_>) -> Result<Decoder, String> {
        let architecture = args.architecture.as_str();
        let tensors = args.tensors.as_slice();
        let hp = HParams::new(&args.metadata, architecture);
        let window = match architecture {
            "gemma" => 0,
            "gemma2" | "gemma3" => hp.count("attention.sliding_window")? as u32,
            other => return Err(format!("architecture '{other}' is not a Gemma")),
        };
        let plan = |i: usize, global: LayerPlan| match architecture {
            "gemma2" if i.is_multiple_of(2) => LayerPlan { window, ..global },
            "gemma3" if i % GEMMA3_SWA_PATTERN < GEMMA3_SWA_PATTERN - 1 => LayerPlan {
                rope_base: GEMMA3_LOCAL_ROPE_BASE,
                rope_scale: 1.0,
                window,
            },
            _ => global,
        };
        let mut dims = Dims::read(&hp, tensors, 10_000.0, plan)?;
        // The 27B models scale queries by 1/√(n_embd/n_head) instead of 1/√head_dim
        // (their query_pre_attn_scalar); GGUF has no key for it, so llama.cpp recognises them
        // by their layer count, and so do we.
        let n_layer = dims.layers.len();
        if (architecture == "gemma2" && n_layer == GEMMA2_27B_LAYERS)
            || (architecture == "gemma3" && n_layer == GEMMA3_27B_LAYERS)
        {
            dims.attn_scale = 1.0 / ((dims.n_embd / dims.n_head) as f32).sqrt();
        }
        Decoder::load(family(architecture, &hp)?, dims, tensors)
    }
}

plugin_api::export_arch_plugin!(impl = Gemma, name = "arch-gemma");
