//! F32, F16 and BF16 rows, and ggml's conversions between them.

use half::f16;

/// FP16 → FP32, exact (NaNs stay NaN with their payload, quieted — like ggml on x86-64).
pub fn fp16_to_fp32(h: u16) -> f32 {
    f16::from_bits(h).to_f32()
}

/// FP32 → FP16 exactly as ggml's `ggml_compute_fp32_to_fp16` (used by every reference
/// quantizer): round to nearest, ties to even; overflow to ±inf; any NaN becomes the
/// canonical quiet NaN `0x7E00` with the input's sign.
///
/// This is the C code's own trick — scaling by 2^112 and 2^-110 lets the FPU do the
/// rounding, also for results in the subnormal range — transcribed with bit operations.
pub fn fp32_to_fp16(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;

    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let bias = (shl1_w & 0xFF00_0000).max(0x7100_0000);

    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    ((sign >> 16)
        | if shl1_w > 0xFF00_0000 {
            0x7E00
        } else {
            nonsign
        }) as u16
}

/// BF16 → FP32, exact.
pub fn bf16_to_fp32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// FP32 → BF16 as ggml's `ggml_compute_fp32_to_bf16`: round to nearest, ties to even;
/// NaNs are truncated and forced quiet.
pub fn fp32_to_bf16(f: f32) -> u16 {
    let u = f.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

fn halves(src: &[u8]) -> impl Iterator<Item = u16> + '_ {
    src.chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
}

pub(super) fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

pub(super) fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    for (y, h) in dst.iter_mut().zip(halves(src)) {
        *y = fp16_to_fp32(h);
    }
}

pub(super) fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (y, h) in dst.iter_mut().zip(halves(src)) {
        *y = bf16_to_fp32(h);
    }
}

pub(super) fn quantize_f32(src: &[f32], dst: &mut [u8]) {
    for (b, x) in dst.chunks_exact_mut(4).zip(src) {
        b.copy_from_slice(&x.to_le_bytes());
    }
}

pub(super) fn quantize_f16(src: &[f32], dst: &mut [u8]) {
    for (b, x) in dst.chunks_exact_mut(2).zip(src) {
        b.copy_from_slice(&fp32_to_fp16(*x).to_le_bytes());
    }
}

pub(super) fn quantize_bf16(src: &[f32], dst: &mut [u8]) {
    for (b, x) in dst.chunks_exact_mut(2).zip(src) {
        b.copy_from_slice(&fp32_to_bf16(*x).to_le_bytes());
    }
}

// The scalar `ggml_vec_dot_{f32,f16,bf16}`: each product rounded to f32, the sum kept in
// f64 (`ggml_float`), the result rounded to f32 once at the end.

pub(super) fn vec_dot_f32(w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f64;
    for (a, b) in w.chunks_exact(4).zip(x.chunks_exact(4)) {
        let a = f32::from_le_bytes([a[0], a[1], a[2], a[3]]);
        let b = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        sum += (a * b) as f64;
    }
    sum as f32
}

pub(super) fn vec_dot_f16(w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f64;
    for (a, b) in halves(w).zip(halves(x)) {
        sum += (fp16_to_fp32(a) * fp16_to_fp32(b)) as f64;
    }
    sum as f32
}

pub(super) fn vec_dot_bf16(w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f64;
    for (a, b) in halves(w).zip(halves(x)) {
        sum += (bf16_to_fp32(a) * bf16_to_fp32(b)) as f64;
    }
    sum as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// Our transcription of ggml's FP16 rounding agrees with `half` (IEEE round to nearest
    /// even) on every non-NaN input sampled, and canonicalizes NaNs like ggml.
    #[test]
    fn fp32_to_fp16_matches_ieee_rounding() {
        let mut bits: u32 = 0;
        for _ in 0..(1u32 << 20) {
            bits = bits.wrapping_add(4093); // odd stride: visits every residue class
            let f = f32::from_bits(bits);
            if f.is_nan() {
                assert_eq!(fp32_to_fp16(f) & 0x7fff, 0x7E00);
            } else {
                assert_eq!(fp32_to_fp16(f), f16::from_f32(f).to_bits(), "{bits:#x}");
            }
        }
        for (f, h) in [
            (65520.0f32, 0x7C00u16), // rounds up to inf
            (65519.0, 0x7BFF),
            (-0.0, 0x8000),
            (5.960_464_5e-8, 0x0001), // smallest subnormal
            (2.980_232_2e-8, 0x0000), // half of it: ties to even (zero)
            (f32::INFINITY, 0x7C00),
            (f32::NEG_INFINITY, 0xFC00),
        ] {
            assert_eq!(fp32_to_fp16(f), h, "{f}");
        }
    }

    #[test]
    fn fp32_to_bf16_matches_ieee_rounding() {
        let mut bits: u32 = 0;
        for _ in 0..(1u32 << 20) {
            bits = bits.wrapping_add(4093);
            let f = f32::from_bits(bits);
            if f.is_nan() {
                assert!(bf16_to_fp32(fp32_to_bf16(f)).is_nan());
            } else {
                assert_eq!(fp32_to_bf16(f), bf16::from_f32(f).to_bits(), "{bits:#x}");
            }
        }
    }
}
