//! The legacy block kernels (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 tiles) and the Q8_0/Q8_1 activation
//! quantizers against `kernels_reference`.
//!
//! Tiles: every output equals the reference `vec_dot` up to float summation order (bounded
//! relative to `Σ |w·x|` of the integer block sums and the `m·s` terms), for random shapes
//! (every remainder of the register blocking), strides with garbage between rows, and weight
//! blocks from `quantize_row` as well as raw ones (d = 0, extreme scales, all-0/all-1 bits);
//! outputs outside the tile stay untouched. Quantizers: byte equality, NaN and infinities
//! included.
//!
//! `bench_legacy_tiles` (ignored) times the kernels:
//! `cargo test --release -p kernels-avx2 --test legacy_props -- --ignored --nocapture`.

use kernels_avx2::cpu::Avx2;
use kernels_avx2::quants::{act, legacy, x8, TileFn};
use kernels_reference::quants::{
    fp16_to_fp32, fp32_to_fp16, quantize_activations, quantize_row, vec_dot, vec_dot_type,
};
use plugin_api::GgmlType;
use proptest::prelude::*;

const QK: usize = 32;
const TYPES: [GgmlType; 5] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

fn cpu() -> Option<Avx2> {
    let cpu = Avx2::detect();
    if cpu.is_none() {
        eprintln!("skipped: this CPU lacks avx2/fma/f16c");
    }
    cpu
}

fn tile_of(t: GgmlType) -> TileFn {
    match t {
        GgmlType::Q4_0 => legacy::tile_q4_0,
        GgmlType::Q4_1 => legacy::tile_q4_1,
        GgmlType::Q5_0 => legacy::tile_q5_0,
        GgmlType::Q5_1 => legacy::tile_q5_1,
        GgmlType::Q8_0 => legacy::tile_q8_0,
        _ => unreachable!(),
    }
}

/// SplitMix64: the bulk data of a case comes from one proptest-chosen seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn bytes(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.next() as u8;
        }
    }
}

/// One block of weight floats: a random scale, sometimes all zero, sometimes one spike.
fn float_block(rng: &mut Rng, out: &mut [f32]) {
    let scale = [0.0, 1e-3, 0.5, 1.0, 30.0, 1e4][rng.below(6) as usize];
    let offset = if rng.below(3) == 0 {
        scale * rng.unit()
    } else {
        0.0
    };
    for v in out.iter_mut() {
        *v = scale * rng.unit() + offset;
    }
    if rng.below(8) == 0 {
        out[rng.below(QK as u64) as usize] = 50.0 * scale;
    }
}

/// A weight row of `nb` blocks: each block either `quantize_row` of random floats or raw
/// random bits under chosen f16 scales (0, ±65504, small, random moderate).
fn weight_row(t: GgmlType, nb: usize, rng: &mut Rng) -> Vec<u8> {
    let bb = t.block_bytes();
    let mut row = vec![0u8; nb * bb];
    let mut floats = [0f32; QK];
    for block in row.chunks_exact_mut(bb) {
        if rng.below(3) != 0 {
            float_block(rng, &mut floats);
            quantize_row(t, &floats, block).unwrap();
            continue;
        }
        match rng.below(3) {
            0 => rng.bytes(block),
            1 => block.fill(0x00),
            _ => block.fill(0xFF),
        }
        let scale = |rng: &mut Rng| match rng.below(5) {
            0 => 0u16,
            1 => 0x7BFF, // 65504
            2 => 0xFBFF, // -65504
            3 => fp32_to_fp16(1e-6 * rng.unit()),
            _ => fp32_to_fp16(4.0 * rng.unit()),
        };
        block[0..2].copy_from_slice(&scale(rng).to_le_bytes());
        if matches!(t, GgmlType::Q4_1 | GgmlType::Q5_1) {
            block[2..4].copy_from_slice(&scale(rng).to_le_bytes());
        }
    }
    row
}

/// An activation row (floats) of `nb` blocks: random magnitudes up to 100 (so Q8_1's
/// `s = d·Σq` stays a finite f16), zero blocks, spikes.
fn act_floats(nb: usize, rng: &mut Rng) -> Vec<f32> {
    let mut v = vec![0f32; nb * QK];
    for block in v.chunks_exact_mut(QK) {
        let scale = [0.0, 1e-4, 0.1, 1.0, 100.0][rng.below(5) as usize];
        for x in block.iter_mut() {
            *x = scale * rng.unit();
        }
        if rng.below(8) == 0 {
            block[rng.below(QK as u64) as usize] = 2000.0 * rng.unit();
        }
    }
    v
}

