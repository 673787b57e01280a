//! RMS normalisation, as `kernels_reference::norm` computes it: the squares rounded to f32 and
//! summed in f64, the scale in f32, then `x · scale` and, in a second rounding, the weight.
//! Only the order of the f64 sum differs, so results agree with the reference to the last bit
//! in all but rare cases.

use crate::{
    cpu::Avx2,
    disjoint::DisjointSlice,
    elementwise::{for_chunks, load, load_tail, store, store_tail},
};
use kernels_reference::check;
use plugin_api::{PoolRef, RmsNormArgs};
use std::arch::x86_64::*;

/// The `rms_norm` entry point: rows split over the pool when there are enough of them.
pub fn rms_norm_op(mut a: RmsNormArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
    check::rms_norm(&a)?;
    let cpu = Avx2::get()?;
    let (rows, dim, eps) = (a.rows, a.dim, a.eps);
    if dim == 0 || rows == 0 {
        return Ok(());
    }
    let weight = a
        .weight
        .as_ref()
        .into_option()
        .map(|w| &w.as_slice()[..dim]);
    let x = &a.x.as_slice()[..rows * dim];
    let out = DisjointSlice::new(&mut a.out.as_mut_slice()[..rows * dim]);
    for_chunks(pool, rows * dim, dim, |start, len| {
        // SAFETY: `for_chunks` hands out non-overlapping `start..start + len` ranges.
        let out = unsafe { out.range_mut(start, len) };
        let x = &x[start..start + len];
        for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
            rms_norm_row(cpu, xr, weight, eps, or);
        }
    })
}

/// One row: `out = x / sqrt(mean(x²) + eps) · weight`. `out` holds as many elements as `x`,
/// `weight` (when given) at least as many.
pub fn rms_norm_row(cpu: Avx2, x: &[f32], weight: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    assert_eq!(
        x.len(),
        out.len(),
        "rms_norm_row: x and out differ in length"
    );
    let weight = weight.map(|w| {
        assert!(w.len() >= x.len(), "rms_norm_row: weight shorter than x");
        &w[..x.len()]
    });
    if x.is_empty() {
        return;
    }
    // SAFETY: cpu proves avx2+fma+f16c.
    unsafe { rms_norm_row_avx2(cpu, x, weight, eps, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn rms_norm_row_avx2(_: Avx2, x: &[f32], weight: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    let n = x.len();
    let body = n / 8 * 8;
    let (mut sum_lo, mut sum_hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    for i in (0..body).step_by(8) {
        let v = load(x, i);
        // Squares rounded to f32, then widened: the reference's `(v * v) as f64`.
        let sq = _mm256_mul_ps(v, v);
        sum_lo = _mm256_add_pd(sum_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
        sum_hi = _mm256_add_pd(sum_hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(sq)));
    }
    let mut lanes = [0f64; 4];
    // SAFETY: `lanes` holds the 4 doubles stored.
    unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(sum_lo, sum_hi)) };
    let sum = lanes.iter().sum::<f64>() + x[body..].iter().map(|&v| (v * v) as f64).sum::<f64>();
    let mean = (sum / n as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    let s = _mm256_set1_ps(scale);
    match weight {
        Some(w) => {
            for i in (0..body).step_by(8) {
                store(
                    out,
                    i,
                    _mm256_mul_ps(_mm256_mul_ps(load(x, i), s), load(w, i)),
                );
            }
            if body < n {
                let v = _mm256_mul_ps(load_tail(x, body, 0.0), s);
                store_tail(out, body, _mm256_mul_ps(v, load_tail(w, body, 0.0)));
            }
        }
        None => {
            for i in (0..body).step_by(8) {
                store(out, i, _mm256_mul_ps(load(x, i), s));
            }
            if body < n {
                store_tail(out, body, _mm256_mul_ps(load_tail(x, body, 0.0), s));
            }
        }
    }
}
