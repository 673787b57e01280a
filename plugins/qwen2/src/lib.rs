//! The Qwen2 family (`general.architecture = "qwen2"`, Qwen2 and Qwen2.5): like Llama, with
//! biases on Q, K and V (the decoder loads them when present), NeoX-style RoPE (split
//! halves), and tied embeddings in the small models.

use arch_common::decoder::{load_uniform, Decoder, Family};
use plugin_api::{ArchImpl, ArchInfo, LoadArgs, RopeMode};

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
        load_uniform(args, Family::plain("qwen2", RopeMode::Neox))
    }
}

plugin_api::export_arch_plugin!(impl = Qwen2, name = "arch-qwen2");
