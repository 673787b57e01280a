//! Rotary position embedding, in place, like `kernels_reference::rope` (ggml's `rope_f32`
//! without YaRN).
//!
//! Per token, the angles are accumulated exactly as the reference does (`theta *=
//! theta_scale` in f32, so they round the same), their cosines and sines are computed once on
//! eight lanes and shared by every head. The rotation itself uses the reference's products and
//! sums without fusing them, so given the same cos/sin it is bit-exact; the vector sine and
//! cosine stay within ~1e-7 of libm's for the angles positions reach (|angle| < 10⁵).

use crate::{
    cpu::Avx2,
    disjoint::DisjointSlice,
    elementwise::{for_chunks, load, load_tail, store, store_tail},
};
use kernels_reference::check;
use plugin_api::{PoolRef, RopeArgs, RopeMode};
use std::arch::x86_64::*;

/// The `rope` entry point: tokens split over the pool when there are enough of them.
pub fn rope_op(mut a: RopeArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
    check::rope(&a)?;
    let cpu = Avx2::get()?;
    let (n_heads, head_dim, n_rot, stride) = (a.n_heads, a.head_dim, a.n_rot, a.token_stride);
    let row = n_heads * head_dim;
    if a.n_tokens == 0 || n_rot == 0 || n_heads == 0 {
        return Ok(());
    }
    let positions = a.positions.as_slice();
    let (mode, freq_scale) = (a.mode, a.freq_scale);
    // The reference's expression, so the angles round the same.
    let theta_scale = a.freq_base.powf(-2.0 / n_rot as f32);
    let x = DisjointSlice::new(a.x.as_mut_slice());
    for_chunks(pool, a.n_tokens * row, row, |start, len| {
        let mut angles = Angles::new(n_rot);
        let (t0, t1) = (start / row, (start + len) / row);
        for (t, &pos) in positions.iter().enumerate().take(t1).skip(t0) {
            // SAFETY: check::rope made tokens `stride ≥ row` floats apart (when there are
            // several) and the buffer hold all of them, so token rows are disjoint and in
            // bounds, and `for_chunks` gives each token to one task.
            let x = unsafe { x.range_mut(t * stride, row) };
            // SAFETY: cpu proves avx2+fma+f16c.
            unsafe {
                angles.compute(cpu, pos, freq_scale, theta_scale, mode);
                for head in x.chunks_exact_mut(head_dim) {
                    rotate(cpu, head, &angles, mode);
                }
            }
        }
    })
}

