//! Q4_K in groups of 8 rows (see [`super`] for why): the layout and the group kernel.
//!
//! In the GGUF layout each `maddubs` multiplies 32 nibbles of *one* row, so the sub-block's
//! scale is a single number that has to be broadcast (a shuffle) and applied (a `madd`) for
//! every 32 weights, and the 6-bit scales and mins are unpacked row by row with scalar code:
//! ~86 instructions per row and super-block, which kept Q4_K decode compute-bound at ~19 GB/s
//! (`dot_q4_k` in `kdecode`). Here a 32-byte vector holds 4 consecutive weights of
//! each of 8 rows, so:
//! * one `maddubs` against 4 activation bytes broadcast from memory (a load, no shuffle)
//!   serves 8 rows, and the 8 products of a 32-element sub-block add up in i16 (at most
//!   8·2·15·128 = 30720, no overflow) before one `madd` applies the 8 rows' scales;
//! * the 8 rows' scales and mins are unpacked together with a handful of vector ops;
//! * the results come out as one vector of 8 rows, with no horizontal reduction.
//!
//! About 50 instructions per row and super-block. Decode reads each group as one sequential
//! stream, which the hardware prefetcher follows on its own: software prefetches 2–12 KiB
//! ahead (as `kdecode` needs) made it slower here, 17–20 GB/s against 21–23 on
//! weights streamed from DRAM (`time_decode_matmul_streaming` with `REPACK=1`). The idea is the one of llama.cpp's
//! `block_q4_Kx8` repacking; this layout interleaves 4 bytes per row rather than 8 (no blends
//! to separate rows) and keeps the scales in 6 bits laid out for vector decoding. Same size
//! as the GGUF tensor.
//!
//! # Layout ([`LAYOUT`](super::LAYOUT_Q4_K_X8))
//! Rows in groups of 8 (`rows % 8 == 0`); group `g` occupies the bytes the GGUF tensor gives
//! its rows `8g..8g+8`, one 1152-byte block per super-block `b`:
//!
//! | bytes | content |
//! |---|---|
//! | 0..16 | `d` of rows 0..8, f16 |
//! | 16..32 | `dmin` of rows 0..8, f16 |
//! | 32..96 | byte `8j + r`: low 4 bits of row `r`'s sub-block `j` scale, then of its min |
//! | 96..128 | byte `i`: the high 2 bits of scale, min of entry `i`, then of entry `i + 32` |
//! | 128..1152 | for pair `p` (sub-blocks `2p`, `2p+1`), group `k` of 4, row `r`: the row's 4 bytes `qs[32p + 4k ..]` at `128 + 256p + 32k + 4r` |
//!
//! The low nibbles of a qs byte belong to sub-block `2p`, the high ones to `2p + 1`, as in GGUF.

// Register blocks index arrays of activation rows with one index.
#![allow(clippy::needless_range_loop)]

use super::{broadcast4, GROUP_ROWS};
use crate::quants::kshared::{load16, load32, Q8K_BSUMS, Q8K_BYTES, Q8K_QS};
use std::arch::x86_64::*;

/// Bytes of a GGUF Q4_K super-block.
const Q4K_BYTES: usize = 144;
/// Bytes of one group's super-block.
const BLOCK_BYTES: usize = GROUP_ROWS * Q4K_BYTES;
/// Where the quants start in a group's super-block.
const QS: usize = 128;

/// The 6-bit scale and min of sub-block `j` of a GGUF Q4_K block (`get_scale_min_k4`).
fn scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// Appends the repacked form of one super-block of 8 rows (`src[r]`: row `r`'s GGUF block).
pub(super) fn repack_block(src: &[&[u8]; GROUP_ROWS], out: &mut Vec<u8>) {
    for field in [0..2, 2..4] {
        for s in src {
            out.extend_from_slice(&s[field.clone()]);
        }
    }
    let (mut low, mut high) = ([0u8; 64], [0u8; 32]);
    for (r, s) in src.iter().enumerate() {
        for j in 0..8 {
            let (sc, m) = scale_min(&s[4..16], j);
            let i = 8 * j + r;
            low[i] = (sc & 0x0f) | ((m & 0x0f) << 4);
            high[i % 32] |= ((sc >> 4) | ((m >> 4) << 2)) << (4 * (i / 32));
        }
    }
    out.extend_from_slice(&low);
    out.extend_from_slice(&high);
    for p in 0..4 {
        for k in 0..8 {
            for s in src {
                out.extend_from_slice(&s[16 + 32 * p + 4 * k..][..4]);
            }
        }
    }
}

