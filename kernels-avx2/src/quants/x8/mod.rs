//! Quantized weights repacked at load (`prepare_weight`) into groups of 8 interleaved rows, and
//! the matmul tiles that read them, decode and prompt GEMM alike.
//!
//! In the GGUF layout each `maddubs` multiplies 32 bytes of *one* row, so a sub-block's scale
//! is a single number that has to be broadcast (a shuffle) and applied (a `madd`) for every
//! few dozen weights, the scales are unpacked row by row, and each row's sums need a
//! horizontal reduction. In these layouts a 32-byte vector holds 4 consecutive weights of each
//! of 8 rows, so one `maddubs` against 4 activation bytes broadcast from memory (a load, no
//! shuffle) serves 8 rows, the products of a sub-block add up in i16 before one `madd`
//! applies the 8 rows' scales (a vector), and the results come out as one vector of 8 rows.
//! The idea is llama.cpp's (`block_q4_Kx8`); these layouts interleave 4 bytes per row rather
//! than 8 (no blends to separate rows) and lay the scales out for vector decoding. Each has
//! the GGUF tensor's size: group `g` takes the bytes GGUF gives rows `8g..8g+8`.
//!
//! * [`q4k`]: Q4_K, [`LAYOUT_Q4_K_X8`];
//! * [`q6k`]: Q6_K, [`LAYOUT_Q6_K_X8`];
//! * [`q5_0`]: Q5_0, [`LAYOUT_Q5_0_X8`].

// Register blocks index arrays of activation rows with one index.
#![allow(clippy::needless_range_loop)]

mod q4k;
mod q5_0;
mod q6k;

use super::kshared::Q8K_BYTES;
use super::TileFn;
use plugin_api::{GgmlType, QK_K};
use std::arch::x86_64::*;

/// This plugin's id for repacked Q4_K (ASCII "Q4K8").
pub const LAYOUT_Q4_K_X8: u32 = u32::from_le_bytes(*b"Q4K8");
/// This plugin's id for repacked Q6_K (ASCII "Q6K8").
pub const LAYOUT_Q6_K_X8: u32 = u32::from_le_bytes(*b"Q6K8");
/// This plugin's id for repacked Q5_0 (ASCII "Q508").
pub const LAYOUT_Q5_0_X8: u32 = u32::from_le_bytes(*b"Q508");

/// Weight rows per group.
pub const GROUP_ROWS: usize = 8;
/// Activation rows per register block of the prompt GEMM.
const GEMM_COLS: usize = 4;

/// The layout this plugin repacks weights of type `dtype` into, if any.
pub fn layout_for(dtype: GgmlType) -> Option<u32> {
    match dtype {
        GgmlType::Q4_K => Some(LAYOUT_Q4_K_X8),
        GgmlType::Q6_K => Some(LAYOUT_Q6_K_X8),
        GgmlType::Q5_0 => Some(LAYOUT_Q5_0_X8),
        _ => None,
    }
}

/// The weight type a layout of this module holds.
pub fn layout_type(layout: u32) -> Option<GgmlType> {
    [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q5_0]
        .into_iter()
        .find(|&t| layout_for(t) == Some(layout))
}

/// Whether a weight of this type and shape can be repacked: a type of this module with rows
/// in groups of 8 and whole blocks.
pub fn can_repack(dtype: GgmlType, rows: usize, cols: usize) -> bool {
    layout_for(dtype).is_some()
        && rows > 0
        && rows.is_multiple_of(GROUP_ROWS)
        && cols.is_multiple_of(dtype.block_size())
}

/// Repacks a GGUF matrix of `rows × cols` (`can_repack`): its layout id and bytes.
pub fn repack(
    dtype: GgmlType,
    rows: usize,
    cols: usize,
    data: &[u8],
) -> Result<(u32, Vec<u8>), String> {
    let layout = layout_for(dtype);
    let row_bytes = dtype.row_bytes(cols);
    match (layout, row_bytes) {
        (Some(layout), Some(rb)) if can_repack(dtype, rows, cols) && Some(data.len()) == rows.checked_mul(rb) => {
            let block = match dtype {
                GgmlType::Q4_K => q4k::repack_block,
                GgmlType::Q6_K => q6k::repack_block,
                _ => q5_0::repack_block,
            };
            let bytes = repack_blocks(data, rb, dtype.block_bytes(), block);
            debug_assert_eq!(bytes.len(), data.len());
            Ok((layout, bytes))
        }
        _ => Err(format!(
            "cannot repack {} bytes as a {} matrix of {rows} × {cols} in groups of {GROUP_ROWS} rows",
            data.len(),
            dtype.name()
        )),
    }
}

