//! K-quant weights (Q4_K, Q5_K, Q6_K) against Q8_K activations, and the Q8_K quantizer.
//!
//! The arithmetic is llama.cpp's: per 256-element super-block, the integer sums
//! `Σ_j sc_j · Σ q·y` over the 32-element vectors `j`, scaled once by `d·d_x` in f32;
//! Q4_K/Q5_K subtract `dmin·d_x·Σ_j m_j·(bsum_2j + bsum_2j+1)` using the activations' block
//! sums, and Q6_K folds its `−32` offset into `32·Σ_i sc_i·bsum_i` the same way (as ggml's
//! AVX2 code does), so every weight is an unsigned byte for `maddubs`. The block sums are
//! those [`quantize_q8_k`] writes; activations from anywhere else must carry true ones.
//!
//! The weights of vector `j` are unpacked to bytes, multiplied with the activations by
//! `maddubs` (byte pairs into i16), and weighted by the sub-block scale with `madd`
//! (`dot_scaled_acc`, the step a VNNI variant replaces). Per super-block, each (weight row,
//! activation row) pair's integer sums are reduced to exact totals before they meet a float
//! (`block_end`).
//!
//! Two paths:
//! * decode (`nc == 1`, `micro_direct`): every weight is used once, so super-blocks are
//!   decoded where they are used, `DECODE_ROWS` weight rows at a time;
//! * prompt tiles (`micro_packed`): a few weight rows' super-blocks are unpacked once per
//!   chunk of `k` into `Packed` form (bytes, `madd` multipliers, decoded scales) that stays
//!   in L1, and every block of `GEMM_COLS` activation rows walks it. The micro-kernel is
//!   then the same for the three types: `GEMM_ROWS × GEMM_COLS` integer accumulators, each
//!   loaded weight vector feeding `GEMM_COLS` multiply-adds and each activation vector
//!   `GEMM_ROWS`.
//!
//! The shapes were picked by timing (`time_kquant_tiles` in `tests/kquants_props.rs`): 2×4
//! and 4×2 tie for prompts, ahead of 2×2, 2×3 and 3×2 (which leave the super-block's fixed
//! costs to fewer pairs). Decode of Q4_K and Q6_K runs the ggml-style loops of `kdecode`;
//! Q5_K decode runs [`micro_direct`] one row at a time with a software prefetch
//! [`PREFETCH_BYTES`] ahead: on weights streamed from DRAM (`time_decode_matmul_streaming` in
//! `tests/matmul_props.rs`) one row reached ~12 GB/s where two rows at a time reached
//! 3–5 GB/s, though two rows win when the weights sit in L2.

// The register blocks index several arrays (rows, columns, slots) with one index.
#![allow(clippy::needless_range_loop)]

use super::kshared::{load16, load32, Q8K_BSUMS, Q8K_BYTES, Q8K_QS};
use crate::cpu::Avx2;
use plugin_api::QK_K;
use std::arch::x86_64::*;

/// The weight types, as const-generic tags (target-feature functions cannot be trait
/// methods, and const dispatch inlines to straight-line code per type).
const Q4_K: u8 = 0;
const Q5_K: u8 = 1;
const Q6_K: u8 = 2;

/// Bytes of one super-block of weight type `t`.
const fn block_bytes(t: u8) -> usize {
    match t {
        Q4_K => 144,
        Q5_K => 176,
        _ => 210,
    }
}

/// 32-element vectors per super-block.
const VECS: usize = QK_K / 32;

/// Weight rows × activation rows per pass of a prompt tile (`nc >= 2`).
const GEMM_ROWS: usize = 2;
const GEMM_COLS: usize = 4;
/// Super-blocks per packed chunk: `GEMM_ROWS` rows of them (576 bytes each) stay in L1.
const CHUNK: usize = 8;
/// How far ahead of the super-block being decoded its row is prefetched (decode).
const PREFETCH_BYTES: usize = 1024;

/// Weight rows per pass of a single-activation-row tile (decode).
const DECODE_ROWS: usize = 1;

/// One weight super-block's decoded scales.
#[derive(Clone, Copy)]
struct Header {
    /// The `madd` multipliers of vectors 0-3 and 4-7: dword `j % 4` of each 128-bit lane
    /// holds vector `j`'s multiplier pair, so one in-lane `pshufd` broadcasts it
    /// ([`vector_scales`]). Q4_K/Q5_K: scale `j` in both words, both lanes alike. Q6_K:
    /// scale `2j` (for the vector's low 16 elements) in the low lane, `2j+1` in the high.
    scales: [__m256i; 2],
    /// i16 weights of the activation block sums (the min/offset term). Q4_K/Q5_K: each min
    /// twice (`m0 m0 m1 m1 …`), one per 16-element block sum. Q6_K: the 16 scales in order.
    bsum_weights: __m256i,
    /// `[d, dmin, …]` (Q6_K: `[d, 0, …]`).
    dm: __m128,
}