/// Row `r`'s GGUF super-block `dst` out of a repacked one, `src`.
pub(super) fn unpack_row(src: &[u8], r: usize, dst: &mut [u8]) {
    dst[0..2].copy_from_slice(&src[2 * r..][..2]);
    dst[2..4].copy_from_slice(&src[16 + 2 * r..][..2]);
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        let i = 8 * j + r;
        let high = src[96 + i % 32] >> (4 * (i / 32));
        sc[j] = (src[32 + i] & 0x0f) | ((high & 3) << 4);
        m[j] = (src[32 + i] >> 4) | (((high >> 2) & 3) << 4);
    }
    let s = &mut dst[4..16];
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4);
    }
    for p in 0..4 {
        for k in 0..8 {
            dst[16 + 32 * p + 4 * k..][..4]
                .copy_from_slice(&src[QS + 256 * p + 32 * k + 4 * r..][..4]);
        }
    }
}

/// One group's super-block, decoded for the multiply-adds: the sub-block scales as `madd`
/// multipliers (row `r`'s scale in i16 lanes `2r`, `2r + 1`), the mins paired by sub-block
/// (`[m_2p(r), m_2p+1(r)]` in lanes `2r`, `2r + 1`), `d` and `dmin` of the 8 rows.
struct BlockHeader {
    scales: [__m256i; 8],
    mins: [__m256i; 4],
    d: __m256,
    dmin: __m256,
}

/// The bytes of `v` widened to i16, its low 128-bit lane and its high one.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn widen(v: __m256i) -> (__m256i, __m256i) {
    (
        _mm256_cvtepu8_epi16(_mm256_castsi256_si128(v)),
        _mm256_cvtepu8_epi16(_mm256_extracti128_si256(v, 1)),
    )
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn header(blk: &[u8]) -> BlockHeader {
    let lo4 = _mm256_set1_epi8(0x0f);
    let hi2 = _mm256_set1_epi8(0x30);
    let l0 = load32(blk, 32);
    let l1 = load32(blk, 64);
    let h = load32(blk, 96);
    // Entries 0..32 (sub-blocks 0..4) take their high bits from bits 0-3 of `h`, entries
    // 32..64 from bits 4-7; each moves to bits 4-5 of its byte (the 16-bit shifts only carry
    // bits across bytes that the mask then clears).
    let sc0 = _mm256_or_si256(
        _mm256_and_si256(l0, lo4),
        _mm256_and_si256(_mm256_slli_epi16(h, 4), hi2),
    );
    let mn0 = _mm256_or_si256(
        _mm256_and_si256(_mm256_srli_epi16(l0, 4), lo4),
        _mm256_and_si256(_mm256_slli_epi16(h, 2), hi2),
    );
    let sc1 = _mm256_or_si256(_mm256_and_si256(l1, lo4), _mm256_and_si256(h, hi2));
    let mn1 = _mm256_or_si256(
        _mm256_and_si256(_mm256_srli_epi16(l1, 4), lo4),
        _mm256_and_si256(_mm256_srli_epi16(h, 2), hi2),
    );
    // Each 128-bit lane of sc0/sc1 holds two sub-blocks' 8 bytes: duplicate each byte into
    // a 16-bit lane.
    let dup_first = _mm256_setr_epi8(
        0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6,
        7, 7,
    );
    let dup_second = _mm256_setr_epi8(
        8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15, 8, 8, 9, 9, 10, 10, 11, 11, 12,
        12, 13, 13, 14, 14, 15, 15,
    );
    let pair = _mm256_setr_epi8(
        0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5,
        13, 6, 14, 7, 15,
    );
    let (s0, s2) = widen(_mm256_shuffle_epi8(sc0, dup_first));
    let (s1, s3) = widen(_mm256_shuffle_epi8(sc0, dup_second));
    let (s4, s6) = widen(_mm256_shuffle_epi8(sc1, dup_first));
    let (s5, s7) = widen(_mm256_shuffle_epi8(sc1, dup_second));
    let (m01, m23) = widen(_mm256_shuffle_epi8(mn0, pair));
    let (m45, m67) = widen(_mm256_shuffle_epi8(mn1, pair));
    BlockHeader {
        scales: [s0, s1, s2, s3, s4, s5, s6, s7],
        mins: [m01, m23, m45, m67],
        d: _mm256_cvtph_ps(load16(blk, 0)),
        dmin: _mm256_cvtph_ps(load16(blk, 16)),
    }
}

