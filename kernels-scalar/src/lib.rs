//! # kernels-scalar: the reference kernel plugin
//!
//! The plugin face of [`kernels_reference`]: portable implementations of every op, usable on
//! any CPU, and the numerical oracle every SIMD kernel plugin is tested against. The code
//! lives in that library (re-exported here whole) so other plugins can link it without
//! linking this plugin's exported symbols.

pub use kernels_reference::*;

use plugin_api::{
    abi_stable::std_types::RVec, AttentionArgs, BinaryArgs, CpuInfo, DequantizeArgs, GluArgs, Isa,
    KernelImpl, KernelInfo, MatmulArgs, PoolRef, QuantizeArgs, RmsNormArgs, RopeArgs, SoftmaxArgs,
    UnaryArgs,
};

/// The reference kernels as a plugin.
pub struct ScalarKernels;

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