/// Rows at `stride` apart, garbage in between; no byte after the last row (the tile may read
/// nothing past it).
fn strided(rows: &[Vec<u8>], stride: usize, rng: &mut Rng) -> Vec<u8> {
    let mut buf = vec![0u8; (rows.len() - 1) * stride + rows[0].len()];
    rng.bytes(&mut buf);
    for (i, row) in rows.iter().enumerate() {
        buf[i * stride..][..row.len()].copy_from_slice(row);
    }
    buf
}

fn f16_at(b: &[u8], off: usize) -> f64 {
    fp16_to_fp32(u16::from_le_bytes([b[off], b[off + 1]])) as f64
}

/// A weight block decoded to `(d, m, values)` (values with the offset applied).
fn decode_weight(t: GgmlType, b: &[u8]) -> (f64, f64, [i32; QK]) {
    let mut v = [0i32; QK];
    let nib = |qs: &[u8], j: usize| {
        if j < 16 {
            (qs[j] & 0x0F) as i32
        } else {
            (qs[j - 16] >> 4) as i32
        }
    };
    let qh = |off: usize| u32::from_le_bytes(b[off..off + 4].try_into().unwrap());
    match t {
        GgmlType::Q4_0 => (0..QK).for_each(|j| v[j] = nib(&b[2..], j) - 8),
        GgmlType::Q4_1 => (0..QK).for_each(|j| v[j] = nib(&b[4..], j)),
        GgmlType::Q5_0 => {
            let h = qh(2);
            (0..QK).for_each(|j| v[j] = nib(&b[6..], j) + 16 * ((h >> j) & 1) as i32 - 16)
        }
        GgmlType::Q5_1 => {
            let h = qh(4);
            (0..QK).for_each(|j| v[j] = nib(&b[8..], j) + 16 * ((h >> j) & 1) as i32)
        }
        _ => (0..QK).for_each(|j| v[j] = b[2 + j] as i8 as i32),
    }
    let m = if matches!(t, GgmlType::Q4_1 | GgmlType::Q5_1) {
        f16_at(b, 2)
    } else {
        0.0
    };
    (f16_at(b, 0), m, v)
}

/// `Σ_blocks |d_w·d_x|·Σ|q·y| + |m·s|`: the scale float rounding errors are relative to.
fn magnitude(t: GgmlType, w: &[u8], x: &[u8]) -> f64 {
    let (wb, xb) = (t.block_bytes(), vec_dot_type(t).block_bytes());
    let y_at = xb - QK;
    w.chunks_exact(wb)
        .zip(x.chunks_exact(xb))
        .map(|(w, x)| {
            let (dw, m, v) = decode_weight(t, w);
            let dx = f16_at(x, 0);
            let s = if y_at == 4 { f16_at(x, 2) } else { 0.0 };
            let sum: f64 = (0..QK)
                .map(|j| (v[j] as f64 * x[y_at + j] as i8 as f64).abs())
                .sum();
            (dw * dx).abs() * sum + (m * s).abs()
        })
        .sum()
}