/// One weight super-block unpacked for the prompt micro-kernel.
#[derive(Clone, Copy)]
struct Packed {
    /// Vector `j`'s weights as unsigned bytes.
    q: [__m256i; VECS],
    /// Vector `j`'s i16 `madd` multipliers.
    scales: [__m256i; VECS],
    bsum_weights: __m256i,
    dm: __m128,
}

#[inline]
fn f32_at(bytes: &[u8], off: usize) -> f32 {
    f32::from_le_bytes(bytes[off..][..4].try_into().unwrap())
}

#[inline]
fn u16_at(bytes: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(bytes[off..][..2].try_into().unwrap())
}

/// `v`, through an empty `asm!` that hides its value from the optimizer: the header keeps
/// its scales with both 128-bit lanes alike so that one in-lane `pshufd` broadcasts each,
/// and LLVM, seeing the duplication, would otherwise rewrite those into two-instruction
/// cross-lane broadcasts.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn opaque(mut v: __m256i) -> __m256i {
    // SAFETY: the template is empty: no instruction runs, no memory or flag is touched.
    unsafe {
        std::arch::asm!("/* {0} */", inout(ymm_reg) v, options(pure, nomem, nostack, preserves_flags))
    };
    v
}

/// 16-bit lanes shifted left by `n` bits, or right by `−n` (callers mask off what crosses
/// from the neighbouring byte). `n` derives from the vector index and folds to an
/// immediate once the vector loop is unrolled.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn shift16(v: __m256i, n: isize) -> __m256i {
    if n >= 0 {
        _mm256_sll_epi16(v, _mm_cvtsi32_si128(n as i32))
    } else {
        _mm256_srl_epi16(v, _mm_cvtsi32_si128(-n as i32))
    }
}

/// Decodes a weight super-block's header.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn header<const T: u8>(b: &[u8]) -> Header {
    if T == Q6_K {
        let sc = load16(b, 192);
        // Vector j's scales are 2j and 2j+1: as i16 pairs, vectors 0-3 take bytes
        // [0 0 2 2 4 4 6 6 | 1 1 3 3 5 5 7 7], vectors 4-7 those plus 8.
        let first = _mm_setr_epi8(0, 0, 2, 2, 4, 4, 6, 6, 1, 1, 3, 3, 5, 5, 7, 7);
        let second = _mm_add_epi8(first, _mm_set1_epi8(8));
        let pairs = [
            _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, first)),
            _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, second)),
        ];
        Header {
            scales: pairs,
            bsum_weights: _mm256_cvtepi8_epi16(sc),
            dm: _mm_cvtph_ps(_mm_cvtsi32_si128(u16_at(b, 208) as i32)),
        }
    } else {
        // `get_scale_min_k4` on the dwords [d|dmin, a, m, c] of the first 16 bytes: the low
        // 6 bits of a and m are scales and mins 0-3; the low and high nibbles of c the low
        // bits of scales and mins 4-7, whose top 2 bits are the top bits of a and m.
        let v = load16(b, 0);
        let dm = _mm_cvtph_ps(v);
        let nibbles = _mm_srlv_epi32(
            _mm_shuffle_epi32(v, 0b11_10_11_01),
            _mm_setr_epi32(0, 0, 0, 4),
        );
        let low = _mm_and_si128(
            nibbles,
            _mm_setr_epi32(0x3f3f_3f3f, 0x0f0f_0f0f, 0x3f3f_3f3f, 0x0f0f_0f0f),
        );
        let top = _mm_and_si128(
            _mm_srli_epi32(_mm_shuffle_epi32(v, 0b10_00_01_00), 2),
            _mm_setr_epi32(0, 0x3030_3030, 0, 0x3030_3030),
        );
        // Bytes: scales 0-7, then mins 0-7.
        let sm = _mm_or_si128(low, top);
        let sm = _mm256_broadcastsi128_si256(sm);
        // Both lanes [s0 s0 s1 s1 s2 s2 s3 s3] (i16) for vectors 0-3, [s4 s4 …] for 4-7.
        let z = -1i8;
        let scales = _mm256_shuffle_epi8(
            sm,
            _mm256_setr_epi8(
                0, z, 0, z, 1, z, 1, z, 2, z, 2, z, 3, z, 3, z, 4, z, 4, z, 5, z, 5, z, 6, z, 6, z,
                7, z, 7, z,
            ),
        );
        let mins = _mm_shuffle_epi8(
            _mm256_castsi256_si128(sm),
            _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15),
        );
        Header {
            scales: [
                opaque(_mm256_permute4x64_epi64(scales, 0b01_00_01_00)),
                opaque(_mm256_permute4x64_epi64(scales, 0b11_10_11_10)),
            ],
            bsum_weights: _mm256_cvtepu8_epi16(mins),
            dm,
        }
    }
}

