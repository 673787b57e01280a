//! Rotary position embedding, computed like ggml's `rope_f32` with no YaRN extension: the
//! angle of pair `i` is built by repeated multiplication with `base^(-2/n_rot)` in f32, as
//! ggml's cache does, so rounding matches.

use crate::check;
use plugin_api::{PoolRef, RopeArgs, RopeMode};

/// cos/sin of each of the `n_rot / 2` pairs at position `pos`.
pub fn rope_angles(pos: i32, n_rot: usize, freq_base: f32, freq_scale: f32) -> Vec<(f32, f32)> {
    let theta_scale = freq_base.powf(-2.0 / n_rot as f32);
    let mut theta = pos as f32;
    (0..n_rot / 2)
        .map(|_| {
            let t = freq_scale * theta;
            theta *= theta_scale;
            (t.cos(), t.sin())
        })
        .collect()
}

/// Rotates one head in place.
pub fn rope_head(head: &mut [f32], angles: &[(f32, f32)], mode: RopeMode) {
    let n_rot = angles.len() * 2;
    for (i, &(cos, sin)) in angles.iter().enumerate() {
        let (a, b) = match mode {
            RopeMode::Normal => (2 * i, 2 * i + 1),
            RopeMode::Neox => (i, i + n_rot / 2),
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * cos - x1 * sin;
        head[b] = x0 * sin + x1 * cos;
    }
}

pub fn rope_op(mut a: RopeArgs<'_>, _pool: &PoolRef<'_>) -> Result<(), String> {
    check::rope(&a)?;
    let x = a.x.as_mut_slice();
    for t in 0..a.n_tokens {
        let angles = rope_angles(a.positions[t], a.n_rot, a.freq_base, a.freq_scale);
        for h in 0..a.n_heads {
            let head = &mut x[t * a.token_stride + h * a.head_dim..][..a.head_dim];
            rope_head(head, &angles, a.mode);
        }
    }
    Ok(())
}
