//! The original 32-element block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1.
//!
//! Layouts (little-endian; `f16` is an IEEE half):
//!
//! | type | bytes | fields |
//! |------|-------|--------|
//! | Q4_0 | 18 | `d: f16`, `qs: [u8; 16]` — element j in the low nibble of `qs[j]`, j+16 in the high |
//! | Q4_1 | 20 | `d: f16`, `m: f16`, `qs: [u8; 16]` |
//! | Q5_0 | 22 | `d: f16`, `qh: u32` (bit j = 5th bit of element j), `qs: [u8; 16]` |
//! | Q5_1 | 24 | `d: f16`, `m: f16`, `qh: u32`, `qs: [u8; 16]` |
//! | Q8_0 | 34 | `d: f16`, `qs: [i8; 32]` |
//! | Q8_1 | 36 | `d: f16`, `s: f16` (= d · Σqs), `qs: [i8; 32]` |
//!
//! Value j is `d·(q−8)` (Q4_0), `d·q + m` (Q4_1), `d·(q−16)` (Q5_0), `d·q + m` (Q5_1),
//! `d·q` (Q8_0, Q8_1).

use super::{c_f32_to_i8, c_f32_to_u8, f16_at, put_f16, u32_at};

const QK: usize = 32;

// ---------------------------------------------------------------- dequantize

pub(super) fn dequantize_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        let qs = &b[2..18];
        for j in 0..QK / 2 {
            let x0 = (qs[j] & 0x0F) as i32 - 8;
            let x1 = (qs[j] >> 4) as i32 - 8;
            y[j] = x0 as f32 * d;
            y[j + QK / 2] = x1 as f32 * d;
        }
    }
}

pub(super) fn dequantize_q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(20).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        let qs = &b[4..20];
        for j in 0..QK / 2 {
            let x0 = (qs[j] & 0x0F) as f32;
            let x1 = (qs[j] >> 4) as f32;
            y[j] = x0 * d + m;
            y[j + QK / 2] = x1 * d + m;
        }
    }
}

/// The 5th bits of elements j and j+16 of a Q5 block, already in place (0 or 0x10).
fn q5_high_bits(qh: u32, j: usize) -> (u8, u8) {
    let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
    let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
    (xh_0, xh_1)
}

pub(super) fn dequantize_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(22).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        let qh = u32_at(b, 2);
        let qs = &b[6..22];
        for j in 0..QK / 2 {
            let (xh_0, xh_1) = q5_high_bits(qh, j);
            let x0 = ((qs[j] & 0x0F) | xh_0) as i32 - 16;
            let x1 = ((qs[j] >> 4) | xh_1) as i32 - 16;
            y[j] = x0 as f32 * d;
            y[j + QK / 2] = x1 as f32 * d;
        }
    }
}

pub(super) fn dequantize_q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(24).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        let qh = u32_at(b, 4);
        let qs = &b[8..24];
        for j in 0..QK / 2 {
            let (xh_0, xh_1) = q5_high_bits(qh, j);
            let x0 = ((qs[j] & 0x0F) | xh_0) as f32;
            let x1 = ((qs[j] >> 4) | xh_1) as f32;
            y[j] = x0 * d + m;
            y[j + QK / 2] = x1 * d + m;
        }
    }
}

pub(super) fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        for (y, &q) in y.iter_mut().zip(&b[2..34]) {
            *y = q as i8 as f32 * d;
        }
    }
}

/// Not in ggml (Q8_1 has no `to_float`); defined like Q8_0, ignoring the `s` field.
pub(super) fn dequantize_q8_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(36).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        for (y, &q) in y.iter_mut().zip(&b[4..36]) {
            *y = q as i8 as f32 * d;
        }
    }
}

// ---------------------------------------------------------------- quantize (the *_ref)

/// The value of largest magnitude (the first one if several tie), as the C loops find it.
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// The minimum and maximum, as the C loops find them (NaNs are skipped by the comparisons).
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// C's `d ? 1.0f/d : 0.0f`.
fn inverse_or_zero(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

pub(super) fn quantize_q4_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(18)) {
        let d = signed_absmax(x) / -8.0;
        let id = inverse_or_zero(d);
        put_f16(b, 0, d);
        for j in 0..QK / 2 {
            let x0 = x[j] * id;
            let x1 = x[j + QK / 2] * id;
            let xi0 = (c_f32_to_i8(x0 + 8.5) as i32).min(15) as u8;
            let xi1 = (c_f32_to_i8(x1 + 8.5) as i32).min(15) as u8;
            b[2 + j] = xi0 | (xi1 << 4);
        }
    }
}