/// The i16 `madd` multipliers of vector `j` (elements `32j..32j + 32`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn vector_scales(scales: &[__m256i; 2], j: usize) -> __m256i {
    let v = scales[j / 4];
    match j % 4 {
        0 => _mm256_shuffle_epi32(v, 0x00),
        1 => _mm256_shuffle_epi32(v, 0x55),
        2 => _mm256_shuffle_epi32(v, 0xaa),
        _ => _mm256_shuffle_epi32(v, 0xff),
    }
}

/// The weights of vector `j` as unsigned bytes: 0..=15 (Q4_K), 0..=31 (Q5_K), or 0..=63
/// (Q6_K, whose `−32` is applied through the block sums).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn weights<const T: u8>(b: &[u8], j: usize) -> __m256i {
    let m4 = _mm256_set1_epi8(0x0f);
    match T {
        Q4_K => _mm256_and_si256(
            shift16(load32(b, 16 + 32 * (j / 2)), -4 * (j % 2) as isize),
            m4,
        ),
        Q5_K => {
            let low = _mm256_and_si256(
                shift16(load32(b, 48 + 32 * (j / 2)), -4 * (j % 2) as isize),
                m4,
            );
            // Vector j's fifth bits are bit j of each `qh` byte, moved to bit 4.
            let high = _mm256_and_si256(
                shift16(load32(b, 16), 4 - j as isize),
                _mm256_set1_epi8(0x10),
            );
            _mm256_or_si256(low, high)
        }
        _ => {
            // 128-element half g = j/4: `ql` bytes 64g.. hold vectors 4g and 4g+2 (low and
            // high nibbles), 64g+32.. vectors 4g+1 and 4g+3; `qh` byte bits 2t..2t+1 are
            // the top bits of vector 4g+t, moved to bits 4-5.
            let (g, t) = (j / 4, j % 4);
            let ql = load32(b, 64 * g + 32 * (t % 2));
            let low = _mm256_and_si256(shift16(ql, -4 * (t / 2) as isize), m4);
            let high = _mm256_and_si256(
                shift16(load32(b, 128 + 32 * g), 4 - 2 * t as isize),
                _mm256_set1_epi8(0x30),
            );
            _mm256_or_si256(low, high)
        }
    }
}

/// Unpacks a weight super-block for [`micro_packed`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pack<const T: u8>(b: &[u8]) -> Packed {
    let h = header::<T>(b);
    let mut p = Packed {
        q: [_mm256_setzero_si256(); VECS],
        scales: [_mm256_setzero_si256(); VECS],
        bsum_weights: h.bsum_weights,
        dm: h.dm,
    };
    for j in 0..VECS {
        p.q[j] = weights::<T>(b, j);
        p.scales[j] = vector_scales(&h.scales, j);
    }
    p
}

/// `acc + Σ pairs of scale·(q·y)`: 32 unsigned weights `q` times 32 signed activations `y`
/// (`maddubs` into 16 i16, which cannot saturate: |q·y + q·y| ≤ 2·63·128), each i16 then
/// weighted by `scale` and pairs summed into i32 (`madd`). The integer-dot step, kept
/// separate so an AVX-512 VNNI variant can swap it for `vpdpwssd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_scaled_acc(acc: __m256i, q: __m256i, y: __m256i, scale: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), scale))
}

/// Integer totals are reduced and scaled eight at a time.
const SLOT_GROUP: usize = 8;
/// Most weight rows in a register block (their `d` and `−dmin` share one 4-lane vector).
const MAX_ROWS: usize = 2;
/// Most pairs in a register block (16 slots of totals).
const MAX_PAIRS: usize = 8;
const MAX_SLOTS: usize = 16;

/// Slots for the Q4_K/Q5_K quant sums of `pairs` pairs; their min sums follow.
const fn min_offset(pairs: usize) -> usize {
    if pairs <= 2 {
        2
    } else if pairs <= 4 {
        4
    } else {
        8
    }
}

