//! Q5_0 in groups of 8 rows (see [`super`] for why): the layout and the group kernel, against
//! Q8_0 activations.
//!
//! A Q5_0 weight is `q − 16`, `q` 5 bits: a nibble of `qs` and one bit of `qh`. The kernel
//! builds the signed weights (`nibble | 0xF0` where the high bit is clear, ggml's trick) and
//! multiplies them with `maddubs` through the sign trick (`|w|` against `y` carrying `w`'s
//! sign; Q8_0 activations lie in −127..=127). A block's 8 products add up in i16 (at most
//! 8·2·16·127 = 32512) before one `madd` widens them; one FMA per block applies `d·d_y`.
//!
//! # Layout ([`LAYOUT`](super::LAYOUT_Q5_0_X8))
//! One 176-byte block per 32-element block of a group (`8 × 22`), read front to back:
//!
//! | bytes | content |
//! |---|---|
//! | 0..16 | `d` of rows 0..8, f16 |
//! | 16..48 | `qh` of rows 0..8, u32 each (bit `i`: the high bit of element `i`) |
//! | 48..176 | at `48 + 32k + 4r`: row `r`'s 4 bytes `qs[4k ..]` |
//!
//! As in GGUF, element `j < 16` is the low nibble of `qs[j]`, element `16 + j` its high one.

use super::{broadcast4, GROUP_ROWS};
use crate::quants::kshared::{load16, load32};
use std::arch::x86_64::*;

/// Bytes of a GGUF Q5_0 block: `d: f16`, `qh: u32`, `qs[16]`.
const Q5_0_BYTES: usize = 22;
/// Elements per block.
pub(super) const BLOCK: usize = 32;
/// Bytes of one group's block, and where its parts start.
const BLOCK_BYTES: usize = GROUP_ROWS * Q5_0_BYTES;
const QH: usize = 16;
const QS: usize = 48;
/// Bytes of a Q8_0 block: `d: f16`, `qs: [i8; 32]`.
pub(super) const Q8_0_BYTES: usize = 34;

/// Appends the repacked form of one block of 8 rows (`src[r]`: row `r`'s GGUF block).
pub(super) fn repack_block(src: &[&[u8]; GROUP_ROWS], out: &mut Vec<u8>) {
    for (start, len) in [(0, 2), (2, 4), (6, 4), (10, 4), (14, 4), (18, 4)] {
        for s in src {
            out.extend_from_slice(&s[start..][..len]);
        }
    }
}

/// Row `r`'s GGUF block `dst` out of a repacked one, `src`.
pub(super) fn unpack_row(src: &[u8], r: usize, dst: &mut [u8]) {
    dst[0..2].copy_from_slice(&src[2 * r..][..2]);
    dst[2..6].copy_from_slice(&src[QH + 4 * r..][..4]);
    for k in 0..4 {
        dst[6 + 4 * k..][..4].copy_from_slice(&src[QS + 32 * k + 4 * r..][..4]);
    }
}

/// `pshufb` masks giving every byte of row `r`'s dword the byte of its `qh` that holds the
/// bits of the vector of 4-element group `k` (`h`: its high-nibble half): byte `2h + k/2`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn qh_byte_mask(byte: usize) -> __m256i {
    // Byte i of a 128-bit lane belongs to dword i / 4 of the lane.
    let mask: [u8; 32] = std::array::from_fn(|i| (4 * (i % 16 / 4) + byte) as u8);
    load32(&mask, 0)
}

/// `out[c][r] = dot(row r, activation row c)` for one group of 8 rows and `NC` activation
/// rows (`ys[c]`, each `nb` Q8_0 blocks).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn group<const NC: usize>(nb: usize, w: &[u8], ys: [&[u8]; NC]) -> [__m256; NC] {
    let lo4 = _mm256_set1_epi8(0x0f);
    let f0 = _mm256_set1_epi8(0xf0u8 as i8);
    let ones = _mm256_set1_epi16(1);
    // The bit of each byte's element within its qh byte: 4·(k % 2) + i for byte i of a dword.
    let bits = [
        _mm256_set1_epi32(0x0804_0201),
        _mm256_set1_epi32(0x8040_2010u32 as i32),
    ];
    let byte_masks = [
        qh_byte_mask(0),
        qh_byte_mask(1),
        qh_byte_mask(2),
        qh_byte_mask(3),
    ];
    let mut acc = [_mm256_setzero_ps(); NC];
    for b in 0..nb {
        let blk = &w[b * BLOCK_BYTES..][..BLOCK_BYTES];
        let mut y: [&[u8]; NC] = [&[]; NC];
        for c in 0..NC {
            y[c] = &ys[c][b * Q8_0_BYTES..][..Q8_0_BYTES];
        }
        let qh = load32(blk, QH);
        let mut s16 = [_mm256_setzero_si256(); NC];
        for k in 0..4 {
            let q = load32(blk, QS + 32 * k);
            for h in 0..2 {
                let nibbles = if h == 0 {
                    _mm256_and_si256(q, lo4)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16(q, 4), lo4)
                };
                let bit = bits[k % 2];
                let high = _mm256_cmpeq_epi8(
                    _mm256_and_si256(_mm256_shuffle_epi8(qh, byte_masks[2 * h + k / 2]), bit),
                    bit,
                );
                // q − 16: the nibble where the high bit is set, the nibble − 16 where not.
                let wv = _mm256_or_si256(nibbles, _mm256_andnot_si256(high, f0));
                let wabs = _mm256_sign_epi8(wv, wv);
                for c in 0..NC {
                    let yv = broadcast4(y[c], 2 + 16 * h + 4 * k);
                    s16[c] = _mm256_add_epi16(
                        s16[c],
                        _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(yv, wv)),
                    );
                }
            }
        }
        let d = _mm256_cvtph_ps(load16(blk, 0));
        for c in 0..NC {
            let dy = half::f16::from_le_bytes([y[c][0], y[c][1]]).to_f32();
            let sumi = _mm256_madd_epi16(s16[c], ones);
            acc[c] = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(sumi),
                _mm256_mul_ps(d, _mm256_set1_ps(dy)),
                acc[c],
            );
        }
    }
    acc
}
