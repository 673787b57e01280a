//! Property tests of `kernels_scalar::quants`:
//! - quantize → dequantize stays within each format's error bound;
//! - `vec_dot` agrees with the dot product of the dequantized rows (computed in f64) to
//!   within float rounding, for every weight type, on quantized and on random weights;
//! - wrong sizes are errors, and no input (random bytes, NaN, inf) makes anything panic.

use kernels_scalar::quants::{
    dequantize_row, fp16_to_fp32, fp32_to_fp16, quantize_row, vec_dot, vec_dot_type,
};
use plugin_api::{GgmlType, QK_K};
use proptest::prelude::*;

// ---------------------------------------------------------------- inputs

/// A small deterministic generator: test cases are described by a seed, so that they are
/// cheap to make and print.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal (a sum of four uniforms), mean 0, σ ≈ 0.58.
    fn normalish(&mut self) -> f32 {
        (0..4).map(|_| self.unit()).sum::<f32>() - 2.0
    }
}

/// `n` values of one of several shapes, scaled by 2^`exp`.
fn values(seed: u64, n: usize, shape: u8, exp: i32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    let scale = 2f32.powi(exp);
    (0..n)
        .map(|i| {
            let v = match shape % 6 {
                0 => r.normalish(),
                1 => r.unit(),                            // all positive
                2 => r.normalish() * 0.1 - 0.5,           // offset: the mins matter
                3 if i % 41 == 7 => r.normalish() * 30.0, // outliers
                3 => r.normalish(),
                4 if (i / 16) % 3 == 0 => 0.0, // whole zero groups
                4 => r.normalish(),
                _ => ((r.u64() % 7) as f32 - 3.0) * 0.25, // few distinct values, ties
            };
            v * scale
        })
        .collect()
}

/// Offsets of the f16 scale fields within a block.
fn scale_fields(t: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match t {
        Q4_0 | Q5_0 | Q8_0 => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q8_1 => &[0], // its `s` is derived below
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        F32 | F16 | BF16 | Q8_K => &[],
    }
}

/// Random bytes for `n` elements of `t` whose scales are finite and moderate (so that sums
/// are meaningful); Q8_K gets a finite `d` and consistent `bsums`; float types get finite
/// values.
fn random_row(t: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let bytes = t.row_bytes(n).unwrap();
    if !t.is_quantized() {
        let x: Vec<f32> = (0..n).map(|_| r.normalish() * 4.0).collect();
        let mut out = vec![0u8; bytes];
        quantize_row(t, &x, &mut out).unwrap();
        return out;
    }
    let mut out: Vec<u8> = (0..bytes).map(|_| r.u64() as u8).collect();
    for block in out.chunks_exact_mut(t.block_bytes()) {
        let mag = 2f32.powi((r.u64() % 8) as i32 - 6);
        if t == GgmlType::Q8_K {
            block[..4].copy_from_slice(&(mag * r.normalish() / 127.0).to_le_bytes());
            for j in 0..QK_K / 16 {
                let sum: i32 = block[4 + 16 * j..4 + 16 * (j + 1)]
                    .iter()
                    .map(|&q| q as i8 as i32)
                    .sum();
                block[260 + 2 * j..262 + 2 * j].copy_from_slice(&(sum as i16).to_le_bytes());
            }
        }
        for &off in scale_fields(t) {
            let h = fp32_to_fp16(mag * r.normalish());
            block[off..off + 2].copy_from_slice(&h.to_le_bytes());
        }
        if t == GgmlType::Q8_1 {
            let d = fp16_to_fp32(u16::from_le_bytes([block[0], block[1]]));
            let sum: i32 = block[4..].iter().map(|&q| q as i8 as i32).sum();
            block[2..4].copy_from_slice(&fp32_to_fp16(sum as f32 * d).to_le_bytes());
        }
    }
    out
}

fn quantize(t: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; t.row_bytes(x.len()).unwrap()];
    quantize_row(t, x, &mut q).unwrap();
    q
}

fn dequantize(t: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    dequantize_row(t, q, &mut y).unwrap();
    y
}

/// Row lengths: 1–3 blocks of the type, or of 256 for the K-quants.
fn len_for(t: GgmlType, blocks: usize) -> usize {
    t.block_size().max(32) * blocks
}

const WEIGHT_TYPES: [GgmlType; 15] = GgmlType::ALL;

// ---------------------------------------------------------------- round trip