/// Slots (integer totals per super-block) of a block of `pairs` pairs: Q6_K one per pair,
/// Q4_K/Q5_K a quant sum and a min sum per pair; 4, 8 or 16.
const fn n_slots(t: u8, pairs: usize) -> usize {
    if t == Q6_K {
        if pairs <= 4 {
            4
        } else {
            8
        }
    } else {
        2 * min_offset(pairs)
    }
}

/// What slot `s` of a `rows × cols` block holds: `(is a min sum, pair)`, pair
/// `p = c·rows + r`; `None` for padding.
const fn slot_pair(t: u8, rows: usize, cols: usize, s: usize) -> Option<(bool, usize)> {
    let pairs = rows * cols;
    let (min, p) = if t == Q6_K || s < min_offset(pairs) {
        (false, s)
    } else {
        (true, s - min_offset(pairs))
    };
    if p < pairs {
        Some((min, p))
    } else {
        None
    }
}

/// Where each slot of an `R × C` block finds its factors `d·d_x` (or `−dmin·d_x`), per slot
/// group: lane `i` indexes the row factors `[d_0, d_1, −dmin_0, −dmin_1]` (`rows`) and
/// the activation scales `[d_x0 …]` (`cols`).
#[derive(Clone, Copy)]
struct FactorIndices {
    rows: [__m256i; MAX_SLOTS / SLOT_GROUP],
    cols: [__m256i; MAX_SLOTS / SLOT_GROUP],
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn factor_indices<const T: u8, const R: usize, const C: usize>() -> FactorIndices {
    const { assert!(R <= MAX_ROWS && R * C <= MAX_PAIRS) };
    let mut rows = [[0i32; SLOT_GROUP]; MAX_SLOTS / SLOT_GROUP];
    let mut cols = rows;
    for s in 0..MAX_SLOTS {
        if let Some((min, p)) = slot_pair(T, R, C, s) {
            rows[s / SLOT_GROUP][s % SLOT_GROUP] = (p % R + if min { 2 } else { 0 }) as i32;
            cols[s / SLOT_GROUP][s % SLOT_GROUP] = (p / R) as i32;
        }
    }
    let mut f = FactorIndices {
        rows: [_mm256_setzero_si256(); MAX_SLOTS / SLOT_GROUP],
        cols: [_mm256_setzero_si256(); MAX_SLOTS / SLOT_GROUP],
    };
    for g in 0..MAX_SLOTS / SLOT_GROUP {
        // SAFETY: each source is an array of 8 i32 (32 bytes); the loads are unaligned.
        unsafe {
            f.rows[g] = _mm256_loadu_si256(rows[g].as_ptr().cast());
            f.cols[g] = _mm256_loadu_si256(cols[g].as_ptr().cast());
        }
    }
    f
}

/// Lane `i` is the sum of the eight lanes of `v[i]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce8(v: &[__m256i]) -> __m256i {
    let h = [
        _mm256_hadd_epi32(v[0], v[1]),
        _mm256_hadd_epi32(v[2], v[3]),
        _mm256_hadd_epi32(v[4], v[5]),
        _mm256_hadd_epi32(v[6], v[7]),
    ];
    // Per 128-bit lane: the sums of lanes 0-3 (low) or 4-7 (high) of v[0..4] and v[4..8];
    // then the two halves add.
    let lo = _mm256_hadd_epi32(h[0], h[1]);
    let hi = _mm256_hadd_epi32(h[2], h[3]);
    _mm256_add_epi32(
        _mm256_permute2x128_si256(lo, hi, 0x20),
        _mm256_permute2x128_si256(lo, hi, 0x31),
    )
}

/// [`reduce8`] of `v[0..4]` alone (lanes 4-7 zero).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce4(v: &[__m256i]) -> __m256i {
    let g = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    let s = _mm_add_epi32(_mm256_castsi256_si128(g), _mm256_extracti128_si256(g, 1));
    _mm256_zextsi128_si256(s)
}

