//! # kernels-reference: the numerical oracle of llmhost's kernels
//!
//! Portable, readable implementations of every op of the kernel table. They follow ggml's
//! reference (non-SIMD) code paths — activations quantized to the weight type's dot-product
//! partner, integer sums per block, float scaling in the same order — so that they are both a
//! usable fallback on any CPU (the `kernels-scalar` plugin) and the oracle every SIMD kernel
//! plugin is property-tested against.
//!
//! A library of its own, apart from the plugin: a plugin's exported symbols (manifest, root
//! module) may exist once per shared library, so SIMD plugins link this crate, never another
//! plugin.
//!
//! Each op module has a `pub fn` that works on plain slices (what the oracle tests call) and
//! an `*_op` entry point, which validates the ABI arguments with [`check`] and splits the work
//! over the host's pool.

pub mod attention;
pub mod check;
pub mod elementwise;
pub mod matmul;
pub mod norm;
pub mod quants;
pub mod rope;
pub mod split;

use plugin_api::GgmlType;

/// Weight types `matmul` accepts: every type except Q8_1, which ggml only uses for
/// activations (it has no Q8_1 weight path to match).
pub fn weight_types() -> Vec<GgmlType> {
    GgmlType::ALL
        .into_iter()
        .filter(|t| *t != GgmlType::Q8_1)
        .collect()
}
