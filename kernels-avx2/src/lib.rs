//! # kernels-avx2: llmhost's kernels for x86-64 with AVX2, FMA and F16C
//!
//! Every op of the kernel table. Matmuls quantize their input once to 8 bits and use integer
//! dot products in register tiles ([`quants`]); prompt processing runs as a blocked GEMM
//! ([`matmul`]); attention is a single pass with online softmax straight over the f16 KV cache
//! ([`attention`]). Numerics follow `kernels-scalar` (the oracle every kernel here is
//! property-tested against) up to float summation order.
//!
//! `unsafe` lives here, as the design allows: SIMD intrinsics behind `#[target_feature]`
//! (callable only with a [`cpu::Avx2`] token) and the disjoint output writes of parallel tasks
//! ([`matmul`]); each block says why it is sound.

pub mod attention;
pub mod cpu;
mod disjoint;
pub mod elementwise;
pub mod matmul;
pub mod norm;
pub mod quants;
pub mod rope;

use plugin_api::{
    abi_stable::std_types::RVec, AttentionArgs, BinaryArgs, CpuFeatures, CpuInfo, DequantizeArgs,
    FusedMatmulArgs, GgmlType, GluArgs, Isa, KernelImpl, KernelInfo, MatmulArgs, PoolRef,
    PreparedWeight, QuantizeArgs, RmsNormArgs, RopeArgs, SoftmaxArgs, UnaryArgs, WeightRef,
};

/// The AVX2 kernels as a plugin.
pub struct Avx2Kernels;

/// The features every op needs, by their canonical names (also the manifest's `requires`).
const REQUIRED: [CpuFeatures; 3] = [CpuFeatures::AVX2, CpuFeatures::FMA, CpuFeatures::F16C];

impl KernelImpl for Avx2Kernels {
    fn info() -> KernelInfo {
        KernelInfo {
            name: "kernels-avx2".into(),
            isa: Isa::current(),
            required: REQUIRED.iter().fold(CpuFeatures::EMPTY, |a, &f| a.union(f)),
            version: env!("CARGO_PKG_VERSION").into(),
            // Every type: those without a SIMD path here run the reference dot product.
            weight_types: RVec::from(kernels_reference::weight_types()),
        }
    }

    /// Beats the scalar plugin (1) wherever it runs; an AVX-512 plugin should beat it.
    fn score(cpu: &CpuInfo) -> u32 {
        if REQUIRED.iter().all(|&f| cpu.features.contains(f)) {
            10
        } else {
            0
        }
    }

    fn matmul(args: MatmulArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
        matmul::matmul_op(args, pool)
    }

    fn fused_matmul(args: FusedMatmulArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
        matmul::fused_matmul_op(args, pool)
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

    fn softmax(args: SoftmaxArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
        elementwise::softmax_op(args, pool)
    }

    fn unary(args: UnaryArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
        elementwise::unary_op(args, pool)
    }

    fn binary(args: BinaryArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
        elementwise::binary_op(args, pool)
    }

    fn glu(args: GluArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
        elementwise::glu_op(args, pool)
    }

    /// Embedding look-ups: one row per token, not worth a SIMD path of its own.
    fn dequantize(mut args: DequantizeArgs<'_>, _pool: &PoolRef<'_>) -> Result<(), String> {
        kernels_reference::quants::dequantize_row(
            args.dtype,
            args.src.as_slice(),
            args.dst.as_mut_slice(),
        )
    }

    fn quantize(mut args: QuantizeArgs<'_>, _pool: &PoolRef<'_>) -> Result<(), String> {
        let (src, dst) = (args.src.as_slice(), args.dst.as_mut_slice());
        match args.dtype {
            // The activation formats: the SIMD quantizers (byte-identical to the reference).
            GgmlType::Q8_0 | GgmlType::Q8_1 | GgmlType::Q8_K => {
                let row_bytes = args.dtype.row_bytes(src.len());
                if row_bytes != Some(dst.len()) {
                    return Err(format!(
                        "{} floats do not quantize to {} bytes of {}",
                        src.len(),
                        dst.len(),
                        args.dtype.name()
                    ));
                }
                quants::quantize_activations(cpu::Avx2::get()?, args.dtype, src, dst)
            }
            t => kernels_reference::quants::quantize_row(t, src, dst),
        }
    }

    /// Q4_K, Q6_K and Q5_0 matrices (rows in multiples of 8) into groups of 8 interleaved rows
    /// ([`quants::x8`]): same size, fewer instructions per weight in both decode and prompt
    /// matmuls. Everything else stays zero-copy.
    fn prepare_weight(w: WeightRef<'_>) -> Result<Option<PreparedWeight>, String> {
        if w.layout != 0 || !quants::x8::can_repack(w.dtype, w.rows, w.cols) {
            return Ok(None);
        }
        let (layout, data) = quants::x8::repack(w.dtype, w.rows, w.cols, w.data.as_slice())?;
        Ok(Some(PreparedWeight {
            layout,
            data: RVec::from(data),
        }))
    }
}

plugin_api::export_kernel_plugin!(
    impl = Avx2Kernels,
    name = "kernels-avx2",
    requires = ["avx2", "fma", "f16c"]
);