pub(super) fn quantize_q4_1(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(20)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inverse_or_zero(d);
        put_f16(b, 0, d);
        put_f16(b, 2, min);
        for j in 0..QK / 2 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[j + QK / 2] - min) * id;
            let xi0 = (c_f32_to_i8(x0 + 0.5) as i32).min(15) as u8;
            let xi1 = (c_f32_to_i8(x1 + 0.5) as i32).min(15) as u8;
            b[4 + j] = xi0 | (xi1 << 4);
        }
    }
}

/// Packs 5-bit values `xi0` (element j) and `xi1` (element j+16) into `qs[j]` and `qh`.
fn pack_q5(qs: &mut [u8], qh: &mut u32, j: usize, xi0: u8, xi1: u8) {
    qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
    *qh |= (((xi0 & 0x10) >> 4) as u32) << j;
    *qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK / 2);
}

pub(super) fn quantize_q5_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(22)) {
        let d = signed_absmax(x) / -16.0;
        let id = inverse_or_zero(d);
        put_f16(b, 0, d);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let x0 = x[j] * id;
            let x1 = x[j + QK / 2] * id;
            let xi0 = (c_f32_to_i8(x0 + 16.5) as i32).min(31) as u8;
            let xi1 = (c_f32_to_i8(x1 + 16.5) as i32).min(31) as u8;
            pack_q5(&mut b[6..22], &mut qh, j, xi0, xi1);
        }
        b[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

pub(super) fn quantize_q5_1(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(24)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inverse_or_zero(d);
        put_f16(b, 0, d);
        put_f16(b, 2, min);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[j + QK / 2] - min) * id;
            // No clamp here in ggml: `(uint8_t)(x0 + 0.5f)`.
            let xi0 = c_f32_to_u8(x0 + 0.5);
            let xi1 = c_f32_to_u8(x1 + 0.5);
            pack_q5(&mut b[8..24], &mut qh, j, xi0, xi1);
        }
        b[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

/// Q8 scale of a block: `max |x| / 127` (C's `MAX` macro, NaN behaviour included).
fn q8_scale(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    for &v in x {
        amax = if amax > v.abs() { amax } else { v.abs() };
    }
    amax / 127.0
}

pub(super) fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(34)) {
        let d = q8_scale(x);
        let id = inverse_or_zero(d);
        put_f16(b, 0, d);
        for (q, &v) in b[2..34].iter_mut().zip(x) {
            *q = c_f32_to_i8((v * id).round()) as u8;
        }
    }
}

pub(super) fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(36)) {
        let d = q8_scale(x);
        let id = inverse_or_zero(d);
        put_f16(b, 0, d);
        let mut sum = 0i32;
        for (q, &v) in b[4..36].iter_mut().zip(x) {
            let qi = c_f32_to_i8((v * id).round());
            *q = qi as u8;
            sum += qi as i32;
        }
        put_f16(b, 2, sum as f32 * d);
    }
}

// --------------------------------------------------- activation quantization (llama.cpp CPU)

/// Q8_0/Q8_1 quantization of *activations* as llama.cpp's x86 CPU backend does it
/// (`quantize_row_q8_0`/`_q8_1` in ggml-cpu/arch/x86/quants.c, the path of every AVX/AVX2/
/// AVX-512 build): scale `d = amax/127`, multiplier `127/amax` (not `1/d`), rounding half to
/// even (not away from zero). It differs from the reference in the last bit of a few values;
/// matching it keeps our logits within llama.cpp's own noise on the files it ran.
fn quantize_q8_block_x86(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        // cvtps_epi32 then two saturating packs.
        let qi = ((v * id).round_ties_even() as i32).clamp(-128, 127);
        *q = qi as i8 as u8;
        sum += qi;
    }
    (d, sum)
}

pub(super) fn quantize_q8_0_activations(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(34)) {
        let (d, _) = quantize_q8_block_x86(x, &mut b[2..34]);
        put_f16(b, 0, d);
    }
}

pub(super) fn quantize_q8_1_activations(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(36)) {
        let (d, sum) = quantize_q8_block_x86(x, &mut b[4..36]);
        put_f16(b, 0, d);
        put_f16(b, 2, d * sum as f32);
    }
}

// ---------------------------------------------------------------- vec_dot (the *_generic)

