//! Decode dot products of the K-quants our Q4_K_M models are made of, Q4_K and Q6_K: one
//! weight row against one Q8_K activation row, the way ggml's AVX2 `vec_dot` computes them.
//! On weights streamed from DRAM (`time_decode_matmul_streaming` in `tests/matmul_props.rs`)
//! Q6_K ran 14–18 GB/s here against ~12 GB/s in the tile kernel's one-row path; Q4_K ran
//! 9–16 GB/s against 11–13 (within this machine's noise; kept for its fewer instructions).
//! Q5_K decode stays on the tile kernel's one-row path.
//!
//! Decode reads every weight once, so what matters is instructions per byte streamed: each
//! super-block's integer sums go into a vector accumulator with one FMA by `d·d_x` (no
//! horizontal reduction until the row ends), and the rows are prefetched ahead in software
//! (the hardware prefetcher alone left these loops waiting on DRAM). Accumulating in f32
//! across super-blocks rounds exactly like llama.cpp, a few parts in 10⁴ of Σ|w·x| from an
//! exact sum on rows whose terms cancel; the prompt GEMM ([`super::kquants`]) keeps exact
//! integer totals per super-block instead, where the wider register blocks pay for it.

use super::kshared::{load16, load32, Q8K_BSUMS, Q8K_BYTES, Q8K_QS};
use std::arch::x86_64::*;

/// How far ahead of the super-block being read its row is prefetched, in bytes.
const PREFETCH: usize = 4096;

/// Prefetches the cache lines `PREFETCH` bytes past the start of a `len`-byte block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch_ahead(block: &[u8], len: usize) {
    let p = block.as_ptr().wrapping_add(PREFETCH);
    // A hint: never faults, whatever the address.
    let mut off = 0;
    while off < len {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off).cast());
        off += 64;
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[inline]
fn f16_at(b: &[u8], off: usize) -> f32 {
    half::f16::from_le_bytes([b[off], b[off + 1]]).to_f32()
}

#[inline]
fn f32_at(b: &[u8], off: usize) -> f32 {
    f32::from_le_bytes(b[off..][..4].try_into().unwrap())
}

/// `pshufb` masks broadcasting 16-bit lane `i` (of 8) to every lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn broadcast_i16_mask(i: i8) -> __m256i {
    let (lo, hi) = (2 * i, 2 * i + 1);
    _mm256_setr_epi8(
        lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo,
        hi, lo, hi, lo, hi, lo, hi, lo, hi,
    )
}

#[inline]
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..][..4].try_into().unwrap())
}

/// Q4_K (`d, dmin: f16`, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles) · Q8_K,
/// over `nb` super-blocks: `Σ d_x·(d·Σ_j sc_j·Σ q·y − dmin·Σ_j m_j·bsum_j)`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q4_k(nb: usize, w: &[u8], x: &[u8]) -> f32 {
    const BB: usize = 144;
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let m4 = _mm256_set1_epi8(0x0f);
    let masks = [
        broadcast_i16_mask(0),
        broadcast_i16_mask(1),
        broadcast_i16_mask(2),
        broadcast_i16_mask(3),
        broadcast_i16_mask(4),
        broadcast_i16_mask(5),
        broadcast_i16_mask(6),
        broadcast_i16_mask(7),
    ];
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm_setzero_ps();
    for i in 0..nb {
        let b = &w[i * BB..][..BB];
        let y = &x[i * Q8K_BYTES..][..Q8K_BYTES];
        prefetch_ahead(b, BB);
        // d and dmin through F16C, times d_x (dmin negated: the min term is subtracted).
        let dm = _mm_mul_ps(
            _mm_cvtph_ps(_mm_cvtsi32_si128(u32_at(b, 0) as i32)),
            _mm_setr_ps(f32_at(y, 0), -f32_at(y, 0), 0.0, 0.0),
        );
        // The 6-bit scales and mins of the 8 sub-blocks (`get_scale_min_k4`), as 8 + 8 bytes.
        let (u0, u1, u2) = (u32_at(b, 4), u32_at(b, 8), u32_at(b, 12));
        let scales_lo = u0 & KMASK1;
        let scales_hi = (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4);
        let mins_lo = u1 & KMASK1;
        let mins_hi = ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4);
        let mins_and_scales = _mm256_cvtepu8_epi16(_mm_setr_epi32(
            scales_lo as i32,
            scales_hi as i32,
            mins_lo as i32,
            mins_hi as i32,
        ));
        // The min term through the activations' 16-element sums, paired to 32-element ones.
        let bsums = load32(y, Q8K_BSUMS);
        let q8s = _mm_hadd_epi16(
            _mm256_castsi256_si128(bsums),
            _mm256_extracti128_si256(bsums, 1),
        );
        let prod = _mm_madd_epi16(_mm256_extracti128_si256(mins_and_scales, 1), q8s);
        acc_m = _mm_fmadd_ps(_mm_shuffle_ps(dm, dm, 0x55), _mm_cvtepi32_ps(prod), acc_m);

        let sc = _mm256_castsi256_si128(mins_and_scales);
        let scales = _mm256_set_m128i(sc, sc);
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let scale_l = _mm256_shuffle_epi8(scales, masks[2 * j]);
            let scale_h = _mm256_shuffle_epi8(scales, masks[2 * j + 1]);
            let q4 = load32(b, 16 + 32 * j);
            let q4l = _mm256_and_si256(q4, m4);
            let q4h = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
            let p_l = _mm256_madd_epi16(
                scale_l,
                _mm256_maddubs_epi16(q4l, load32(y, Q8K_QS + 64 * j)),
            );
            let p_h = _mm256_madd_epi16(
                scale_h,
                _mm256_maddubs_epi16(q4h, load32(y, Q8K_QS + 64 * j + 32)),
            );
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_l, p_h));
        }
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dm), _mm256_cvtepi32_ps(sumi), acc);
    }
    let m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
    let m = _mm_add_ss(m, _mm_movehdup_ps(m));
    hsum(acc) + _mm_cvtss_f32(m)
}