/// The largest error quantize→dequantize may make on the block `x` (one block of `t`).
/// Formats with one scale per block have analytic bounds: half a quantization step, a full
/// step where ggml clamps the extreme value (Q4_0/Q5_0), plus the rounding of the f16 scale
/// and min. The K-quants fit their sub-block scales by search, so their bounds are
/// empirical: a fraction of the super-block's largest magnitude, with margin, plus what a
/// subnormal f16 super-block scale can lose (half its spacing, 2^-25, times the largest
/// integer factor it is multiplied by). Every bound also allows float rounding (amax·2^-20).
fn round_trip_bound(t: GgmlType, x: &[f32]) -> f32 {
    use GgmlType::*;
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let min = x.iter().fold(f32::MAX, |m, v| m.min(*v));
    let max = x.iter().fold(-f32::MAX, |m, v| m.max(*v));
    let f16_rel = 1.0 / 1024.0; // two f16 ulps, relative
    let f16_abs = 6.0e-8 * 16.0; // subnormal f16 scales
    let sub = 3.0e-8; // half the spacing of subnormal f16 values
    amax / 1_048_576.0
        + match t {
            F32 => 0.0,
            F16 => amax * f16_rel + 6.0e-8,
            BF16 => amax / 128.0,
            Q8_0 | Q8_1 => amax / 127.0 * (0.5 + 127.0 * f16_rel) + f16_abs * 127.0,
            Q8_K => amax / 127.0 * 0.51,
            Q4_0 => amax / 8.0 * (1.0 + 8.0 * f16_rel) + f16_abs * 8.0,
            Q5_0 => amax / 16.0 * (1.0 + 16.0 * f16_rel) + f16_abs * 16.0,
            Q4_1 => {
                (max - min) / 15.0 * (0.5 + 15.0 * f16_rel) + min.abs() * f16_rel + f16_abs * 15.0
            }
            Q5_1 => {
                (max - min) / 31.0 * (0.5 + 31.0 * f16_rel) + min.abs() * f16_rel + f16_abs * 31.0
            }
            Q2_K => amax * 0.55 + sub * (15.0 * 3.0 + 15.0),
            Q3_K => amax * 0.33 + sub * 32.0 * 4.0,
            Q4_K => amax * 0.15 + sub * 63.0 * (15.0 + 1.0),
            Q5_K => amax * 0.08 + sub * 63.0 * (31.0 + 1.0),
            Q6_K => amax * 0.04 + sub * 128.0 * 32.0,
        }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn quantize_dequantize_stays_within_bounds(
        ti in 0..GgmlType::ALL.len(),
        seed in any::<u64>(),
        shape in 0u8..6,
        exp in -12i32..8, // larger values would overflow the f16 scales and mins
        blocks in 1usize..4,
    ) {
        let t = GgmlType::ALL[ti];
        let n = len_for(t, blocks);
        let x = values(seed, n, shape, exp);
        let y = dequantize(t, &quantize(t, &x), n);
        let bs = t.block_size();
        for (b, (xb, yb)) in x.chunks(bs).zip(y.chunks(bs)).enumerate() {
            let bound = round_trip_bound(t, xb);
            for (i, (a, q)) in xb.iter().zip(yb).enumerate() {
                prop_assert!(
                    (a - q).abs() <= bound,
                    "{}: block {b} element {i}: {a} came back as {q} (bound {bound})", t.name()
                );
            }
        }
    }

    /// The activation formats carry sums the dot products rely on.
    #[test]
    fn activation_side_fields_are_consistent(seed in any::<u64>(), shape in 0u8..6, exp in -8i32..8) {
        let x = values(seed, QK_K, shape, exp);
        let q8k = quantize(GgmlType::Q8_K, &x);
        for j in 0..QK_K / 16 {
            let sum: i32 = q8k[4 + 16 * j..4 + 16 * (j + 1)].iter().map(|&q| q as i8 as i32).sum();
            prop_assert_eq!(i16::from_le_bytes([q8k[260 + 2 * j], q8k[261 + 2 * j]]) as i32, sum);
        }
        let q81 = quantize(GgmlType::Q8_1, &x);
        for block in q81.chunks_exact(36) {
            let d = fp16_to_fp32(u16::from_le_bytes([block[0], block[1]]));
            let sum: i32 = block[4..].iter().map(|&q| q as i8 as i32).sum();
            // ggml rounds `sum * d` with the f32 d, before d itself is rounded to f16 (by up
            // to 2^-11 relative, or 2^-25 absolute when subnormal).
            let s = fp16_to_fp32(u16::from_le_bytes([block[2], block[3]]));
            let expected = sum as f32 * d;
            let tol = expected.abs() / 512.0 + sum.abs() as f32 * 3.0e-8 + 1e-7;
            prop_assert!((s - expected).abs() <= tol, "s {} vs {}", s, expected);
        }
    }
}