/// cos/sin of every pair of one token. For [`RopeMode::Normal`] they are laid out to match
/// the interleaved pairs: `cos = [c0, c0, c1, c1, ..]`, `sin = [-s0, s0, -s1, s1, ..]`; for
/// [`RopeMode::Neox`], `cos = [c0, c1, ..]` and `sin = [s0, s1, ..]` (half as many).
struct Angles {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Angles {
    fn new(n_rot: usize) -> Self {
        Angles {
            cos: vec![0.0; n_rot],
            sin: vec![0.0; n_rot],
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn compute(&mut self, _: Avx2, pos: i32, freq_scale: f32, theta_scale: f32, mode: RopeMode) {
        let half = self.cos.len() / 2;
        let (cos, sin) = (&mut self.cos[..half], &mut self.sin[..half]);
        // The angle chain of the reference, sequential by nature: pair i's angle is pair
        // (i-1)'s times theta_scale, rounded each step.
        let mut theta = pos as f32;
        for t in cos.iter_mut() {
            *t = freq_scale * theta;
            theta *= theta_scale;
        }
        let body = half / 8 * 8;
        for i in (0..body).step_by(8) {
            let (c, s) = sincos8(load(cos, i));
            store(cos, i, c);
            store(sin, i, s);
        }
        if body < half {
            let (c, s) = sincos8(load_tail(cos, body, 0.0));
            store_tail(cos, body, c);
            store_tail(sin, body, s);
        }
        if mode == RopeMode::Normal {
            // Spread in place from the back, so no value is overwritten before it is read.
            for i in (0..half).rev() {
                let (c, s) = (self.cos[i], self.sin[i]);
                self.cos[2 * i] = c;
                self.cos[2 * i + 1] = c;
                self.sin[2 * i] = -s;
                self.sin[2 * i + 1] = s;
            }
        }
    }
}

/// Rotates the first `n_rot` dimensions of one head by `angles`.
#[target_feature(enable = "avx2,fma,f16c")]
fn rotate(_: Avx2, head: &mut [f32], angles: &Angles, mode: RopeMode) {
    let n_rot = angles.cos.len();
    let head = &mut head[..n_rot];
    match mode {
        RopeMode::Normal => {
            let (cos, sin) = (&angles.cos[..], &angles.sin[..]);
            // (x0, x1) → (x0·c − x1·s, x1·c + x0·s): the sine carries the sign, and the
            // swapped pair supplies the other element, so one product per lane.
            let body = n_rot / 8 * 8;
            for i in (0..body).step_by(8) {
                let x = load(head, i);
                let swapped = _mm256_permute_ps::<0b10_11_00_01>(x);
                let y = _mm256_add_ps(
                    _mm256_mul_ps(x, load(cos, i)),
                    _mm256_mul_ps(swapped, load(sin, i)),
                );
                store(head, i, y);
            }
            for i in (body..n_rot).step_by(2) {
                let (c, s) = (cos[i], sin[i + 1]);
                let (x0, x1) = (head[i], head[i + 1]);
                head[i] = x0 * c - x1 * s;
                head[i + 1] = x0 * s + x1 * c;
            }
        }
        RopeMode::Neox => {
            let half = n_rot / 2;
            let (cos, sin) = (&angles.cos[..half], &angles.sin[..half]);
            let (lo, hi) = head.split_at_mut(half);
            let body = half / 8 * 8;
            for i in (0..body).step_by(8) {
                let (x0, x1) = (load(lo, i), load(hi, i));
                let (c, s) = (load(cos, i), load(sin, i));
                store(
                    lo,
                    i,
                    _mm256_sub_ps(_mm256_mul_ps(x0, c), _mm256_mul_ps(x1, s)),
                );
                store(
                    hi,
                    i,
                    _mm256_add_ps(_mm256_mul_ps(x0, s), _mm256_mul_ps(x1, c)),
                );
            }
            for i in body..half {
                let (c, s) = (cos[i], sin[i]);
                let (x0, x1) = (lo[i], hi[i]);
                lo[i] = x0 * c - x1 * s;
                hi[i] = x0 * s + x1 * c;
            }
        }
    }
}

/// cos and sin of eight angles. The angle is reduced by the nearest multiple `j` of π/2 with
/// π/2 split in three f32 parts (FMA keeps each step's error at one rounding of the small
/// remainder, so large angles stay accurate), then Cephes' `sinf`/`cosf` polynomials on
/// [-π/4, π/4] and the quadrant `j mod 4` picks and signs the results.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sincos8(x: __m256) -> (__m256, __m256) {
    let c = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
    let j = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        c(0x3f22_f983), // 2/π
    ));
    let mut r = _mm256_fnmadd_ps(j, c(0x3fc9_0fdb), x); // π/2, high part
    r = _mm256_fnmadd_ps(j, c(0xb33b_bd2e), r); // π/2 − high
    r = _mm256_fnmadd_ps(j, c(0xa6f7_2ced), r); // the rest
    let q = _mm256_cvtps_epi32(j);
    let z = _mm256_mul_ps(r, r);

    let mut ps = _mm256_set1_ps(-1.951_529_6e-4);
    ps = _mm256_fmadd_ps(ps, z, _mm256_set1_ps(8.332_161e-3));
    ps = _mm256_fmadd_ps(ps, z, _mm256_set1_ps(-1.666_665_5e-1));
    let sin_r = _mm256_fmadd_ps(_mm256_mul_ps(ps, z), r, r);

    let mut pc = _mm256_set1_ps(2.443_315_7e-5);
    pc = _mm256_fmadd_ps(pc, z, _mm256_set1_ps(-1.388_731_6e-3));
    pc = _mm256_fmadd_ps(pc, z, _mm256_set1_ps(4.166_664_6e-2));
    let cos_r = _mm256_fmadd_ps(
        _mm256_mul_ps(pc, z),
        z,
        _mm256_fnmadd_ps(_mm256_set1_ps(0.5), z, _mm256_set1_ps(1.0)),
    );

    // Odd quadrants swap sine and cosine; sin flips sign in quadrants 2, 3 and cos in 1, 2.
    let one = _mm256_set1_epi32(1);
    let two = _mm256_set1_epi32(2);
    let swap = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(q, one), one));
    let sin_sign = _mm256_slli_epi32::<30>(_mm256_and_si256(q, two));
    let cos_sign = _mm256_slli_epi32::<30>(_mm256_and_si256(_mm256_add_epi32(q, one), two));
    let sin = _mm256_blendv_ps(sin_r, cos_r, swap);
    let cos = _mm256_blendv_ps(cos_r, sin_r, swap);
    (
        _mm256_xor_ps(cos, _mm256_castsi256_ps(cos_sign)),
        _mm256_xor_ps(sin, _mm256_castsi256_ps(sin_sign)),
    )
}
