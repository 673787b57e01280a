//! GGML's tensor formats in plain, safe Rust: the reference every other kernel is held to.
//!
//! Each format is a sequence of fixed-size blocks (see [`GgmlType::block_size`] and
//! [`GgmlType::block_bytes`]); the byte layouts are those of `ggml-common.h`, little-endian.
//! The code follows ggml's reference C code (llama.cpp b11312, as vendored by
//! llama-cpp-python 0.3.36) operation for operation, so that results agree bit for bit:
//!
//! * [`dequantize_row`] — `dequantize_row_*` of `ggml-quants.c`;
//! * [`quantize_row`] — the `quantize_row_*_ref` reference quantizers of `ggml-quants.c`
//!   (the ones used to make model files deterministically, and the activation quantizers'
//!   reference), and ggml's FP32→FP16/BF16 conversions;
//! * [`vec_dot`] — the scalar `ggml_vec_dot_*_generic` functions of `ggml-cpu/quants.c` and
//!   the scalar `ggml_vec_dot_f16/bf16/f32` of `ggml-cpu/vec.cpp`: integer sums per block,
//!   then float scaling in the same order and with the same intermediate roundings.
//!
//! Where the C code converts floats to small integers (`(int8_t)f`, `(uint8_t)f`), C leaves
//! out-of-range values undefined; we reproduce what x86-64 does (`cvttss2si`, then keep the
//! low byte), so even degenerate inputs give the bytes llama.cpp gives on x86-64.
//!
//! Not in ggml, defined here for completeness: dequantizing Q8_1 (`qs[i] * d`, as Q8_0), and
//! `vec_dot` with Q8_1 or Q8_K *weights* (`sumi * (dx * dy)` per block). No model file stores
//! weights in those types; they are activation formats.

// The block code indexes several arrays with one index, exactly like the C it mirrors.
#![allow(clippy::needless_range_loop)]

mod float;
mod k_quantize;
mod k_quants;
mod legacy;

pub use float::{bf16_to_fp32, fp16_to_fp32, fp32_to_bf16, fp32_to_fp16};
use plugin_api::GgmlType;

/// Dequantizes one row: `dst.len()` elements from `src`, which must hold exactly
/// `t.row_bytes(dst.len())` bytes.
pub fn dequantize_row(t: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), String> {
    check_bytes(t, dst.len(), src.len(), "source")?;
    match t {
        GgmlType::F32 => float::dequantize_f32(src, dst),
        GgmlType::F16 => float::dequantize_f16(src, dst),
        GgmlType::BF16 => float::dequantize_bf16(src, dst),
        GgmlType::Q4_0 => legacy::dequantize_q4_0(src, dst),
        GgmlType::Q4_1 => legacy::dequantize_q4_1(src, dst),
        GgmlType::Q5_0 => legacy::dequantize_q5_0(src, dst),
        GgmlType::Q5_1 => legacy::dequantize_q5_1(src, dst),
        GgmlType::Q8_0 => legacy::dequantize_q8_0(src, dst),
        GgmlType::Q8_1 => legacy::dequantize_q8_1(src, dst),
        GgmlType::Q2_K => k_quants::dequantize_q2_k(src, dst),
        GgmlType::Q3_K => k_quants::dequantize_q3_k(src, dst),
        GgmlType::Q4_K => k_quants::dequantize_q4_k(src, dst),
        GgmlType::Q5_K => k_quants::dequantize_q5_k(src, dst),
        GgmlType::Q6_K => k_quants::dequantize_q6_k(src, dst),
        GgmlType::Q8_K => k_quants::dequantize_q8_k(src, dst),
    }
    Ok(())
}