/// The weight rows' side of one super-block of an `R`-row block, for [`block_end`].
struct RowEnds<const R: usize> {
    bsum_weights: [__m256i; R],
    /// `[d_0, d_1, −dmin_0, −dmin_1]` (one row: `[d_0, d_0, −dmin_0, −dmin_0]`): for a single
    /// activation row, the factors of the slots in order.
    factors: __m128,
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn row_ends<const R: usize>(bsum_weights: [__m256i; R], dm: [__m128; R]) -> RowEnds<R> {
    const { assert!(R <= MAX_ROWS) };
    let d_dmin = _mm_unpacklo_ps(dm[0], dm[R - 1]);
    RowEnds {
        bsum_weights,
        factors: _mm_xor_ps(d_dmin, _mm_setr_ps(0.0, 0.0, -0.0, -0.0)),
    }
}

/// `acc` plus one super-block's results of an `R × C` block: lane `c·R + r` gains the dot
/// product of weight row `r` and activation row `c` over the block, from their integer
/// sums `sumi[r][c]` and the activation blocks `x[c]` (`d_x` and block sums).
///
/// The integer sums are reduced to exact totals before they meet a float: the lanes of
/// `sumi` are not meaningful alone (the offset and min terms come from block sums that do
/// not line up with them), and large lanes that cancel only in the total would cost
/// precision in f32. Q4_K/Q5_K's quant and min terms also meet here, once per super-block,
/// so the running sums never hold two large terms that cancel.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn block_end<const T: u8, const R: usize, const C: usize>(
    idx: &FactorIndices,
    sumi: &[[__m256i; C]; R],
    rows: &RowEnds<R>,
    x: &[&[u8]; C],
    acc: __m256,
) -> __m256 {
    let slots = n_slots(T, R * C);
    let min_slots = min_offset(R * C);
    let zero = _mm256_setzero_si256();
    let mut totals = [zero; MAX_SLOTS];
    let mut dx = [0f32; SLOT_GROUP];
    for c in 0..C {
        let bsums = load32(x[c], Q8K_BSUMS);
        dx[c] = f32_at(x[c], 0);
        for r in 0..R {
            let p = c * R + r;
            let bsum_term = _mm256_madd_epi16(rows.bsum_weights[r], bsums);
            if T == Q6_K {
                totals[p] = _mm256_sub_epi32(sumi[r][c], _mm256_slli_epi32(bsum_term, 5));
            } else {
                totals[p] = sumi[r][c];
                totals[min_slots + p] = bsum_term;
            }
        }
    }
    let dx = if C == 1 {
        _mm256_set1_ps(dx[0])
    } else {
        _mm256_setr_ps(dx[0], dx[1], dx[2], dx[3], dx[4], dx[5], dx[6], dx[7])
    };
    let mut scaled = [_mm256_setzero_ps(); MAX_SLOTS / SLOT_GROUP];
    for g in 0..slots.div_ceil(SLOT_GROUP) {
        let group = &totals[g * SLOT_GROUP..][..SLOT_GROUP];
        let sums = if slots == 4 {
            reduce4(group)
        } else {
            reduce8(group)
        };
        let factor = if C == 1 {
            // Slots are [S_0, S_1, M_0, M_1] or (Q6_K) [S_0, S_1]: the row factors' order.
            _mm256_mul_ps(_mm256_castps128_ps256(rows.factors), dx)
        } else {
            let row_factors =
                _mm256_permutevar8x32_ps(_mm256_castps128_ps256(rows.factors), idx.rows[g]);
            _mm256_mul_ps(row_factors, _mm256_permutevar8x32_ps(dx, idx.cols[g]))
        };
        scaled[g] = _mm256_mul_ps(_mm256_cvtepi32_ps(sums), factor);
    }
    let block = match (T, slots) {
        (Q6_K, _) => scaled[0],
        // Min sums in lanes 2-3 (to add to 0-1), 4-7 (to 0-3), or the second group.
        (_, 4) => _mm256_add_ps(scaled[0], _mm256_permute_ps(scaled[0], 0b01_00_11_10)),
        (_, 8) => _mm256_add_ps(
            scaled[0],
            _mm256_permute2f128_ps(scaled[0], scaled[0], 0x01),
        ),
        _ => _mm256_add_ps(scaled[0], scaled[1]),
    };
    _mm256_add_ps(acc, block)
}

/// Writes the results of an `rows × cols` block (lane `c·rows + r`) to
/// `out[(c0 + c) * out_stride + r0 + r]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store_block(
    acc: __m256,
    rows: usize,
    cols: usize,
    r0: usize,
    c0: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let mut lanes = [0f32; SLOT_GROUP];
    // SAFETY: `lanes` holds the 8 floats stored; the store is unaligned.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    for c in 0..cols {
        for r in 0..rows {
            out[(c0 + c) * out_stride + r0 + r] = lanes[c * rows + r];
        }
    }
}

/// The arguments of a tile.
struct Tile<'a> {
    /// Super-blocks per row.
    nb: usize,
    w: &'a [u8],
    w_stride: usize,
    x: &'a [u8],
    x_stride: usize,
}

