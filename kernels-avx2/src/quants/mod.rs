//! Quantized dot products on AVX2: the inner loops of every matmul.
//!
//! A weight type `T` pairs with an activation type `kernels_reference::quants::vec_dot_type(T)`
//! (Q8_0, Q8_1 or Q8_K; F16/BF16/F32 for float weights), exactly as in ggml. Activations are
//! quantized once per matmul input ([`quantize_activations`]) and every weight row is dotted
//! with them using integer multiply-adds (`maddubs`/`madd`), the block scales applied in f32.
//!
//! The unit of work is a *tile* ([`TileFn`]): all dot products between `nr` consecutive weight
//! rows and `nc` consecutive activation rows. Each type's tile function picks its own register
//! blocking (several weight rows × several activation rows per pass, so each unpacked weight
//! block is reused across activation rows and each activation block across weight rows); the
//! matmul driver only decides which tile each thread computes (cache blocking, threading).

/// Defines, for each `name: TYPE_TAG`, the safe [`TileFn`] `name` calling the invoking
/// module's `#[target_feature]` function `tile::<TYPE_TAG>`; for each `name = function`, one
/// calling that `#[target_feature]` function.
macro_rules! tile_fns {
    (@one $name:ident, $($target:tt)+) => {
        /// A [`TileFn`](super::TileFn) for this weight type.
        #[allow(clippy::too_many_arguments)]
        pub fn $name(
            _cpu: $crate::cpu::Avx2,
            k: usize,
            w: &[u8],
            w_stride: usize,
            nr: usize,
            x: &[u8],
            x_stride: usize,
            nc: usize,
            out: &mut [f32],
            out_stride: usize,
        ) {
            // SAFETY: `_cpu` proves avx2+fma+f16c.
            unsafe { $($target)+(k, w, w_stride, nr, x, x_stride, nc, out, out_stride) }
        }
    };
    ($($name:ident = $f:ident;)*) => {$(
        tile_fns!(@one $name, $f);
    )*};
    ($($name:ident: $t:expr;)*) => {$(
        tile_fns!(@one $name, tile::<{ $t }>);
    )*};
}

pub mod act;
pub mod float;
mod kdecode;
pub mod kquants;
mod kshared;
pub mod legacy;
pub mod x8;

use crate::cpu::Avx2;
use plugin_api::GgmlType;

/// Computes `out[c * out_stride + r] = dot(weight row r, activation row c)` for `r < nr`,
/// `c < nc`, each row holding `k` elements (a whole number of blocks):
///
/// * weight row `r` is `w[r * w_stride ..][.. row_bytes(k)]` in the weight type's GGUF layout;
/// * activation row `c` is `x[c * x_stride ..][.. row_bytes(k)]`, already quantized to the
///   type's `vec_dot_type` by [`quantize_activations`].
///
/// Any `nr >= 1` and `nc >= 1` must work; the caller guarantees the slices hold every row.
/// Results agree with `kernels_reference::quants::vec_dot` up to float summation order.
pub type TileFn = fn(
    cpu: Avx2,
    k: usize,
    w: &[u8],
    w_stride: usize,
    nr: usize,
    x: &[u8],
    x_stride: usize,
    nc: usize,
    out: &mut [f32],
    out_stride: usize,
);

/// The tile function for weights of type `t`, or `None` when this plugin has no SIMD path for
/// it (the matmul then falls back to the scalar `vec_dot`).
pub fn tile_fn(t: GgmlType) -> Option<TileFn> {
    Some(match t {
        GgmlType::Q4_0 => legacy::tile_q4_0,
        GgmlType::Q4_1 => legacy::tile_q4_1,
        GgmlType::Q5_0 => legacy::tile_q5_0,
        GgmlType::Q5_1 => legacy::tile_q5_1,
        GgmlType::Q8_0 => legacy::tile_q8_0,
        GgmlType::Q4_K => kquants::tile_q4_k,
        GgmlType::Q5_K => kquants::tile_q5_k,
        GgmlType::Q6_K => kquants::tile_q6_k,
        GgmlType::F32 => float::tile_f32,
        GgmlType::F16 => float::tile_f16,
        GgmlType::BF16 => float::tile_bf16,
        _ => return None,
    })
}

/// Quantizes one activation row (`src.len()` floats, whole blocks) to `t` — the weight type's
/// `vec_dot_type` — into `dst` (`t.row_bytes(src.len())` bytes). Byte-identical to
/// `kernels_reference::quants::quantize_activations`.
pub fn quantize_activations(
    cpu: Avx2,
    t: GgmlType,
    src: &[f32],
    dst: &mut [u8],
) -> Result<(), String> {
    match t {
        GgmlType::Q8_0 => act::quantize_q8_0(cpu, src, dst),
        GgmlType::Q8_1 => act::quantize_q8_1(cpu, src, dst),
        GgmlType::Q8_K => kquants::quantize_q8_k(cpu, src, dst),
        GgmlType::F16 => float::quantize_f16(cpu, src, dst),
        _ => return kernels_reference::quants::quantize_activations(t, src, dst),
    }
    Ok(())
}