/// Quantizes one row of `src.len()` floats into `dst`, which must hold exactly
/// `t.row_bytes(src.len())` bytes. Every type is supported; the results are those of
/// ggml's reference quantizers (`quantize_row_*_ref`).
pub fn quantize_row(t: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), String> {
    check_bytes(t, src.len(), dst.len(), "destination")?;
    match t {
        GgmlType::F32 => float::quantize_f32(src, dst),
        GgmlType::F16 => float::quantize_f16(src, dst),
        GgmlType::BF16 => float::quantize_bf16(src, dst),
        GgmlType::Q4_0 => legacy::quantize_q4_0(src, dst),
        GgmlType::Q4_1 => legacy::quantize_q4_1(src, dst),
        GgmlType::Q5_0 => legacy::quantize_q5_0(src, dst),
        GgmlType::Q5_1 => legacy::quantize_q5_1(src, dst),
        GgmlType::Q8_0 => legacy::quantize_q8_0(src, dst),
        GgmlType::Q8_1 => legacy::quantize_q8_1(src, dst),
        GgmlType::Q2_K => k_quantize::quantize_q2_k(src, dst),
        GgmlType::Q3_K => k_quantize::quantize_q3_k(src, dst),
        GgmlType::Q4_K => k_quantize::quantize_q4_k(src, dst),
        GgmlType::Q5_K => k_quantize::quantize_q5_k(src, dst),
        GgmlType::Q6_K => k_quantize::quantize_q6_k(src, dst),
        GgmlType::Q8_K => k_quantize::quantize_q8_k(src, dst),
    }
    Ok(())
}

/// Quantizes a row of activations for a dot product, the way llama.cpp's CPU backend does
/// on x86: like [`quantize_row`], except Q8_0 and Q8_1, which follow its SIMD quantizer
/// (see `legacy::quantize_q8_block_x86`). Storage (weights, files) uses [`quantize_row`].
pub fn quantize_activations(t: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), String> {
    check_bytes(t, src.len(), dst.len(), "destination")?;
    match t {
        GgmlType::Q8_0 => legacy::quantize_q8_0_activations(src, dst),
        GgmlType::Q8_1 => legacy::quantize_q8_1_activations(src, dst),
        _ => return quantize_row(t, src, dst),
    }
    Ok(())
}

/// The type activations are quantized to before a dot product with weights of type `t`
/// (`vec_dot_type` of ggml-cpu's `type_traits_cpu`).
pub const fn vec_dot_type(t: GgmlType) -> GgmlType {
    match t {
        GgmlType::F32 => GgmlType::F32,
        GgmlType::F16 => GgmlType::F16,
        GgmlType::BF16 => GgmlType::BF16,
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => GgmlType::Q8_0,
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 => GgmlType::Q8_1,
        // ggml leaves Q8_K without a vec_dot_type (it is never a weight type); Q8_K is the
        // natural partner.
        GgmlType::Q2_K
        | GgmlType::Q3_K
        | GgmlType::Q4_K
        | GgmlType::Q5_K
        | GgmlType::Q6_K
        | GgmlType::Q8_K => GgmlType::Q8_K,
    }
}

/// Dot product of one weight row `w` of type `t` (`n` elements) with one activation row `x`
/// already quantized to [`vec_dot_type`]`(t)`, computed the way ggml's scalar
/// `ggml_vec_dot_*` functions compute it.
pub fn vec_dot(t: GgmlType, n: usize, w: &[u8], x: &[u8]) -> Result<f32, String> {
    check_bytes(t, n, w.len(), "weight row")?;
    check_bytes(vec_dot_type(t), n, x.len(), "activation row")?;
    Ok(match t {
        GgmlType::F32 => float::vec_dot_f32(w, x),
        GgmlType::F16 => float::vec_dot_f16(w, x),
        GgmlType::BF16 => float::vec_dot_bf16(w, x),
        GgmlType::Q4_0 => legacy::vec_dot_q4_0_q8_0(w, x),
        GgmlType::Q4_1 => legacy::vec_dot_q4_1_q8_1(w, x),
        GgmlType::Q5_0 => legacy::vec_dot_q5_0_q8_0(w, x),
        GgmlType::Q5_1 => legacy::vec_dot_q5_1_q8_1(w, x),
        GgmlType::Q8_0 => legacy::vec_dot_q8_0_q8_0(w, x),
        GgmlType::Q8_1 => legacy::vec_dot_q8_1_q8_1(w, x),
        GgmlType::Q2_K => k_quants::vec_dot_q2_k_q8_k(w, x),
        GgmlType::Q3_K => k_quants::vec_dot_q3_k_q8_k(w, x),
        GgmlType::Q4_K => k_quants::vec_dot_q4_k_q8_k(w, x),
        GgmlType::Q5_K => k_quants::vec_dot_q5_k_q8_k(w, x),
        GgmlType::Q6_K => k_quants::vec_dot_q6_k_q8_k(w, x),
        GgmlType::Q8_K => k_quants::vec_dot_q8_k_q8_k(w, x),
    })
}

