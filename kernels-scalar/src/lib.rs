//! # kernels-scalar: the reference kernel plugin
//!
//! Portable, readable implementations of every op of the kernel table. They follow ggml's
//! reference (non-SIMD) code paths — activations quantized to the weight type's dot-product
//! partner, integer sums per block, float scaling in the same order — so that this plugin is
//! both a usable fallback on any CPU and the numerical oracle every SIMD kernel plugin is
//! property-tested against.
//!
//! Each op module has a `pub fn` that works on plain slices (what the oracle tests call) and
//! the plugin's `KernelImpl` entry point, which validates the ABI arguments with [`check`]
//! and splits the work over the host's pool.

pub mod attention;
pub mod check;
pub mod elementwise;
pub mod matmul;
pub mod norm;
pub mod quants;
pub mod rope;
pub mod split;

use plugin_api::{
    abi_stable::std_types::RVec, AttentionArgs, BinaryArgs, CpuInfo, DequantizeArgs, GgmlType,
    GluArgs, Isa, KernelImpl, KernelInfo, MatmulArgs, PoolRef, QuantizeArgs, RmsNormArgs, RopeArgs,
    SoftmaxArgs, UnaryArgs,
};

/// The reference kernels as a plugin.
pub struct ScalarKernels;

/// Weight types `matmul` accepts: every type except Q8_1, which ggml only uses for
/// activations (it has no Q8_1 weight path to match).
pub fn weight_types() -> Vec<GgmlType> {
    GgmlType::ALL
        .into_iter()
        .filter(|t| *t != GgmlType::Q8_1)
        .collect()
}

impl KernelImpl for ScalarKernels {
    fn info() -> KernelInfo {
        KernelInfo {
            name: "kernels-scalar".into(),
            isa: Isa::current(),
            required: plugin_api::CpuFeatures::EMPTY,
            version: env!("CARGO_PKG_VERSION").into(),
            weight_types: RVec::from(weight_types()),
        }
    }

    /// Runs anywhere, but any SIMD plugin that can run should win.
    fn score(_cpu: &CpuInfo) -> u32 {
        1
    }

    fn matmul(args: MatmulArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
        matmul::matmul_op(args, pool)
    }

    fn attention(args: AttentionArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
        attention::attention_op(args, pool)
    }

    fn rms_norm(args: RmsNormArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
        norm::rms_norm_op(args, pool)
    }

    fn rope(args: RopeArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
        rope::rope_op(args, pool)
    }

    fn softmax(args: SoftmaxArgs<'_>, _pool: &PoolRef<'_>) -> Result<(), String> {
        elementwise::softmax_op(args)
    }

    fn unary(args: UnaryArgs<'_>, _pool: &PoolRef<'_>) -> Result<(), String> {
        elementwise::unary_op(args)
    }

    fn binary(args: BinaryArgs<'_>, _pool: &PoolRef<'_>) -> Result<(), String> {
        elementwise::binary_op(args)
    }

    fn glu(args: GluArgs<'_>, _pool: &PoolRef<'_>) -> Result<(), String> {
        elementwise::glu_op(args)
    }

    fn dequantize(mut args: DequantizeArgs<'_>, _pool: &PoolRef<'_>) -> Result<(), String> {
        quants::dequantize_row(args.dtype, args.src.as_slice(), args.dst.as_mut_slice())
    }

    fn quantize(mut args: QuantizeArgs<'_>, _pool: &PoolRef<'_>) -> Result<(), String> {
        quants::quantize_row(args.dtype, args.src.as_slice(), args.dst.as_mut_slice())
    }
}

plugin_api::export_kernel_plugin!(impl = ScalarKernels, name = "kernels-scalar", requires = []);