// ---------------------------------------------------------------- vec_dot

/// `vec_dot(t, w, x)` against Σ dequant(w)·dequant(x) in f64. The tolerance is float
/// rounding relative to Σ|w·x| — except that a Q8_1 activation carries its block sum as an
/// f16 (`s`), which Q4_1/Q5_1 multiply by their min, so those get f16 precision on that term.
fn check_vec_dot(t: GgmlType, n: usize, w: &[u8], x: &[u8]) -> Result<(), TestCaseError> {
    let xt = vec_dot_type(t);
    let wf = dequantize(t, w, n);
    let xf = dequantize(xt, x, n);
    let exact: f64 = wf.iter().zip(&xf).map(|(a, b)| *a as f64 * *b as f64).sum();
    let magnitude: f64 = wf
        .iter()
        .zip(&xf)
        .map(|(a, b)| (*a as f64 * *b as f64).abs())
        .sum();
    let mut tol = magnitude * 1e-5 + 1e-30;
    if xt == GgmlType::Q8_1 && matches!(t, GgmlType::Q4_1 | GgmlType::Q5_1) {
        let m_off = 2; // the weight's min follows its d
        for (wb, xb) in w.chunks_exact(t.block_bytes()).zip(x.chunks_exact(36)) {
            let m = fp16_to_fp32(u16::from_le_bytes([wb[m_off], wb[m_off + 1]])) as f64;
            let s = fp16_to_fp32(u16::from_le_bytes([xb[2], xb[3]])) as f64;
            tol += (m * s).abs() / 1024.0;
        }
    }
    let got = vec_dot(t, n, w, x).map_err(TestCaseError::fail)? as f64;
    prop_assert!(
        (got - exact).abs() <= tol,
        "{}: vec_dot {got} vs exact {exact} (tolerance {tol})",
        t.name()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn vec_dot_matches_dequantized_dot_on_quantized_rows(
        ti in 0..WEIGHT_TYPES.len(),
        seed in any::<u64>(),
        shapes in (0u8..6, 0u8..6),
        exps in (-6i32..6, -6i32..6),
        blocks in 1usize..4,
    ) {
        let t = WEIGHT_TYPES[ti];
        let n = len_for(t, blocks);
        let w = quantize(t, &values(seed, n, shapes.0, exps.0));
        let x = quantize(vec_dot_type(t), &values(seed ^ 0x5555, n, shapes.1, exps.1));
        check_vec_dot(t, n, &w, &x)?;
    }

    #[test]
    fn vec_dot_matches_dequantized_dot_on_random_rows(
        ti in 0..WEIGHT_TYPES.len(),
        seed in any::<u64>(),
        blocks in 1usize..4,
    ) {
        let t = WEIGHT_TYPES[ti];
        let n = len_for(t, blocks);
        let w = random_row(t, n, seed);
        let x = random_row(vec_dot_type(t), n, seed ^ 0xAAAA);
        check_vec_dot(t, n, &w, &x)?;
    }
}

// ---------------------------------------------------------------- robustness

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any bytes dequantize and dot without panicking (NaN and inf allowed in the result).
    #[test]
    fn random_bytes_never_panic(ti in 0..GgmlType::ALL.len(), seed in any::<u64>(), blocks in 0usize..3) {
        let t = GgmlType::ALL[ti];
        let n = len_for(t, blocks);
        let mut r = Rng::new(seed);
        let w: Vec<u8> = (0..t.row_bytes(n).unwrap()).map(|_| r.u64() as u8).collect();
        let x: Vec<u8> = (0..vec_dot_type(t).row_bytes(n).unwrap()).map(|_| r.u64() as u8).collect();
        let mut y = vec![0f32; n];
        prop_assert!(dequantize_row(t, &w, &mut y).is_ok());
        prop_assert!(vec_dot(t, n, &w, &x).is_ok());
    }

    /// Any floats — NaN, ±inf, huge, subnormal — quantize without panicking.
    #[test]
    fn any_floats_quantize_without_panic(ti in 0..GgmlType::ALL.len(), seed in any::<u64>(), blocks in 1usize..3) {
        let t = GgmlType::ALL[ti];
        let n = len_for(t, blocks);
        let mut r = Rng::new(seed);
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE, 1e-45, -0.0];
        let x: Vec<f32> = (0..n)
            .map(|_| match r.u64() % 4 {
                0 => specials[(r.u64() % specials.len() as u64) as usize],
                1 => f32::from_bits(r.u64() as u32),
                _ => r.normalish(),
            })
            .collect();
        let q = quantize(t, &x);
        dequantize(t, &q, n);
    }

    /// Every size mismatch is an error, never a panic; matching sizes are accepted.
    #[test]
    fn size_mismatches_are_errors(ti in 0..GgmlType::ALL.len(), n in 0usize..700, delta in -40isize..40) {
        let t = GgmlType::ALL[ti];
        let xt = vec_dot_type(t);
        let resize = |len: usize| (len as isize + delta).max(0) as usize;
        match (t.row_bytes(n), xt.row_bytes(n)) {
            (Some(wb), Some(xb)) => {
                let mut y = vec![0f32; n];
                prop_assert!(dequantize_row(t, &vec![0u8; wb], &mut y).is_ok());
                prop_assert!(quantize_row(t, &y, &mut vec![0u8; wb]).is_ok());
                prop_assert!(vec_dot(t, n, &vec![0u8; wb], &vec![0u8; xb]).is_ok());
                if delta != 0 && resize(wb) != wb {
                    let e = dequantize_row(t, &vec![0u8; resize(wb)], &mut y).unwrap_err();
                    prop_assert!(e.contains("bytes"), "{}", e);
                    prop_assert!(quantize_row(t, &y, &mut vec![0u8; resize(wb)]).is_err());
                    prop_assert!(vec_dot(t, n, &vec![0u8; resize(wb)], &vec![0u8; xb]).is_err());
                }
                if delta != 0 && resize(xb) != xb {
                    prop_assert!(vec_dot(t, n, &vec![0u8; wb], &vec![0u8; resize(xb)]).is_err());
                }
            }
            _ => {
                // n is not a whole number of blocks: every entry point refuses it.
                let mut y = vec![0f32; n];
                let e = dequantize_row(t, &vec![0u8; resize(n)], &mut y).unwrap_err();
                prop_assert!(e.contains("whole number"), "{}", e);
                prop_assert!(quantize_row(t, &y, &mut vec![0u8; resize(n)]).is_err());
                prop_assert!(vec_dot(t, n, &[], &[]).is_err());
            }
        }
    }
}

