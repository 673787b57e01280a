//! The K-quants: 256-element super-blocks (`QK_K`) with quantized sub-block scales.
//! Dequantization and the dot products with Q8_K activations; the reference quantizers
//! are in `k_quantize.rs`.
//!
//! Layouts (little-endian; `f16` is an IEEE half):
//!
//! | type | bytes | fields, in order |
//! |------|-------|------------------|
//! | Q2_K | 84  | `scales: [u8; 16]` (low nibble scale, high nibble min, per 16 elements), `qs: [u8; 64]` (2 bits), `d: f16`, `dmin: f16` |
//! | Q3_K | 110 | `hmask: [u8; 32]` (3rd bit), `qs: [u8; 64]` (low 2 bits), `scales: [u8; 12]` (16 × 6 bits), `d: f16` |
//! | Q4_K | 144 | `d: f16`, `dmin: f16`, `scales: [u8; 12]` (8 scales + 8 mins, 6 bits), `qs: [u8; 128]` |
//! | Q5_K | 176 | `d: f16`, `dmin: f16`, `scales: [u8; 12]`, `qh: [u8; 32]` (5th bit), `qs: [u8; 128]` |
//! | Q6_K | 210 | `ql: [u8; 128]` (low 4 bits), `qh: [u8; 64]` (high 2 bits), `scales: [i8; 16]`, `d: f16` |
//! | Q8_K | 292 | `d: f32`, `qs: [i8; 256]`, `bsums: [i16; 16]` (sums of 16 consecutive `qs`) |
//!
//! Within a super-block the low bits are interleaved: for the 2-bit fields, byte `l` of each
//! 32-byte group holds elements `l`, `l+32`, `l+64`, `l+96` of that group's 128 elements in
//! bits 0-1, 2-3, 4-5, 6-7; for the 4-bit fields, byte `l` of each 32-byte group holds
//! elements `l` (low nibble) and `l+32` (high nibble) of its 64 elements.

use super::{f16_at, f32_at, i16_at};
use plugin_api::QK_K;

const Q2_K_BYTES: usize = 84;
const Q3_K_BYTES: usize = 110;
const Q4_K_BYTES: usize = 144;
const Q5_K_BYTES: usize = 176;
const Q6_K_BYTES: usize = 210;
const Q8_K_BYTES: usize = 292;

/// Scale and min `j` (0..8) of the 6-bit packed Q4_K/Q5_K `scales` (ggml's
/// `get_scale_min_k4`): the first four are the low 6 bits of bytes 0-3 (scales) and 4-7
/// (mins); the last four take their low nibble from bytes 8-11 and their top 2 bits from
/// the top bits of bytes 0-3 (scales) and 4-7 (mins).
pub(super) fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The 16 signed scales of a Q3_K block, 6 bits each, offset by 32: the low 4 bits of
/// scale j are a nibble of bytes 0-7 (low nibbles for j < 8, high for j ≥ 8), the top 2 bits
/// are bits `2*(j/4)..` of byte `8 + j%4`.
pub(super) fn q3_k_scales(sc: &[u8]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (j, s) in out.iter_mut().enumerate() {
        let low = if j < 8 { sc[j] & 0xF } else { sc[j - 8] >> 4 };
        let high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
        *s = (low | (high << 4)) as i32 - 32;
    }
    out
}

// ---------------------------------------------------------------- dequantize

pub(super) fn dequantize_q2_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q2_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let scales = &b[0..16];
        let d = f16_at(b, 80);
        let min = f16_at(b, 82);
        let mut out = 0;
        let mut is = 0;
        for q in b[16..80].chunks_exact(32) {
            for shift in [0, 2, 4, 6] {
                for half in [&q[..16], &q[16..]] {
                    let sc = scales[is];
                    is += 1;
                    let dl = d * (sc & 0xF) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for &ql in half {
                        y[out] = dl * ((ql >> shift) & 3) as f32 - ml;
                        out += 1;
                    }
                }
            }
        }
    }
}

pub(super) fn dequantize_q3_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q3_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let hm = &b[0..32];
        let scales = q3_k_scales(&b[96..108]);
        let d_all = f16_at(b, 108);
        let mut out = 0;
        let mut is = 0;
        let mut m = 1u8;
        for q in b[32..96].chunks_exact(32) {
            for shift in [0, 2, 4, 6] {
                for l0 in [0, 16] {
                    let dl = d_all * scales[is] as f32;
                    is += 1;
                    for l in l0..l0 + 16 {
                        let v = ((q[l] >> shift) & 3) as i32 - if hm[l] & m != 0 { 0 } else { 4 };
                        y[out] = dl * v as f32;
                        out += 1;
                    }
                }
                m <<= 1;
            }
        }
    }
}

