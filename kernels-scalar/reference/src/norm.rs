//! RMS normalisation as ggml computes it: the sum of squares in f64, the scale in f32, then
//! the optional weight multiplied in a second step.

use crate::check;
use plugin_api::{PoolRef, RmsNormArgs};

/// Normalises one row: `out = x / sqrt(mean(x²) + eps) · weight`.
pub fn rms_norm_row(x: &[f32], weight: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v * scale;
    }
    if let Some(w) = weight {
        out.iter_mut().zip(w).for_each(|(o, &w)| *o *= w);
    }
}

pub fn rms_norm_op(mut a: RmsNormArgs<'_>, _pool: &PoolRef<'_>) -> Result<(), String> {
    check::rms_norm(&a)?;
    if a.dim == 0 {
        return Ok(());
    }
    let weight = a.weight.as_ref().into_option().map(|w| w.as_slice());
    let x = a.x.as_slice();
    let out = a.out.as_mut_slice();
    for (xr, or) in x
        .chunks_exact(a.dim)
        .zip(out.chunks_exact_mut(a.dim))
        .take(a.rows)
    {
        rms_norm_row(xr, weight, a.eps, or);
    }
    Ok(())
}