/// A tile case: shapes, strides and data, all from the arguments.
#[allow(clippy::too_many_arguments)]
fn check_tile(
    cpu: Avx2,
    t: GgmlType,
    nb: usize,
    nr: usize,
    nc: usize,
    w_pad: usize,
    x_pad: usize,
    out_pad: usize,
    seed: u64,
    repacked: bool,
) -> Result<(), TestCaseError> {
    let k = nb * QK;
    let mut rng = Rng(seed);
    let xt = vec_dot_type(t);
    let (wb, xb) = (t.row_bytes(k).unwrap(), xt.row_bytes(k).unwrap());
    let w_rows: Vec<Vec<u8>> = (0..nr).map(|_| weight_row(t, nb, &mut rng)).collect();
    let x_rows: Vec<Vec<u8>> = (0..nc)
        .map(|_| {
            let mut q = vec![0u8; xb];
            quantize_activations(xt, &act_floats(nb, &mut rng), &mut q).unwrap();
            q
        })
        .collect();
    let (w_stride, x_stride, out_stride) = (wb + w_pad, xb + x_pad, nr + out_pad);
    let mut w = strided(&w_rows, w_stride, &mut rng);
    let x = strided(&x_rows, x_stride, &mut rng);
    let mut tile = tile_of(t);
    if repacked {
        // `prepare_weight`'s layout: groups of 8 whole rows, no padding between them.
        let (layout, packed) = x8::repack(t, nr, k, &w_rows.concat()).unwrap();
        prop_assert!(x8::unpack(layout, nr, k, &packed) == Some(w_rows.concat()));
        (w, tile) = (packed, x8::tile_fn(layout).unwrap());
    }
    let w_stride = if repacked { wb } else { w_stride };
    let sentinel = f32::from_bits(0x7FC0_1234);
    // Exactly the tile's extent when out_pad = 0; otherwise gaps and a tail to stay untouched.
    let mut out = vec![sentinel; (nc - 1) * out_stride + nr + out_pad];
    tile(
        cpu, k, &w, w_stride, nr, &x, x_stride, nc, &mut out, out_stride,
    );
    for (i, &o) in out.iter().enumerate() {
        let (c, r) = (i / out_stride, i % out_stride);
        if c >= nc || r >= nr {
            prop_assert_eq!(
                o.to_bits(),
                sentinel.to_bits(),
                "out[{}] outside the tile",
                i
            );
            continue;
        }
        let want = vec_dot(t, k, &w_rows[r], &x_rows[c]).unwrap();
        let tol = 1e-5 * magnitude(t, &w_rows[r], &x_rows[c]) + 1e-30;
        prop_assert!(
            ((o as f64) - (want as f64)).abs() <= tol,
            "{:?} k={} row {} col {}: got {}, reference {} (tolerance {})",
            t,
            k,
            r,
            c,
            o,
            want,
            tol
        );
    }
    Ok(())
}

/// Block counts: the 1-, 3- and 13-block rows named in the brief, and any count up to 64.
fn blocks() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), Just(3), Just(13), 1usize..=64]
}

macro_rules! tile_props {
    ($($name:ident: $t:expr;)*) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            $(
                #[test]
                fn $name(
                    nb in blocks(),
                    nr in 1usize..=9,
                    nc in 1usize..=9,
                    w_pad in prop_oneof![Just(0usize), 1usize..=40],
                    x_pad in prop_oneof![Just(0usize), 1usize..=40],
                    out_pad in 0usize..=5,
                    seed in any::<u64>(),
                ) {
                    let Some(cpu) = cpu() else { return Ok(()) };
                    check_tile(cpu, $t, nb, nr, nc, w_pad, x_pad, out_pad, seed, false)?;
                }
            )*
        }
    };
}