/// Empty rows are valid for every type and dot to zero.
#[test]
fn empty_rows() {
    for t in GgmlType::ALL {
        assert!(dequantize_row(t, &[], &mut []).is_ok());
        assert!(quantize_row(t, &[], &mut []).is_ok());
        assert_eq!(vec_dot(t, 0, &[], &[]), Ok(0.0));
    }
}

/// Concrete values of the simplest formats, worked out by hand from ggml's definitions.
#[test]
fn hand_worked_examples() {
    // Q8_0: d = 127/127 = 1, so the quants are the values rounded half away from zero.
    let mut x = [0f32; 32];
    x[0] = 127.0;
    x[1] = -2.5;
    x[2] = 2.5;
    x[3] = 0.49;
    let q = quantize(GgmlType::Q8_0, &x);
    assert_eq!(&q[..6], &[0x00, 0x3C, 127, (-3i8) as u8, 3, 0]);

    // Q4_0: max = -8 → d = 1; q = trunc(x/d + 8.5) clamped to 15; value = (q - 8)·d.
    let mut x = [0f32; 32];
    x[0] = -8.0;
    x[1] = 7.0;
    x[16] = 8.0; // clamps to 15 → 7
    let q = quantize(GgmlType::Q4_0, &x);
    assert_eq!(&q[..2], &[0x00, 0x3C]);
    assert_eq!(q[2], 0xF0); // element 0 → 0 (low nibble), element 16 → 15 (high nibble)
    assert_eq!(q[3] & 0x0F, 15);
    let y = dequantize(GgmlType::Q4_0, &q, 32);
    assert_eq!((y[0], y[1], y[16], y[5]), (-8.0, 7.0, 7.0, 0.0));

    // Q8_K of a ramp: max = 255/64 → iscale = -127·64/255... the sign follows ggml: d < 0
    // when the largest magnitude is positive.
    let x: Vec<f32> = (0..256).map(|i| i as f32 / 64.0).collect();
    let q = quantize(GgmlType::Q8_K, &x);
    let d = f32::from_le_bytes([q[0], q[1], q[2], q[3]]);
    assert!(d < 0.0);
    assert_eq!(q[4 + 255] as i8, -127);
}
