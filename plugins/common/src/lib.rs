//! # arch-common: the shared core of the architecture plugins
//!
//! Llama, Qwen2 and the Gemma generations are all decoder-only transformers; they differ in a
//! handful of choices (biases on Q/K/V, norms around each block, the FFN activation, RoPE
//! layout, soft-capping, sliding-window layers, embedding scaling). Those choices are data
//! ([`decoder::Family`] and [`decoder::LayerPlan`]), and the forward pass is written once, in
//! [`decoder`]. Each plugin crate reads its family's hyper-parameters and builds that data.
//!
//! - [`hparams`]: typed, error-checked reading of GGUF metadata;
//! - [`tensors`]: finding tensors by name and checking their shapes;
//! - [`ops`]: safe calls into the kernel plugin's op table;
//! - [`decoder`]: the forward pass.

pub mod decoder;
pub mod hparams;
pub mod ops;
pub mod tensors;