/// `Σ_j m_j(r) · (bsum_2j + bsum_2j+1)` of one activation super-block, for the 8 rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn min_sums(h: &BlockHeader, y: &[u8]) -> __m256i {
    let bsums = load32(y, Q8K_BSUMS);
    // The 32-element sums b_0..b_7 as i16; dword p holds the pair (b_2p, b_2p+1).
    let b = _mm_hadd_epi16(
        _mm256_castsi256_si128(bsums),
        _mm256_extracti128_si256(bsums, 1),
    );
    let b = _mm256_set_m128i(b, b);
    let s01 = _mm256_add_epi32(
        _mm256_madd_epi16(h.mins[0], _mm256_shuffle_epi32(b, 0x00)),
        _mm256_madd_epi16(h.mins[1], _mm256_shuffle_epi32(b, 0x55)),
    );
    let s23 = _mm256_add_epi32(
        _mm256_madd_epi16(h.mins[2], _mm256_shuffle_epi32(b, 0xaa)),
        _mm256_madd_epi16(h.mins[3], _mm256_shuffle_epi32(b, 0xff)),
    );
    _mm256_add_epi32(s01, s23)
}

/// `out[c][r] = dot(row r, activation row c)` for one group of 8 rows and `NC` activation
/// rows (`ys[c]`, each `nb` Q8_K blocks).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn group<const NC: usize>(nb: usize, w: &[u8], ys: [&[u8]; NC]) -> [__m256; NC] {
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); NC];
    for b in 0..nb {
        let blk = &w[b * BLOCK_BYTES..][..BLOCK_BYTES];
        let h = header(blk);
        let mut y: [&[u8]; NC] = [&[]; NC];
        for c in 0..NC {
            y[c] = &ys[c][b * Q8K_BYTES..][..Q8K_BYTES];
        }
        let mut sumi = [_mm256_setzero_si256(); NC];
        for p in 0..4 {
            let qs = &blk[QS + 256 * p..][..256];
            if NC == 1 {
                // Both sub-blocks of the pair in one pass over its bytes.
                let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for k in 0..8 {
                    let q = load32(qs, 32 * k);
                    let ql = _mm256_and_si256(q, m4);
                    let qh = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                    let yl = broadcast4(y[0], Q8K_QS + 64 * p + 4 * k);
                    let yh = broadcast4(y[0], Q8K_QS + 64 * p + 32 + 4 * k);
                    lo = _mm256_add_epi16(lo, _mm256_maddubs_epi16(ql, yl));
                    hi = _mm256_add_epi16(hi, _mm256_maddubs_epi16(qh, yh));
                }
                sumi[0] = _mm256_add_epi32(
                    sumi[0],
                    _mm256_add_epi32(
                        _mm256_madd_epi16(lo, h.scales[2 * p]),
                        _mm256_madd_epi16(hi, h.scales[2 * p + 1]),
                    ),
                );
            } else {
                // One sub-block at a time, so the NC i16 sums and NC i32 sums stay in
                // registers; the weights are reloaded from L1 for the second.
                for half in 0..2 {
                    let mut s16 = [_mm256_setzero_si256(); NC];
                    for k in 0..8 {
                        let q = load32(qs, 32 * k);
                        let q = if half == 0 {
                            _mm256_and_si256(q, m4)
                        } else {
                            _mm256_and_si256(_mm256_srli_epi16(q, 4), m4)
                        };
                        for c in 0..NC {
                            let yv = broadcast4(y[c], Q8K_QS + 64 * p + 32 * half + 4 * k);
                            s16[c] = _mm256_add_epi16(s16[c], _mm256_maddubs_epi16(q, yv));
                        }
                    }
                    for c in 0..NC {
                        sumi[c] = _mm256_add_epi32(
                            sumi[c],
                            _mm256_madd_epi16(s16[c], h.scales[2 * p + half]),
                        );
                    }
                }
            }
        }
        for c in 0..NC {
            let dy = _mm256_set1_ps(f32::from_le_bytes(y[c][0..4].try_into().unwrap()));
            let mins = min_sums(&h, y[c]);
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[c]), _mm256_mul_ps(h.d, dy), acc[c]);
            acc[c] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mins), _mm256_mul_ps(h.dmin, dy), acc[c]);
        }
    }
    acc
}