pub(super) fn dequantize_q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q4_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 0);
        let min = f16_at(b, 2);
        let scales = &b[4..16];
        for (g, (q, y)) in b[16..144]
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc, m) = get_scale_min_k4(2 * g, scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = get_scale_min_k4(2 * g + 1, scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0xF) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

pub(super) fn dequantize_q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q5_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 0);
        let min = f16_at(b, 2);
        let scales = &b[4..16];
        let qh = &b[16..48];
        for (g, (ql, y)) in b[48..176]
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .enumerate()
        {
            let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
            let (sc, m) = get_scale_min_k4(2 * g, scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = get_scale_min_k4(2 * g + 1, scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            for l in 0..32 {
                let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
                y[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

/// The 256 signed 6-bit values (−32..=31) of a Q6_K block, in element order.
fn q6_k_values(b: &[u8]) -> [i32; QK_K] {
    let mut a = [0i32; QK_K];
    for (n, (ql, qh)) in b[0..128]
        .chunks_exact(64)
        .zip(b[128..192].chunks_exact(32))
        .enumerate()
    {
        let a = &mut a[128 * n..128 * (n + 1)];
        for l in 0..32 {
            a[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            a[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            a[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            a[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
        }
    }
    a
}

pub(super) fn dequantize_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q6_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 208);
        let sc = &b[192..208];
        let q = q6_k_values(b);
        for (i, y) in y.iter_mut().enumerate() {
            // ggml: `d * sc[is] * q`, left to right.
            *y = d * (sc[i / 16] as i8) as f32 * q[i] as f32;
        }
    }
}

pub(super) fn dequantize_q8_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q8_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f32_at(b, 0);
        for (y, &q) in y.iter_mut().zip(&b[4..260]) {
            *y = d * (q as i8) as f32;
        }
    }
}

// ---------------------------------------------------------------- vec_dot (the *_generic)

/// The parts of a Q8_K activation block the dot products read.
struct Q8K<'a> {
    d: f32,
    qs: &'a [u8],
    block: &'a [u8],
}

impl<'a> Q8K<'a> {
    fn new(block: &'a [u8]) -> Self {
        Q8K {
            d: f32_at(block, 0),
            qs: &block[4..260],
            block,
        }
    }
    fn q(&self, i: usize) -> i32 {
        self.qs[i] as i8 as i32
    }
    fn bsum(&self, j: usize) -> i32 {
        i16_at(self.block, 260 + 2 * j) as i32
    }
}

/// ggml's generic Q3_K..Q6_K dot products accumulate `q8 * a * scale` in 8 integer lanes
/// (lane = element index mod 8), scale each lane by `d` into 8 float lanes that persist
/// across super-blocks, and add the 8 float lanes at the very end. The lanes are kept here
/// so that the float roundings are the same.
struct Lanes {
    sums: [f32; 8],
}

impl Lanes {
    fn new() -> Self {
        Lanes { sums: [0.0; 8] }
    }

    /// Adds one super-block: `a` its 256 integer weights, `scale(i)` the integer scale of
    /// element i's sub-block, `d` the float factor.
    fn add_block(&mut self, y: &Q8K<'_>, a: &[i32; QK_K], scale: impl Fn(usize) -> i32, d: f32) {
        let mut aux32 = [0i32; 8];
        for i in 0..QK_K {
            aux32[i % 8] += scale(i) * (y.q(i) * a[i]);
        }
        for (s, v) in self.sums.iter_mut().zip(aux32) {
            *s += d * v as f32;
        }
    }

    /// `sumf` (which may already hold the mins' contributions) plus the lanes, in order.
    fn finish(self, mut sumf: f32) -> f32 {
        for s in self.sums {
            sumf += s;
        }
        sumf
    }
}

pub(super) fn vec_dot_q2_k_q8_k(w: &[u8], x: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (xb, yb) in w.chunks_exact(Q2_K_BYTES).zip(x.chunks_exact(Q8_K_BYTES)) {
        let y = Q8K::new(yb);
        let sc = &xb[0..16];
        let summs: i32 = (0..16).map(|j| y.bsum(j) * (sc[j] >> 4) as i32).sum();
        let dall = y.d * f16_at(xb, 80);
        let dmin = y.d * f16_at(xb, 82);

        let mut isum = 0i32;
        let mut is = 0;
        let mut q8 = 0;
        for q2 in xb[16..80].chunks_exact(32) {
            for shift in [0, 2, 4, 6] {
                for l0 in [0, 16] {
                    let d = (sc[is] & 0xF) as i32;
                    is += 1;
                    let isuml: i32 = (l0..l0 + 16)
                        .map(|l| y.q(q8 + l) * ((q2[l] >> shift) & 3) as i32)
                        .sum();
                    isum += d * isuml;
                }
                q8 += 32;
            }
        }
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

pub(super) fn vec_dot_q3_k_q8_k(w: &[u8], x: &[u8]) -> f32 {
    let mut lanes = Lanes::new();
    for (xb, yb) in w.chunks_exact(Q3_K_BYTES).zip(x.chunks_exact(Q8_K_BYTES)) {
        let y = Q8K::new(yb);
        let hm = &xb[0..32];
        let mut a = [0i32; QK_K];
        let mut m = 1u8;
        let mut i = 0;
        for q3 in xb[32..96].chunks_exact(32) {
            for shift in [0, 2, 4, 6] {
                for l in 0..32 {
                    a[i] = ((q3[l] >> shift) & 3) as i32 - if hm[l] & m != 0 { 0 } else { 4 };
                    i += 1;
                }
                m <<= 1;
            }
        }
        let scales = q3_k_scales(&xb[96..108]);
        let d = f16_at(xb, 108) * y.d;
        lanes.add_block(&y, &a, |i| scales[i / 16], d);
    }
    lanes.finish(0.0)
}

/// The 256 4-bit values of a Q4_K/Q5_K `qs` array in element order, plus 16 where the
/// corresponding `qh` bit is set (Q5_K).
fn q45_k_values(qs: &[u8], qh: Option<&[u8]>) -> [i32; QK_K] {
    let mut a = [0i32; QK_K];
    for (g, q) in qs.chunks_exact(32).enumerate() {
        for l in 0..32 {
            a[64 * g + l] = (q[l] & 0xF) as i32;
            a[64 * g + 32 + l] = (q[l] >> 4) as i32;
            if let Some(qh) = qh {
                let (m1, m2) = (1u8 << (2 * g), 2u8 << (2 * g));
                a[64 * g + l] += if qh[l] & m1 != 0 { 16 } else { 0 };
                a[64 * g + 32 + l] += if qh[l] & m2 != 0 { 16 } else { 0 };
            }
        }
    }
    a
}

/// Q4_K and Q5_K share everything but the values: 8 scales and 8 mins per super-block, the
/// mins applied through the activation's `bsums`.
fn vec_dot_q45_k(w: &[u8], x: &[u8], block_bytes: usize, values: fn(&[u8]) -> [i32; QK_K]) -> f32 {
    let mut sumf = 0.0f32;
    let mut lanes = Lanes::new();
    for (xb, yb) in w.chunks_exact(block_bytes).zip(x.chunks_exact(Q8_K_BYTES)) {
        let y = Q8K::new(yb);
        let a = values(xb);
        let mut scales = [0i32; 8];
        let mut mins = [0i32; 8];
        for j in 0..8 {
            let (sc, m) = get_scale_min_k4(j, &xb[4..16]);
            scales[j] = sc as i32;
            mins[j] = m as i32;
        }
        let sumi: i32 = (0..16).map(|j| y.bsum(j) * mins[j / 2]).sum();
        let d = f16_at(xb, 0) * y.d;
        lanes.add_block(&y, &a, |i| scales[i / 32], d);
        let dmin = f16_at(xb, 2) * y.d;
        sumf -= dmin * sumi as f32;
    }
    lanes.finish(sumf)
}

pub(super) fn vec_dot_q4_k_q8_k(w: &[u8], x: &[u8]) -> f32 {
    vec_dot_q45_k(w, x, Q4_K_BYTES, |b| q45_k_values(&b[16..144], None))
}

pub(super) fn vec_dot_q5_k_q8_k(w: &[u8], x: &[u8]) -> f32 {
    vec_dot_q45_k(w, x, Q5_K_BYTES, |b| {
        q45_k_values(&b[48..176], Some(&b[16..48]))
    })
}

pub(super) fn vec_dot_q6_k_q8_k(w: &[u8], x: &[u8]) -> f32 {
    let mut lanes = Lanes::new();
    for (xb, yb) in w.chunks_exact(Q6_K_BYTES).zip(x.chunks_exact(Q8_K_BYTES)) {
        let y = Q8K::new(yb);
        let a = q6_k_values(xb);
        let sc = &xb[192..208];
        let d = f16_at(xb, 208) * y.d;
        lanes.add_block(&y, &a, |i| sc[i / 16] as i8 as i32, d);
    }
    lanes.finish(0.0)
}

/// Not in ggml (Q8_K is never a weight type): `sumi * (dx * dy)` per super-block.
pub(super) fn vec_dot_q8_k_q8_k(w: &[u8], x: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (xb, yb) in w.chunks_exact(Q8_K_BYTES).zip(x.chunks_exact(Q8_K_BYTES)) {
        let (wx, y) = (Q8K::new(xb), Q8K::new(yb));
        let sumi: i32 = (0..QK_K).map(|i| wx.q(i) * y.q(i)).sum();
        sumf += sumi as f32 * (wx.d * y.d);
    }
    sumf
}
