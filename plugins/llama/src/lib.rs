//! The Llama family (`general.architecture = "llama"`): pre-norm blocks, RoPE on adjacent
//! pairs (GGUF's Llama conversion permutes Q/K for it), SwiGLU, optional tied embeddings.

use arch_common::decoder::{Decoder, Dims, Family};
use arch_common::hparams::HParams;
use plugin_api::{ArchImpl, ArchInfo, GluKind, LoadArgs, RopeMode};

pub struct Llama;

impl ArchImpl for Llama {
    type Model = Decoder;

    fn info() -> ArchInfo {
        ArchInfo {
            name: "arch-llama".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            architectures: vec!["llama".into()].into(),
        }
    }

    fn load(args: LoadArgs<'_>) -> Result<Decoder, String> {
        let tensors = args.tensors.as_slice();
        let hp = HParams::new(&args.metadata, "llama");
        let dims = Dims::read(&hp, tensors, 10_000.0, |_, plan| plan)?;
        let family = Family {
            architecture: "llama".into(),
            rope_mode: RopeMode::Normal,
            ffn: GluKind::Silu,
            scale_embeddings: false,
            qk_norm: false,
            post_norms: false,
            attn_softcap: 0.0,
            final_softcap: 0.0,
        };
        Decoder::load(family, dims, tensors)
    }
}

plugin_api::export_arch_plugin!(impl = Llama, name = "arch-llama");