/// Q6_K (128 bytes of low nibbles, 64 of high 2-bit pairs, 16 `i8` scales of 16 elements,
/// `d: f16`) · Q8_K over `nb` super-blocks. The weights' `−32` offset comes out of the
/// activations' 16-element sums once per super-block, `32·Σ_i sc_i·bsum_i`, subtracted from
/// the integer sums before they meet a float (as ggml's AVX2 code does); the 2-bit pairs go
/// into bit 4-5 of each byte with one mask and at most one shift each.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q6_k(nb: usize, w: &[u8], x: &[u8]) -> f32 {
    const BB: usize = 210;
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        let b = &w[i * BB..][..BB];
        let y = &x[i * Q8K_BYTES..][..Q8K_BYTES];
        prefetch_ahead(b, BB);
        let d = f32_at(y, 0) * f16_at(b, 208);
        let scales = load16(b, 192);
        // 32·Σ sc·bsum: one madd over the 16 scales and the 16 activation sums.
        let offset_term = _mm256_slli_epi32(
            _mm256_madd_epi16(load32(y, Q8K_BSUMS), _mm256_cvtepi8_epi16(scales)),
            5,
        );
        let mut sumi = _mm256_setzero_si256();
        for j in 0..2 {
            let hbits = load32(b, 128 + 32 * j);
            let ql1 = load32(b, 64 * j);
            let ql2 = load32(b, 64 * j + 32);
            // Element groups of this 128-element half: ql1 low nibbles + qh bits 0-1, ql2 low
            // + bits 2-3, ql1 high + bits 4-5, ql2 high + bits 6-7. Each pair of high bits is
            // masked where it lies, then moved to bits 4-5 (16-bit shifts: the masked-off
            // bits are all that crosses a byte).
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(ql1, m4),
                    _mm256_slli_epi16(_mm256_and_si256(hbits, _mm256_set1_epi8(0x03)), 4),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(ql2, m4),
                    _mm256_slli_epi16(_mm256_and_si256(hbits, _mm256_set1_epi8(0x0c)), 2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                    _mm256_and_si256(hbits, _mm256_set1_epi8(0x30)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql2, 4), m4),
                    _mm256_srli_epi16(_mm256_and_si256(hbits, _mm256_set1_epi8(-64)), 2),
                ),
            ];
            for (k, &qk) in q.iter().enumerate() {
                let yk = load32(y, Q8K_QS + 128 * j + 32 * k);
                // Unsigned 6-bit codes: |q·y + q·y| ≤ 2·63·128 fits i16.
                let p = _mm256_maddubs_epi16(qk, yk);
                // Scales 8j+2k (first 16 elements) and 8j+2k+1 (last 16), widened to i16.
                let s = (8 * j + 2 * k) as i8;
                let shuffle = _mm_setr_epi8(
                    s,
                    s,
                    s,
                    s,
                    s,
                    s,
                    s,
                    s,
                    s + 1,
                    s + 1,
                    s + 1,
                    s + 1,
                    s + 1,
                    s + 1,
                    s + 1,
                    s + 1,
                );
                let scale = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuffle));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale, p));
            }
        }
        let sumi = _mm256_sub_epi32(sumi, offset_term);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc)
}