impl<'a> Tile<'a> {
    /// Weight row `r`, whole.
    fn w_row<const T: u8>(&self, r: usize) -> &'a [u8] {
        &self.w[r * self.w_stride..][..self.nb * block_bytes(T)]
    }
    /// Activation row `c`, whole.
    fn x_row(&self, c: usize) -> &'a [u8] {
        &self.x[c * self.x_stride..][..self.nb * Q8K_BYTES]
    }
}

/// Decode: weight rows `r0..r0+R` against the single activation row, every super-block
/// decoded where it is used. Returns the `R` results in lanes `0..R`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn micro_direct<const T: u8, const R: usize>(t: &Tile<'_>, r0: usize) -> __m256 {
    let bb = block_bytes(T);
    let idx = factor_indices::<T, R, 1>();
    let mut w: [&[u8]; R] = [&[]; R];
    for (r, row) in w.iter_mut().enumerate() {
        *row = t.w_row::<T>(r0 + r);
    }
    let x = t.x_row(0);
    let zero = _mm256_setzero_si256();
    let mut acc = _mm256_setzero_ps();
    for b in 0..t.nb {
        let mut wb: [&[u8]; R] = [&[]; R];
        let mut bsum_weights = [zero; R];
        let mut dm = [_mm_setzero_ps(); R];
        let mut scales = [[zero; 2]; R];
        for r in 0..R {
            wb[r] = &w[r][b * bb..][..bb];
            // A hint, never a fault, whatever the address: without it the hardware
            // prefetcher leaves decode waiting on DRAM (measured: about half the bandwidth).
            _mm_prefetch::<_MM_HINT_T0>(wb[r].as_ptr().wrapping_add(PREFETCH_BYTES).cast());
            let h = header::<T>(wb[r]);
            (scales[r], bsum_weights[r], dm[r]) = (h.scales, h.bsum_weights, h.dm);
        }
        let xb = &x[b * Q8K_BYTES..][..Q8K_BYTES];
        let mut sumi = [[zero; 1]; R];
        for j in 0..VECS {
            let y = load32(xb, Q8K_QS + 32 * j);
            for r in 0..R {
                let q = weights::<T>(wb[r], j);
                sumi[r][0] = dot_scaled_acc(sumi[r][0], q, y, vector_scales(&scales[r], j));
            }
        }
        let rows = row_ends(bsum_weights, dm);
        acc = block_end::<T, R, 1>(&idx, &sumi, &rows, &[xb], acc);
    }
    acc
}

/// Prompt tiles: `R` packed weight rows × activation rows `x[..C]` over `blocks`
/// super-blocks (`panel[b * R + r]`, `x[c]` starting at the chunk), added to `acc`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn micro_packed<const T: u8, const R: usize, const C: usize>(
    panel: &[Packed],
    blocks: usize,
    x: [&[u8]; C],
    mut acc: __m256,
) -> __m256 {
    let idx = factor_indices::<T, R, C>();
    let zero = _mm256_setzero_si256();
    for b in 0..blocks {
        let p = &panel[b * R..][..R];
        let mut xb: [&[u8]; C] = [&[]; C];
        for c in 0..C {
            xb[c] = &x[c][b * Q8K_BYTES..][..Q8K_BYTES];
        }
        let mut sumi = [[zero; C]; R];
        for j in 0..VECS {
            for r in 0..R {
                let (q, s) = (p[r].q[j], p[r].scales[j]);
                for c in 0..C {
                    let y = load32(xb[c], Q8K_QS + 32 * j);
                    sumi[r][c] = dot_scaled_acc(sumi[r][c], q, y, s);
                }
            }
        }
        let mut bsum_weights = [zero; R];
        let mut dm = [_mm_setzero_ps(); R];
        for r in 0..R {
            (bsum_weights[r], dm[r]) = (p[r].bsum_weights, p[r].dm);
        }
        let rows = row_ends(bsum_weights, dm);
        acc = block_end::<T, R, C>(&idx, &sumi, &rows, &xb, acc);
    }
    acc
}

/// [`micro_direct`] for `rows` (at most [`MAX_ROWS`]) rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn direct_dyn<const T: u8>(t: &Tile<'_>, r0: usize, rows: usize) -> __m256 {
    const { assert!(DECODE_ROWS <= 2) };
    match rows {
        1 => micro_direct::<T, 1>(t, r0),
        2 => micro_direct::<T, 2>(t, r0),
        _ => unreachable!("{rows} rows per decode block"),
    }
}