/// Checks that `n` elements of `t` fill whole blocks and take exactly `len` bytes.
fn check_bytes(t: GgmlType, n: usize, len: usize, what: &str) -> Result<(), String> {
    let name = t.name();
    let expected = t.row_bytes(n).ok_or_else(|| {
        format!(
            "{n} elements is not a whole number of {name} blocks of {}",
            t.block_size()
        )
    })?;
    if len != expected {
        return Err(format!(
            "{what}: a {name} row of {n} elements takes {expected} bytes, got {len}"
        ));
    }
    Ok(())
}

// ---- little-endian field access (callers pass whole blocks, so offsets are in range) ----

fn f16_at(b: &[u8], off: usize) -> f32 {
    fp16_to_fp32(u16::from_le_bytes([b[off], b[off + 1]]))
}

fn put_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&fp32_to_fp16(v).to_le_bytes());
}

fn f32_at(b: &[u8], off: usize) -> f32 {
    f32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn i16_at(b: &[u8], off: usize) -> i16 {
    i16::from_le_bytes([b[off], b[off + 1]])
}

// ---- C's float-to-integer conversions, as x86-64 performs them ----

/// `(int32_t)f` as `cvttss2si` computes it: truncation toward zero, and the "integer
/// indefinite" value `i32::MIN` for NaN and out-of-range inputs.
fn c_trunc_i32(f: f32) -> i32 {
    if f > -2_147_483_904.0 && f < 2_147_483_648.0 {
        f as i32
    } else {
        i32::MIN
    }
}

/// `(int8_t)f`: the 32-bit conversion, then the low byte (what the compiler emits).
fn c_f32_to_i8(f: f32) -> i8 {
    c_trunc_i32(f) as i8
}

/// `(uint8_t)f`: the 32-bit conversion, then the low byte.
fn c_f32_to_u8(f: f32) -> u8 {
    c_trunc_i32(f) as u8
}

/// ggml's `nearest_int`: rounds to nearest, ties to even, for |f| < 2^22 via the
/// 1.5·2^23 trick (bit-exact for every input, including the ones it was not meant for).
fn nearest_int(f: f32) -> i32 {
    let v = f + 12_582_912.0;
    (v.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-2.6), -3);
        assert_eq!(nearest_int(126.9), 127);
    }

    #[test]
    fn c_conversions_follow_x86() {
        assert_eq!(c_f32_to_i8(8.9), 8);
        assert_eq!(c_f32_to_i8(-0.9), 0);
        assert_eq!(c_f32_to_i8(f32::NAN), 0);
        assert_eq!(c_f32_to_i8(f32::INFINITY), 0);
        assert_eq!(c_f32_to_i8(300.0), 44);
        assert_eq!(c_f32_to_u8(255.5), 255);
        assert_eq!(c_trunc_i32(-2_147_483_648.0), i32::MIN);
        assert_eq!(c_trunc_i32(2_147_483_520.0), 2_147_483_520);
    }
}
