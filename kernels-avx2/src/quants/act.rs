//! Activation quantizers for the legacy types' dot products: Q8_0 and Q8_1.
//!
//! llama.cpp's x86 SIMD quantizer, byte for byte as `kernels_reference` states it: per block
//! of 32, `amax = max |x|` (NaNs skipped), `d = amax / 127`, multiplier `127 / amax` (0 for an
//! all-zero block), round half to even (`vroundps`), then the value saturated to i8. Q8_1 also
//! stores `s = d·Σq`. Both f16 fields go through one F16C conversion (round to nearest even,
//! like the reference's `fp32_to_fp16`, NaN included: the only NaN that can arise is
//! `s = inf·0`, the default NaN, which both turn into `0xFE00`).

use crate::cpu::Avx2;
use std::arch::x86_64::*;

/// Elements per block.
const QK: usize = 32;

/// Q8_0 blocks of `src` into `dst`; byte-identical to the scalar `quantize_activations`.
///
/// # Panics
/// If `src` is not whole blocks or `dst` is not exactly their size.
pub fn quantize_q8_0(_cpu: Avx2, src: &[f32], dst: &mut [u8]) {
    check_sizes(src, dst, 34);
    // SAFETY: `_cpu` proves avx2+fma+f16c.
    unsafe { quantize_avx2::<false>(src, dst) }
}

/// Q8_1 blocks of `src` into `dst`; byte-identical to the scalar `quantize_activations`.
///
/// # Panics
/// If `src` is not whole blocks or `dst` is not exactly their size.
pub fn quantize_q8_1(_cpu: Avx2, src: &[f32], dst: &mut [u8]) {
    check_sizes(src, dst, 36);
    // SAFETY: `_cpu` proves avx2+fma+f16c.
    unsafe { quantize_avx2::<true>(src, dst) }
}

fn check_sizes(src: &[f32], dst: &[u8], block_bytes: usize) {
    assert!(
        src.len().is_multiple_of(QK) && dst.len() == src.len() / QK * block_bytes,
        "{} floats into {} bytes: not whole blocks of {QK} -> {block_bytes}",
        src.len(),
        dst.len()
    );
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_avx2<const WITH_SUM: bool>(src: &[f32], dst: &mut [u8]) {
    let (qs_at, block_bytes) = if WITH_SUM { (4, 36) } else { (2, 34) };
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(block_bytes)) {
        let x: &[f32; QK] = x.try_into().expect("chunks of QK");
        let (d, sum) = quantize_block(x, (&mut b[qs_at..][..QK]).try_into().expect("32 bytes"));
        // d and s as halves in one conversion; the imm rounding mode (not MXCSR) rounds to
        // nearest even.
        let s = d * sum as f32;
        let halves = _mm_cvtsi128_si32(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_setr_ps(
            d, s, 0.0, 0.0,
        )))
        .to_le_bytes();
        let fields = if WITH_SUM { 4 } else { 2 };
        b[..fields].copy_from_slice(&halves[..fields]);
    }
}

/// Quantizes one block into `qs`; returns `(d, Σq)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_block(x: &[f32; QK], qs: &mut [u8; QK]) -> (f32, i32) {
    // SAFETY: `x` holds the 32 floats read.
    let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) });
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    // `maxps` returns its second operand when either is NaN: with the running maximum second,
    // NaN elements are skipped, as the reference's `f32::max` skips them.
    let mut lanes = _mm256_setzero_ps();
    for v in v {
        lanes = _mm256_max_ps(_mm256_and_ps(v, abs_mask), lanes);
    }
    let m = _mm_max_ps(
        _mm256_castps256_ps128(lanes),
        _mm256_extractf128_ps::<1>(lanes),
    );
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));

    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let id = _mm256_set1_ps(id);
    let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
    let q: [__m256i; 4] = std::array::from_fn(|i| {
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(v[i], id),
        );
        // The reference converts with Rust's saturating `as i32` (NaN → 0) and clamps to i8:
        // clamp in float, then zero the NaN lanes (`maxps` turned them into −128), so that
        // `cvtps2dq` never sees a value out of range (it would give i32::MIN, even for +inf).
        let clamped = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
        let ordered = _mm256_cmp_ps::<_CMP_ORD_Q>(r, r);
        _mm256_cvtps_epi32(_mm256_and_ps(clamped, ordered))
    });
    let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    let sum = _mm_add_epi32(
        _mm256_castsi256_si128(sum),
        _mm256_extracti128_si256::<1>(sum),
    );
    let sum = _mm_add_epi32(sum, _mm_unpackhi_epi64(sum, sum));
    let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b01>(sum));

    // The packs work within 128-bit lanes, leaving the groups of 4 elements in the order
    // 0,2,4,6,1,3,5,7; one dword permutation restores element order.
    let packed = _mm256_packs_epi16(
        _mm256_packs_epi32(q[0], q[1]),
        _mm256_packs_epi32(q[2], q[3]),
    );
    let packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: `qs` holds the 32 bytes written; unaligned store.
    unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), packed) };
    (d, _mm_cvtsi128_si32(sum))
}
