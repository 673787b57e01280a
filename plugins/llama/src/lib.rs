//! The Llama family (`general.architecture = "llama"`): pre-norm blocks, RoPE on adjacent
//! pairs (GGUF's Llama conversion permutes Q/K for it), SwiGLU, optional tied embeddings.

use arch_common::decoder::{load_uniform, Decoder, Family};
use plugin_api::{ArchImpl, ArchInfo, LoadArgs, RopeMode};

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
        load_uniform(args, Family::plain("llama", RopeMode::Normal))
    }
}

plugin_api::export_arch_plugin!(impl = Llama, name = "arch-llama");