/// [`micro_packed`] for a `rows × cols` block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn packed_dyn<const T: u8>(
    rows: usize,
    cols: usize,
    panel: &[Packed],
    blocks: usize,
    x: [&[u8]; GEMM_COLS],
    acc: __m256,
) -> __m256 {
    macro_rules! shapes {
        ($(($r:literal, $c:literal)),*) => {
            match (rows, cols) {
                $(($r, $c) => micro_packed::<T, $r, $c>(
                    panel, blocks, x[..$c].try_into().unwrap(), acc),)*
                _ => unreachable!("register block {rows}×{cols}"),
            }
        };
    }
    const { assert!(GEMM_ROWS == 2 && GEMM_COLS == 4) };
    shapes!(
        (1, 1),
        (1, 2),
        (1, 3),
        (1, 4),
        (2, 1),
        (2, 2),
        (2, 3),
        (2, 4)
    )
}

/// The [`TileFn`](super::TileFn) of weight type `T`. A single activation row (decode) runs
/// [`micro_direct`] over pairs of weight rows. Otherwise, for each pair of weight rows and
/// each chunk of [`CHUNK`] super-blocks, the rows' super-blocks are unpacked once into a
/// panel that stays in L1, and every block of [`GEMM_COLS`] activation rows runs
/// [`micro_packed`] over it, accumulating into that block's running sums (`acc`).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<const T: u8>(
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
    assert!(
        k.is_multiple_of(QK_K),
        "{k} elements is not a whole number of {QK_K}-element super-blocks"
    );
    let t = Tile {
        nb: k / QK_K,
        w,
        w_stride,
        x,
        x_stride,
    };
    if nc == 1 && T != Q5_K {
        // Decode of the two common K-quants: the ggml-style single-row loops of `kdecode`.
        let x0 = t.x_row(0);
        for r in 0..nr {
            let row = t.w_row::<T>(r);
            out[r] = if T == Q4_K {
                super::kdecode::dot_q4_k(t.nb, row, x0)
            } else {
                super::kdecode::dot_q6_k(t.nb, row, x0)
            };
        }
        return;
    }
    if nc == 1 {
        for r0 in (0..nr).step_by(DECODE_ROWS) {
            let rows = DECODE_ROWS.min(nr - r0);
            store_block(
                direct_dyn::<T>(&t, r0, rows),
                rows,
                1,
                r0,
                0,
                out,
                out_stride,
            );
        }
        return;
    }
    let bb = block_bytes(T);
    let mut panel = Vec::with_capacity(GEMM_ROWS * CHUNK);
    let mut acc = vec![_mm256_setzero_ps(); nc.div_ceil(GEMM_COLS)];
    for r0 in (0..nr).step_by(GEMM_ROWS) {
        let rows = GEMM_ROWS.min(nr - r0);
        acc.fill(_mm256_setzero_ps());
        for b0 in (0..t.nb).step_by(CHUNK) {
            let blocks = CHUNK.min(t.nb - b0);
            panel.clear();
            for b in b0..b0 + blocks {
                for r in r0..r0 + rows {
                    panel.push(pack::<T>(&t.w_row::<T>(r)[b * bb..][..bb]));
                }
            }
            for (i, a) in acc.iter_mut().enumerate() {
                let c0 = i * GEMM_COLS;
                let cols = GEMM_COLS.min(nc - c0);
                let mut xs: [&[u8]; GEMM_COLS] = [&[]; GEMM_COLS];
                for (c, row) in xs.iter_mut().take(cols).enumerate() {
                    *row = &t.x_row(c0 + c)[b0 * Q8K_BYTES..];
                }
                *a = packed_dyn::<T>(rows, cols, &panel, blocks, xs, *a);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            let c0 = i * GEMM_COLS;
            store_block(*a, rows, GEMM_COLS.min(nc - c0), r0, c0, out, out_stride);
        }
    }
}

tile_fns! {
    tile_q4_k: Q4_K;
    tile_q5_k: Q5_K;
    tile_q6_k: Q6_K;
}

/// Q8_K blocks of `src` into `dst`; byte-identical to the scalar `quantize_activations`.
pub fn quantize_q8_k(_cpu: Avx2, src: &[f32], dst: &mut [u8]) {
    // SAFETY: `_cpu` proves avx2+fma+f16c.
    unsafe { quantize_q8_k_avx2(src, dst) }
}

