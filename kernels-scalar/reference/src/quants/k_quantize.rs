//! ggml's reference quantizers for the K-quants (`quantize_row_q?_K_ref` and their helpers
//! in `ggml-quants.c`), transcribed operation for operation: these searches compare float
//! errors, so any change of evaluation order could pick different quants.
//!
//! They are the quantizers without an importance matrix (what `llama-quantize` uses when it
//! has none is a different, weighted search: `quantize_q?_K` with `quant_weights`).

use super::k_quants::{get_scale_min_k4, q3_k_scales};
use super::{f16_at, nearest_int, put_f16};
use plugin_api::QK_K;

/// ggml's `GROUP_MAX_EPS`: groups whose largest magnitude is below it quantize to zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// The value of largest magnitude (first one wins ties), and that magnitude.
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (max, amax)
}

/// `make_qx_quants` with `rmse_type == 1` and no weights (the only use in the reference
/// quantizers, by Q6_K): symmetric quants `l + nmax` in `L`, the scale is the least-squares
/// one with weights x², refined by trying 18 nearby inverse scales.
fn make_qx_quants(nmax: i32, x: &[f32], big_l: &mut [i8]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        big_l.fill(0);
        return 0.0;
    }
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let mut iscale = (-nmax) as f32 / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (i, &xi) in x.iter().enumerate() {
        let l = clamp(nearest_int(iscale * xi));
        big_l[i] = (l + nmax) as i8;
        let w = xi * xi;
        sumlx += w * xi * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &xi in x {
            let l = clamp(nearest_int(iscale * xi));
            let w = xi * xi;
            sumlx += w * xi * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &xi) in x.iter().enumerate() {
                big_l[i] = (nmax + clamp(nearest_int(iscale * xi))) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_q3_quants` with `do_rmse` (Q3_K): symmetric quants `l + nmax` in `L`, improved one
/// element at a time while that raises the x²-weighted fit.
fn make_q3_quants(nmax: i32, x: &[f32], big_l: &mut [i8]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        big_l.fill(0);
        return 0.0;
    }
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let iscale = (-nmax) as f32 / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (i, &xi) in x.iter().enumerate() {
        let l = clamp(nearest_int(iscale * xi));
        big_l[i] = l as i8;
        let w = xi * xi;
        sumlx += w * xi * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _itry in 0..5 {
        let mut n_changed = 0;
        for (i, &xi) in x.iter().enumerate() {
            let w = xi * xi;
            let li = big_l[i] as f32;
            let mut slx = sumlx - w * xi * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = clamp(nearest_int(xi * sl2 / slx));
                if new_l != big_l[i] as i32 {
                    slx += w * xi * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        big_l[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for l in big_l.iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Search parameters of `make_qkx2_quants`.
struct Qkx2 {
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
}

/// `make_qkx2_quants`: asymmetric quants `0..=nmax` in `L` for `x ≈ scale·L − the_min`,
/// minimizing the weighted squared (or absolute, `use_mad`) error over `nstep + 1` trial
/// inverse scales. Returns `(scale, the_min)`.
fn make_qkx2_quants(p: &Qkx2, x: &[f32], weights: &[f32], big_l: &mut [u8]) -> (f32, f32) {
    let n = x.len();
    let nmax = p.nmax;
    let mut laux = [0u8; 32];
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        big_l[..n].fill(0);
        return (0.0, -min);
    }
    let error = |diff: f32| if p.use_mad { diff.abs() } else { diff * diff };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        big_l[i] = l.clamp(0, nmax) as u8;
        let diff = scale * big_l[i] as f32 + min - x[i];
        best_error += weights[i] * error(diff);
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax as f32) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let l = l as f32;
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * error(diff);
            }
            if cur_error < best_error {
                big_l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Packs 2-bit values: byte `l` of each 32-byte group holds elements `l, l+32, l+64, l+96`
/// of the group's 128.
fn pack_2bit(big_l: &[u8], qs: &mut [u8]) {
    for (l128, q) in big_l.chunks_exact(128).zip(qs.chunks_exact_mut(32)) {
        for l in 0..32 {
            q[l] = l128[l] | (l128[l + 32] << 2) | (l128[l + 64] << 4) | (l128[l + 96] << 6);
        }
    }
}

pub(super) fn quantize_q2_k(src: &[f32], dst: &mut [u8]) {
    const Q4SCALE: f32 = 15.0;
    let params = Qkx2 {
        nmax: 3,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(84)) {
        let mut big_l = [0u8; QK_K];
        let mut scales = [0.0f32; 16];
        let mut mins = [0.0f32; 16];
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..16 {
            let xs = &x[16 * j..16 * (j + 1)];
            let mut weights = [0.0f32; 16];
            for (w, v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            (scales[j], mins[j]) =
                make_qkx2_quants(&params, xs, &weights, &mut big_l[16 * j..16 * (j + 1)]);
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }

        let (sc, rest) = y.split_at_mut(16);
        let (qs, dd) = rest.split_at_mut(64);
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for j in 0..16 {
                sc[j] = nearest_int(iscale * scales[j]) as u8;
            }
            put_f16(dd, 0, max_scale / Q4SCALE);
        } else {
            sc.fill(0);
            put_f16(dd, 0, 0.0);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for j in 0..16 {
                let l = nearest_int(iscale * mins[j]);
                sc[j] |= (l << 4) as u8;
            }
            put_f16(dd, 2, max_min / Q4SCALE);
        } else {
            put_f16(dd, 2, 0.0);
        }
        let (d_all, dmin_all) = (f16_at(dd, 0), f16_at(dd, 2));
        for j in 0..16 {
            let d = d_all * (sc[j] & 0xF) as f32;
            if d == 0.0 {
                continue;
            }
            let dm = dmin_all * (sc[j] >> 4) as f32;
            for ii in 0..16 {
                let l = nearest_int((x[16 * j + ii] + dm) / d);
                big_l[16 * j + ii] = l.clamp(0, 3) as u8;
            }
        }
        pack_2bit(&big_l, qs);
    }
}

pub(super) fn quantize_q3_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(110)) {
        let mut big_l = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        let mut max_scale = 0.0f32;
        let mut amax = 0.0f32;
        for j in 0..16 {
            scales[j] = make_q3_quants(
                4,
                &x[16 * j..16 * (j + 1)],
                &mut big_l[16 * j..16 * (j + 1)],
            );
            let scale = scales[j].abs();
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }

        let (hmask, rest) = y.split_at_mut(32);
        let (qs, rest) = rest.split_at_mut(64);
        let (sc, dd) = rest.split_at_mut(12);
        sc.fill(0);
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..16 {
                let l = nearest_int(iscale * scales[j]) as i8; // C: `int8_t l = nearest_int(..)`
                let l = (l.clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    sc[j] = l & 0xF;
                } else {
                    sc[j - 8] |= (l & 0xF) << 4;
                }
                sc[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
            }
            put_f16(dd, 0, 1.0 / iscale);
        } else {
            put_f16(dd, 0, 0.0);
        }

        let d_all = f16_at(dd, 0);
        let int_scales = q3_k_scales(sc);
        for j in 0..16 {
            let d = d_all * int_scales[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let l = nearest_int(x[16 * j + ii] / d);
                big_l[16 * j + ii] = (l.clamp(-4, 3) + 4) as i8;
            }
        }

        // The high bit of element j goes to bit j/32 of hmask[j % 32].
        hmask.fill(0);
        let mut low = [0u8; QK_K];
        for j in 0..QK_K {
            let mut l = big_l[j] as u8;
            if big_l[j] > 3 {
                hmask[j % 32] |= 1 << (j / 32);
                l -= 4;
            }
            low[j] = l;
        }
        pack_2bit(&low, qs);
    }
}

/// The 6-bit scale/min packing shared by Q4_K and Q5_K (inverse of `get_scale_min_k4`),
/// then `d` and `dmin`. `y` starts at the block.
fn pack_scales_k4(y: &mut [u8], scales: &[f32; 8], mins: &[f32; 8], max_scale: f32, max_min: f32) {
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut y[4..16];
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    put_f16(y, 0, max_scale / 63.0);
    put_f16(y, 2, max_min / 63.0);
}

/// The shared body of the Q4_K and Q5_K reference quantizers: 8 sub-blocks of 32, each
/// fitted by `make_qkx2_quants` with weights `rms(x) + |x|`; returns the quants 0..=nmax.
fn quantize_k45_block(x: &[f32], y: &mut [u8], params: &Qkx2) -> [u8; QK_K] {
    let mut big_l = [0u8; QK_K];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * (j + 1)];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut weights = [0.0f32; 32];
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) =
            make_qkx2_quants(params, xs, &weights, &mut big_l[32 * j..32 * (j + 1)]);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    pack_scales_k4(y, &scales, &mins, max_scale, max_min);

    let (d_all, dmin_all) = (f16_at(y, 0), f16_at(y, 2));
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &y[4..16]);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m as f32;
        for ii in 0..32 {
            let l = nearest_int((x[32 * j + ii] + dm) / d);
            big_l[32 * j + ii] = l.clamp(0, params.nmax) as u8;
        }
    }
    big_l
}

pub(super) fn quantize_q4_k(src: &[f32], dst: &mut [u8]) {
    let params = Qkx2 {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    };
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(144)) {
        let big_l = quantize_k45_block(x, y, &params);
        for (l64, q) in big_l.chunks_exact(64).zip(y[16..144].chunks_exact_mut(32)) {
            for l in 0..32 {
                q[l] = l64[l] | (l64[l + 32] << 4);
            }
        }
    }
}

pub(super) fn quantize_q5_k(src: &[f32], dst: &mut [u8]) {
    let params = Qkx2 {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
    };
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(176)) {
        let big_l = quantize_k45_block(x, y, &params);
        let (qh, ql) = y[16..176].split_at_mut(32);
        qh.fill(0);
        for (g, (l64, ql)) in big_l
            .chunks_exact(64)
            .zip(ql.chunks_exact_mut(32))
            .enumerate()
        {
            let (m1, m2) = (1u8 << (2 * g), 2u8 << (2 * g));
            for j in 0..32 {
                let mut l1 = l64[j];
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                let mut l2 = l64[j + 32];
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[j] = l1 | (l2 << 4);
            }
        }
    }
}

pub(super) fn quantize_q6_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(210)) {
        let mut big_l = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for ib in 0..16 {
            let scale = make_qx_quants(
                32,
                &x[16 * ib..16 * (ib + 1)],
                &mut big_l[16 * ib..16 * (ib + 1)],
            );
            scales[ib] = scale;
            let abs_scale = scale.abs();
            if abs_scale > max_abs_scale {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }
        }

        if max_abs_scale < GROUP_MAX_EPS {
            y.fill(0);
            continue;
        }

        let (ql, rest) = y.split_at_mut(128);
        let (qh, rest) = rest.split_at_mut(64);
        let (sc, dd) = rest.split_at_mut(16);
        let iscale = -128.0 / max_scale;
        put_f16(dd, 0, 1.0 / iscale);
        for ib in 0..16 {
            sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
        }

        let d_all = f16_at(dd, 0);
        for j in 0..16 {
            let d = d_all * (sc[j] as i8) as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let l = nearest_int(x[16 * j + ii] / d);
                big_l[16 * j + ii] = (l.clamp(-32, 31) + 32) as i8;
            }
        }

        let big_l = big_l.map(|l| l as u8);
        for ((l128, ql), qh) in big_l
            .chunks_exact(128)
            .zip(ql.chunks_exact_mut(64))
            .zip(qh.chunks_exact_mut(32))
        {
            for l in 0..32 {
                let (a, b, c, d) = (l128[l], l128[l + 32], l128[l + 64], l128[l + 96]);
                ql[l] = (a & 0xF) | ((c & 0xF) << 4);
                ql[l + 32] = (b & 0xF) | ((d & 0xF) << 4);
                qh[l] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((d >> 4) << 6);
            }
        }
    }
}

/// `quantize_row_q8_K_ref`: one f32 scale per 256 values, `round(x·(−127/max))`, plus the
/// sums of each 16 quants for the K-quant dot products.
pub(super) fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(292)) {
        let (max, amax) = signed_absmax(x);
        if amax == 0.0 {
            // ggml leaves `bsums` untouched here; zero is their true value.
            y.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        let (d, rest) = y.split_at_mut(4);
        let (qs, bsums) = rest.split_at_mut(QK_K);
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8 as u8;
        }
        for (s, q16) in bsums.chunks_exact_mut(2).zip(qs.chunks_exact(16)) {
            let sum: i32 = q16.iter().map(|&q| q as i8 as i32).sum();
            s.copy_from_slice(&(sum as i16).to_le_bytes());
        }
        d.copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}