tile_props! {
    tile_q4_0_matches_vec_dot: GgmlType::Q4_0;
    tile_q4_1_matches_vec_dot: GgmlType::Q4_1;
    tile_q5_0_matches_vec_dot: GgmlType::Q5_0;
    tile_q5_1_matches_vec_dot: GgmlType::Q5_1;
    tile_q8_0_matches_vec_dot: GgmlType::Q8_0;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// Decode tiles tall enough for the passes that prefetch their successors' rows.
    #[test]
    fn decode_tiles_match_vec_dot(
        t in prop::sample::select(TYPES.to_vec()),
        nb in 1usize..=16,
        nr in 10usize..=40,
        w_pad in prop_oneof![Just(0usize), 1usize..=40],
        seed in any::<u64>(),
    ) {
        let Some(cpu) = cpu() else { return Ok(()) };
        check_tile(cpu, t, nb, nr, 1, w_pad, 3, 1, seed, false)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// Q5_0 repacked by `prepare_weight` into groups of 8 rows (`x8`): round trip, and the
    /// tile over it against the reference on the GGUF rows.
    #[test]
    fn repacked_q5_0_tiles_match_vec_dot(
        nb in blocks(),
        groups in 1usize..=3,
        nc in 1usize..=9,
        x_pad in prop_oneof![Just(0usize), 1usize..=40],
        out_pad in 0usize..=5,
        seed in any::<u64>(),
    ) {
        let Some(cpu) = cpu() else { return Ok(()) };
        check_tile(cpu, GgmlType::Q5_0, nb, 8 * groups, nc, 0, x_pad, out_pad, seed, true)?;
    }
}

/// Every tile shape up to 9×9 once per type (every remainder of the register blocking,
/// deterministically), at 96 and 416 elements.
#[test]
fn every_tile_shape_matches_vec_dot() {
    let Some(cpu) = cpu() else { return };
    for t in TYPES {
        for nb in [3, 13] {
            for nr in 1..=9 {
                for nc in 1..=9 {
                    let seed = (nb * 100 + nr * 10 + nc) as u64;
                    check_tile(cpu, t, nb, nr, nc, 3, 5, 2, seed, false).unwrap();
                }
            }
        }
    }
}

/// Rows of `n` elements that ties, infinities and NaNs can reach.
fn special_floats(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v = vec![0f32; n];
    for block in v.chunks_exact_mut(QK) {
        match rng.below(8) {
            // amax = 127 makes the multiplier exactly 1: halves are ties.
            0 => {
                for x in block.iter_mut() {
                    *x = (rng.below(255) as f32 - 127.0) + 0.5 * rng.below(2) as f32;
                }
                block[rng.below(QK as u64) as usize] = -127.0;
            }
            // Any bit pattern: NaNs, infinities, subnormals, huge and tiny values.
            1 => block
                .iter_mut()
                .for_each(|x| *x = f32::from_bits(rng.next() as u32)),
            // A few specials in ordinary data.
            2 => {
                block.iter_mut().for_each(|x| *x = rng.unit());
                let specials = [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0];
                for _ in 0..3 {
                    block[rng.below(QK as u64) as usize] = specials[rng.below(5) as usize];
                }
            }
            // Subnormal amax: the multiplier 127/amax overflows to infinity.
            3 => block
                .iter_mut()
                .for_each(|x| *x = f32::from_bits(rng.below(0x0080_0000) as u32) * rng.unit()),
            4 => block.fill(0.0),
            5 => block.fill(f32::MAX * rng.unit()),
            _ => {
                let scale = 10f32.powi(rng.below(60) as i32 - 30);
                block.iter_mut().for_each(|x| *x = scale * rng.unit());
            }
        }
    }
    v
}

fn check_quantizer(cpu: Avx2, t: GgmlType, src: &[f32]) -> Result<(), TestCaseError> {
    let n = t.row_bytes(src.len()).unwrap();
    let mut want = vec![0u8; n];
    quantize_activations(t, src, &mut want).unwrap();
    let mut got = vec![0xAAu8; n];
    match t {
        GgmlType::Q8_0 => act::quantize_q8_0(cpu, src, &mut got),
        _ => act::quantize_q8_1(cpu, src, &mut got),
    }
    let bb = t.block_bytes();
    for (i, (g, w)) in got.chunks_exact(bb).zip(want.chunks_exact(bb)).enumerate() {
        prop_assert_eq!(g, w, "{:?} block {} of {:?}", t, i, &src[i * QK..][..QK]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn quantize_q8_0_matches_reference(nb in blocks(), seed in any::<u64>()) {
        let Some(cpu) = cpu() else { return Ok(()) };
        check_quantizer(cpu, GgmlType::Q8_0, &special_floats(&mut Rng(seed), nb * QK))?;
    }

    #[test]
    fn quantize_q8_1_matches_reference(nb in blocks(), seed in any::<u64>()) {
        let Some(cpu) = cpu() else { return Ok(()) };
        check_quantizer(cpu, GgmlType::Q8_1, &special_floats(&mut Rng(seed), nb * QK))?;
    }

    #[test]
    fn quantizers_match_reference_on_plain_floats(
        src in (1usize..=20).prop_flat_map(|nb| prop::collection::vec(-1e3f32..1e3, nb * QK)),
    ) {
        let Some(cpu) = cpu() else { return Ok(()) };
        check_quantizer(cpu, GgmlType::Q8_0, &src)?;
        check_quantizer(cpu, GgmlType::Q8_1, &src)?;
    }
}

#[test]
fn quantizers_handle_empty_rows() {
    let Some(cpu) = cpu() else { return };
    act::quantize_q8_0(cpu, &[], &mut []);
    act::quantize_q8_1(cpu, &[], &mut []);
}

// ------------------------------------------------------------------------------ timing

/// Best time of one call over ~0.3 s of calls, in ns: the minimum filters out the moments
/// the (shared) machine gave the core to someone else.
fn time_ns(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    let start = std::time::Instant::now();
    while start.elapsed().as_secs_f64() < 0.3 {
        let t = std::time::Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64() * 1e9);
    }
    best
}

/// ns per block dot product, each kernel against a loop of one-row calls (`tile` with
/// nr = nc = 1): decode (nc = 1) streaming 128 MiB of weights in `BENCH_ROWS`-row tiles
/// (default 64) as the matmul driver hands them out, decode over that many rows that stay in
/// L2, and a square prompt tile of that size; rows of `BENCH_K` elements (default 4096).
/// Best of 3 rounds per cell.
#[test]
#[ignore]
fn bench_legacy_tiles() {
    let Some(cpu) = cpu() else { return };
    let env = |name: &str, default: usize| {
        std::env::var(name).map_or(default, |v| v.parse().expect("a number of elements"))
    };
    let k = env("BENCH_K", 4096);
    let nb = k / QK;
    let rows = env("BENCH_ROWS", 64);
    let mut rng = Rng(1);
    let mut table = [[f64::INFINITY; 6]; TYPES.len()];
    for _round in 0..3 {
        for (t, cells) in TYPES.into_iter().zip(&mut table) {
            let xt = vec_dot_type(t);
            let (wb, xb) = (t.row_bytes(k).unwrap(), xt.row_bytes(k).unwrap());
            let big_rows = (128 << 20) / wb / rows * rows;
            let mut w = vec![0u8; big_rows * wb];
            for row in w.chunks_exact_mut(wb) {
                row.copy_from_slice(&weight_row(t, nb, &mut rng));
            }
            let mut x = vec![0u8; rows * xb];
            for row in x.chunks_exact_mut(xb) {
                quantize_activations(xt, &act_floats(nb, &mut rng), row).unwrap();
            }
            let tile = tile_of(t);
            let mut out = vec![0f32; big_rows.max(rows * rows)];
            // One call per `rows`-row tile (or per row), all weight rows, activation rows 0..nc.
            let mut sweep = |w: &[u8], n_rows: usize, nc: usize, per_row: bool| {
                let step = if per_row { 1 } else { rows };
                time_ns(|| {
                    for r0 in (0..n_rows).step_by(step) {
                        let n = step.min(n_rows - r0);
                        if per_row {
                            for c in 0..nc {
                                let o = &mut out[c * n_rows + r0..];
                                tile(cpu, k, &w[r0 * wb..], wb, 1, &x[c * xb..], xb, 1, o, n_rows);
                            }
                        } else {
                            let o = &mut out[r0..];
                            tile(cpu, k, &w[r0 * wb..], wb, n, &x, xb, nc, o, n_rows);
                        }
                    }
                }) / (n_rows * nc * nb) as f64
            };
            let times = [
                sweep(&w, big_rows, 1, false),
                sweep(&w, big_rows, 1, true),
                sweep(&w, rows, 1, false),
                sweep(&w, rows, 1, true),
                sweep(&w, rows, rows, false),
                sweep(&w, rows, rows, true),
            ];
            for (cell, t) in cells.iter_mut().zip(times) {
                *cell = cell.min(t);
            }
        }
    }
    for t in [GgmlType::Q8_0, GgmlType::Q8_1] {
        let src = act_floats(rows * nb, &mut rng);
        let mut dst = vec![0u8; t.row_bytes(src.len()).unwrap()];
        let avx2 = time_ns(|| match t {
            GgmlType::Q8_0 => act::quantize_q8_0(cpu, &src, &mut dst),
            _ => act::quantize_q8_1(cpu, &src, &mut dst),
        });
        let reference = time_ns(|| quantize_activations(t, &src, &mut dst).unwrap());
        let blocks = (rows * nb) as f64;
        println!(
            "quantize {}: {:.2} ns per block (reference {:.2})",
            t.name(),
            avx2 / blocks,
            reference / blocks
        );
    }
    println!("ns per block dot (k = {k}); each kernel, then a loop of 1-row calls");
    println!(
        "{:6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "type", "nc=1 DRAM", "1-row", "nc=1 L2", "1-row", "nc=64", "1-row"
    );
    for (t, cells) in TYPES.into_iter().zip(table) {
        print!("{:6}", t.name());
        for c in cells {
            print!(" {c:>10.3}");
        }
        println!();
    }
}