fn i8s(b: &[u8]) -> impl Iterator<Item = i32> + '_ {
    b.iter().map(|&q| q as i8 as i32)
}

/// Σ over a 32-element block of `w(j) * y.qs[j]`, split in the two halves as ggml sums it
/// (the split does not change an integer sum, but keeps the code recognisable).
fn block_sum(y_qs: &[u8], w: impl Fn(usize) -> i32) -> i32 {
    let mut sumi0 = 0i32;
    let mut sumi1 = 0i32;
    let (lo, hi) = y_qs.split_at(QK / 2);
    for (j, (a, b)) in i8s(lo).zip(i8s(hi)).enumerate() {
        sumi0 += w(j) * a;
        sumi1 += w(j + QK / 2) * b;
    }
    sumi0 + sumi1
}

pub(super) fn vec_dot_q4_0_q8_0(w: &[u8], x: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (xb, yb) in w.chunks_exact(18).zip(x.chunks_exact(34)) {
        let qs = &xb[2..18];
        let sumi = block_sum(&yb[2..34], |j| {
            let q = if j < QK / 2 {
                qs[j] & 0x0F
            } else {
                qs[j - QK / 2] >> 4
            };
            q as i32 - 8
        });
        sumf += sumi as f32 * f16_at(xb, 0) * f16_at(yb, 0);
    }
    sumf
}

pub(super) fn vec_dot_q4_1_q8_1(w: &[u8], x: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (xb, yb) in w.chunks_exact(20).zip(x.chunks_exact(36)) {
        let qs = &xb[4..20];
        let sumi = block_sum(&yb[4..36], |j| {
            let q = if j < QK / 2 {
                qs[j] & 0x0F
            } else {
                qs[j - QK / 2] >> 4
            };
            q as i32
        });
        sumf += (f16_at(xb, 0) * f16_at(yb, 0)) * sumi as f32 + f16_at(xb, 2) * f16_at(yb, 2);
    }
    sumf
}

/// The 5-bit value of element j of a Q5 block (0..=31).
fn q5_value(qs: &[u8], qh: u32, j: usize) -> i32 {
    let (lo, hi) = if j < QK / 2 {
        (qs[j] & 0x0F, q5_high_bits(qh, j).0)
    } else {
        (qs[j - QK / 2] >> 4, q5_high_bits(qh, j - QK / 2).1)
    };
    (lo | hi) as i32
}

pub(super) fn vec_dot_q5_0_q8_0(w: &[u8], x: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (xb, yb) in w.chunks_exact(22).zip(x.chunks_exact(34)) {
        let qh = u32_at(xb, 2);
        let qs = &xb[6..22];
        let sumi = block_sum(&yb[2..34], |j| q5_value(qs, qh, j) - 16);
        sumf += (f16_at(xb, 0) * f16_at(yb, 0)) * sumi as f32;
    }
    sumf
}

pub(super) fn vec_dot_q5_1_q8_1(w: &[u8], x: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (xb, yb) in w.chunks_exact(24).zip(x.chunks_exact(36)) {
        let qh = u32_at(xb, 4);
        let qs = &xb[8..24];
        let sumi = block_sum(&yb[4..36], |j| q5_value(qs, qh, j));
        sumf += (f16_at(xb, 0) * f16_at(yb, 0)) * sumi as f32 + f16_at(xb, 2) * f16_at(yb, 2);
    }
    sumf
}

pub(super) fn vec_dot_q8_0_q8_0(w: &[u8], x: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (xb, yb) in w.chunks_exact(34).zip(x.chunks_exact(34)) {
        let sumi: i32 = i8s(&xb[2..34])
            .zip(i8s(&yb[2..34]))
            .map(|(a, b)| a * b)
            .sum();
        sumf += sumi as f32 * (f16_at(xb, 0) * f16_at(yb, 0));
    }
    sumf
}

/// Not in ggml (Q8_1 is never a weight type); defined like Q8_0 · Q8_0.
pub(super) fn vec_dot_q8_1_q8_1(w: &[u8], x: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (xb, yb) in w.chunks_exact(36).zip(x.chunks_exact(36)) {
        let sumi: i32 = i8s(&xb[4..36])
            .zip(i8s(&yb[4..36]))
            .map(|(a, b)| a * b)
            .sum();
        sumf += sumi as f32 * (f16_at(xb, 0) * f16_at(yb, 0));
    }
    sumf
}
