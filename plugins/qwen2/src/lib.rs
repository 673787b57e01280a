//! The Qwen2 family (`general.architecture = "qwen2"`, Qwen2 and Qwen2.5): like Llama, with
//! biases on Q, K and V (loaded when present), NeoX-style RoPE (split halves), and tied
//! embeddings in the small models.

use arch_common::decoder::{Decoder, Dims, Family};
use arch_common::hparams::HParams;
use plugin_api::{ArchImpl, ArchInfo, GluKind, LoadArgs, RopeMode};

pub struct Qwen2;

impl ArchImpl for Qwen2 {
    type Model = Decoder;

    fn info() -> ArchInfo {
        ArchInfo {
            name: "arch-qwen2".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            architectures: vec!["qwen2".into()].into(),
        }
    }

    fn load(args: LoadArgs<'_>) -> Result<Decoder, String> {
        let tensors = args.tensors.as_slice();
        let hp = HParams::new(&args.metadata, "qwen2");
        let dims = Dims::read(&hp, tensors, 10_000.0, |_, plan| plan)?;
        let family = Family {
            architecture: "qwen2".into(),
            rope_mode: RopeMode::Neox,
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

plugin_api::export_arch_plugin!(impl = Qwen2, name = "arch-qwen2");