/// The GGUF bytes of a matrix repacked by [`repack`] into `layout` (tests and debugging).
pub fn unpack(layout: u32, rows: usize, cols: usize, data: &[u8]) -> Option<Vec<u8>> {
    let dtype = layout_type(layout)?;
    let row = match dtype {
        GgmlType::Q4_K => q4k::unpack_row,
        GgmlType::Q6_K => q6k::unpack_row,
        _ => q5_0::unpack_row,
    };
    let (row_bytes, block_bytes) = (dtype.row_bytes(cols)?, dtype.block_bytes());
    let mut out = vec![0u8; rows * row_bytes];
    for (g, src_group) in data.chunks_exact(GROUP_ROWS * row_bytes).enumerate() {
        for (b, src) in src_group.chunks_exact(GROUP_ROWS * block_bytes).enumerate() {
            for r in 0..GROUP_ROWS {
                row(
                    src,
                    r,
                    &mut out[(g * GROUP_ROWS + r) * row_bytes + b * block_bytes..][..block_bytes],
                );
            }
        }
    }
    Some(out)
}

/// The repacked bytes of `data`, rows of `row_bytes` in blocks of `block_bytes`: `block`
/// appends each (group of 8 rows, block) in turn, given the 8 rows' GGUF blocks. Written front
/// to back, in the destination's order.
fn repack_blocks(
    data: &[u8],
    row_bytes: usize,
    block_bytes: usize,
    block: fn(&[&[u8]; GROUP_ROWS], &mut Vec<u8>),
) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for group in data.chunks_exact(GROUP_ROWS * row_bytes) {
        for b in 0..row_bytes / block_bytes {
            let src: [&[u8]; GROUP_ROWS] =
                std::array::from_fn(|r| &group[r * row_bytes + b * block_bytes..][..block_bytes]);
            block(&src, &mut out);
        }
    }
    out
}

/// The tile function of a layout of this module.
pub fn tile_fn(layout: u32) -> Option<TileFn> {
    match layout_type(layout)? {
        GgmlType::Q4_K => Some(tile_q4_k_x8),
        GgmlType::Q6_K => Some(tile_q6_k_x8),
        _ => Some(tile_q5_0_x8),
    }
}

/// The 4 bytes at `off`, in every 32-bit lane (a broadcast load).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn broadcast4(b: &[u8], off: usize) -> __m256i {
    let v = i32::from_le_bytes(b[off..][..4].try_into().unwrap());
    _mm256_set1_epi32(v)
}

/// The weight types, as const-generic tags of [`tile`].
const Q4_K: u8 = 0;
const Q6_K: u8 = 1;
const Q5_0: u8 = 2;

/// Elements per block of weight type `t`, and bytes per block of its activations.
const fn blocks(t: u8) -> (usize, usize) {
    match t {
        Q5_0 => (q5_0::BLOCK, q5_0::Q8_0_BYTES),
        _ => (QK_K, Q8K_BYTES),
    }
}

/// One group of 8 rows of type `T` against `NC` activation rows: `out[c][r]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn group<const T: u8, const NC: usize>(nb: usize, w: &[u8], ys: [&[u8]; NC]) -> [__m256; NC] {
    match T {
        Q4_K => q4k::group::<NC>(nb, w, ys),
        Q6_K => q6k::group::<NC>(nb, w, ys),
        _ => q5_0::group::<NC>(nb, w, ys),
    }
}

/// The [`TileFn`](super::TileFn) of repacked weights of type `T`: `w` starts at a group
/// boundary and holds `nr / 8` groups of `8 · w_stride` bytes (`w_stride` the GGUF row size);
/// `nr` must be a multiple of 8.
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
    let (block, act_bytes) = blocks(T);
    assert!(
        k.is_multiple_of(block) && nr.is_multiple_of(GROUP_ROWS),
        "repacked tiles need whole blocks ({k}) and groups of 8 rows ({nr})"
    );
    let nb = k / block;
    let group_bytes = GROUP_ROWS * w_stride;
    let x_row = |c: usize| &x[c * x_stride..][..nb * act_bytes];
    let mut store = |acc: &[__m256], r0: usize, c0: usize| {
        for (c, a) in acc.iter().enumerate() {
            let dst = &mut out[(c0 + c) * out_stride + r0..][..GROUP_ROWS];
            let mut v = [0f32; GROUP_ROWS];
            // SAFETY: `v` holds 8 floats; unaligned store.
            unsafe { _mm256_storeu_ps(v.as_mut_ptr(), *a) };
            dst.copy_from_slice(&v);
        }
    };
    for g in 0..nr / GROUP_ROWS {
        let wg = &w[g * group_bytes..][..group_bytes];
        let r0 = g * GROUP_ROWS;
        let mut c0 = 0;
        while c0 + GEMM_COLS <= nc {
            let ys = [x_row(c0), x_row(c0 + 1), x_row(c0 + 2), x_row(c0 + 3)];
            store(&group::<T, GEMM_COLS>(nb, wg, ys), r0, c0);
            c0 += GEMM_COLS;
        }
        match nc - c0 {
            0 => {}
            1 => store(&group::<T, 1>(nb, wg, [x_row(c0)]), r0, c0),
            2 => store(&group::<T, 2>(nb, wg, [x_row(c0), x_row(c0 + 1)]), r0, c0),
            _ => store(
                &group::<T, 3>(nb, wg, [x_row(c0), x_row(c0 + 1), x_row(c0 + 2)]),
                r0,
                c0,
            ),
        }
    }
}

tile_fns! {
    tile_q4_k_x8: Q4_K;
    tile_q6_k_x8: Q6_K;
    tile_q5_0_x8: Q5_0;
}
