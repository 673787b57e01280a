//! Float weights (F32, F16, BF16): dot products in f32 with FMA, the half-precision types
//! widened in registers (F16C's `vcvtph2ps`; BF16 is the top half of an f32, so a 16-bit
//! shift). Activations pair with the weight type, as in ggml (`vec_dot_type`): F16 weights
//! read F16 activations, BF16 read BF16, F32 read F32. No model we ship stores its matrices
//! as floats; these paths keep such models usable at SIMD speed.

use crate::cpu::Avx2;
use std::arch::x86_64::*;

/// Weight rows processed together: each loaded activation vector feeds four FMAs.
const ROWS: usize = 4;

/// The element types, as const-generic tags (target-feature functions cannot be trait
/// methods, and const dispatch inlines to straight-line code per type).
const F32: u8 = 0;
const F16: u8 = 1;
const BF16: u8 = 2;

const fn elem_bytes(t: u8) -> usize {
    if t == F32 {
        4
    } else {
        2
    }
}

/// Elements `i..i+8` of `row` as f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load8<const T: u8>(row: &[u8], i: usize) -> __m256 {
    let bytes = &row[i * elem_bytes(T)..][..8 * elem_bytes(T)];
    // SAFETY: `bytes` holds exactly the bytes read (bounds-checked slice); unaligned loads.
    unsafe {
        match T {
            F32 => _mm256_loadu_ps(bytes.as_ptr().cast()),
            F16 => _mm256_cvtph_ps(_mm_loadu_si128(bytes.as_ptr().cast())),
            _ => {
                // BF16 is the top half of an f32.
                let h = _mm_loadu_si128(bytes.as_ptr().cast());
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
            }
        }
    }
}

/// Element `i` of `row`.
#[inline]
fn get<const T: u8>(row: &[u8], i: usize) -> f32 {
    match T {
        F32 => f32::from_le_bytes(row[i * 4..][..4].try_into().unwrap()),
        F16 => half::f16::from_le_bytes([row[i * 2], row[i * 2 + 1]]).to_f32(),
        _ => f32::from_bits((u16::from_le_bytes([row[i * 2], row[i * 2 + 1]]) as u32) << 16),
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Up to [`ROWS`] weight rows against one activation row.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_rows<const T: u8>(k: usize, w: &[&[u8]], x: &[u8], out: &mut [f32]) {
    let mut acc = [_mm256_setzero_ps(); ROWS];
    let body = k / 8 * 8;
    for i in (0..body).step_by(8) {
        let xv = load8::<T>(x, i);
        for (a, row) in acc.iter_mut().zip(w) {
            *a = _mm256_fmadd_ps(load8::<T>(row, i), xv, *a);
        }
    }
    for (r, row) in w.iter().enumerate() {
        let mut s = hsum(acc[r]);
        for i in body..k {
            s += get::<T>(row, i) * get::<T>(x, i);
        }
        out[r] = s;
    }
}

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
    let row_bytes = k * elem_bytes(T);
    for c in 0..nc {
        let xr = &x[c * x_stride..][..row_bytes];
        for r0 in (0..nr).step_by(ROWS) {
            let n = ROWS.min(nr - r0);
            let mut rows: [&[u8]; ROWS] = [&[]; ROWS];
            for (i, row) in rows.iter_mut().take(n).enumerate() {
                *row = &w[(r0 + i) * w_stride..][..row_bytes];
            }
            dot_rows::<T>(k, &rows[..n], xr, &mut out[c * out_stride + r0..][..n]);
        }
    }
}

tile_fns! {
    tile_f32: F32;
    tile_f16: F16;
    tile_bf16: BF16;
}

/// F16 activations for F16 weights: IEEE round-to-nearest-even, as ggml's conversion.
pub fn quantize_f16(_cpu: Avx2, src: &[f32], dst: &mut [u8]) {
    // SAFETY: `_cpu` proves avx2+fma+f16c.
    unsafe { quantize_f16_avx2(src, dst) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_f16_avx2(src: &[f32], dst: &mut [u8]) {
    let body = src.len() / 8 * 8;
    for i in (0..body).step_by(8) {
        let s = &src[i..][..8];
        let d = &mut dst[i * 2..][..16];
        // SAFETY: `s` holds the 8 floats read, `d` the 16 bytes written (bounds-checked).
        unsafe {
            let h = _mm256_cvtps_ph(_mm256_loadu_ps(s.as_ptr()), _MM_FROUND_TO_NEAREST_INT);
            _mm_storeu_si128(d.as_mut_ptr().cast(), h);
        }
    }
    for i in body..src.len() {
        let h = kernels_reference::quants::fp32_to_fp16(src[i]);
        dst[i * 2..][..2].copy_from_slice(&h.to_le_bytes());
    }
}