/// `quantize_row_q8_K_ref`, vectorized operation for operation so that every byte agrees,
/// degenerate inputs (NaN, infinities, subnormal maxima) included.
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_q8_k_avx2(src: &[f32], dst: &mut [u8]) {
    assert!(
        src.len().is_multiple_of(QK_K) && dst.len() == src.len() / QK_K * Q8K_BYTES,
        "Q8_K: {} floats do not fill {} bytes of blocks",
        src.len(),
        dst.len()
    );
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q8K_BYTES)) {
        quantize_q8_k_block(x.try_into().unwrap(), y.try_into().unwrap());
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load8f(x: &[f32; QK_K], i: usize) -> __m256 {
    let v = &x[i..][..8];
    // SAFETY: `v` is a bounds-checked slice of 8 floats; the load is unaligned.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store32(bytes: &mut [u8], off: usize, v: __m256i) {
    let d = &mut bytes[off..][..32];
    // SAFETY: `d` is a bounds-checked 32-byte slice; the store is unaligned.
    unsafe { _mm256_storeu_si256(d.as_mut_ptr().cast(), v) }
}

/// `nearest_int(iscale · v).min(127) as i8` of 8 floats, each as the low byte of an i32 lane
/// (the rest zero).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize8(iscale: __m256, v: __m256) -> __m256i {
    // ggml's `nearest_int`: add 1.5·2^23, keep the mantissa bits, subtract 2^22.
    let v = _mm256_add_ps(_mm256_mul_ps(iscale, v), _mm256_set1_ps(12_582_912.0));
    let n = _mm256_sub_epi32(
        _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x007f_ffff)),
        _mm256_set1_epi32(0x0040_0000),
    );
    // `as i8` keeps the low byte of the clamped i32, whatever its range; masked to it, the
    // unsigned packs that follow cannot saturate.
    _mm256_and_si256(
        _mm256_min_epi32(n, _mm256_set1_epi32(127)),
        _mm256_set1_epi32(0xff),
    )
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_q8_k_block(x: &[f32; QK_K], y: &mut [u8; Q8K_BYTES]) {
    // The reference keeps the first value of largest magnitude, skipping NaN. `maxps`
    // returns its second operand when either is NaN, so with the running maximum second a
    // NaN never enters it.
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut amax8 = _mm256_setzero_ps();
    for i in (0..QK_K).step_by(8) {
        amax8 = _mm256_max_ps(_mm256_and_ps(load8f(x, i), abs_mask), amax8);
    }
    let m = _mm_max_ps(
        _mm256_castps256_ps128(amax8),
        _mm256_extractf128_ps(amax8, 1),
    );
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    if amax == 0.0 {
        y.fill(0);
        return;
    }
    let amax_v = _mm256_set1_ps(amax);
    let mut max = 0.0f32;
    for i in (0..QK_K).step_by(8) {
        let v = _mm256_and_ps(load8f(x, i), abs_mask);
        let hits = _mm256_movemask_ps(_mm256_cmp_ps(v, amax_v, _CMP_EQ_OQ));
        if hits != 0 {
            max = x[i + hits.trailing_zeros() as usize];
            break;
        }
    }

    let iscale = -127.0 / max;
    let iscale_v = _mm256_set1_ps(iscale);
    let ones8 = _mm256_set1_epi8(1);
    let ones16 = _mm256_set1_epi16(1);
    let mut vector_sums = [_mm256_setzero_si256(); 8];
    for (v, sums) in vector_sums.iter_mut().enumerate() {
        let i = 32 * v;
        let a = _mm256_packus_epi32(
            quantize8(iscale_v, load8f(x, i)),
            quantize8(iscale_v, load8f(x, i + 8)),
        );
        let b = _mm256_packus_epi32(
            quantize8(iscale_v, load8f(x, i + 16)),
            quantize8(iscale_v, load8f(x, i + 24)),
        );
        // The packs interleave the 128-bit lanes; put the 4-byte groups back in order.
        let q = _mm256_permutevar8x32_epi32(
            _mm256_packus_epi16(a, b),
            _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
        );
        store32(y, Q8K_QS + i, q);
        // i32 lane l: the sum of bytes 4l..4l+4 (lanes 0-3 block sum 2v, 4-7 sum 2v+1).
        *sums = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q), ones16);
    }
    let s = vector_sums;
    // Two rounds of pairwise adds: lanes [b0 b2 b4 b6 | b1 b3 b5 b7] and [b8 … | b9 …].
    let lo = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
    let hi = _mm256_hadd_epi32(_mm256_hadd_epi32(s[4], s[5]), _mm256_hadd_epi32(s[6], s[7]));
    // |sum| ≤ 16·128 fits i16, so the saturating pack is exact: [even sums | odd sums].
    let p = _mm256_packs_epi32(lo, hi);
    let (evens, odds) = (_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
    let bsums = _mm256_set_m128i(
        _mm_unpackhi_epi16(evens, odds),
        _mm_unpacklo_epi16(evens, odds),
    );
    store32(y, Q8K_BSUMS, bsums);
    y[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}
