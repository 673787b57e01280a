//! The K-quant kernels of kernels-avx2 against the reference: the Q4_K/Q5_K/Q6_K tiles
//! (every register-block remainder, padded strides, tight slices, zero blocks, extreme and
//! arbitrary scales) and the Q8_K activation quantizer (byte for byte, degenerate floats
//! included). An ignored test times the tiles.

use kernels_avx2::cpu::Avx2;
use kernels_avx2::quants::{quantize_activations, tile_fn, x8, TileFn};
use kernels_reference::quants;
use plugin_api::{GgmlType, QK_K};
use proptest::prelude::*;
use std::time::Instant;

const TYPES: [GgmlType; 3] = [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K];

fn cpu() -> Avx2 {
    Avx2::detect().expect("these tests need avx2, fma and f16c")
}

/// xorshift64: bulk data from one proptest-chosen seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Floats for one super-block: random values at a random magnitude (tiny to large, so the
/// f16 scales range from subnormal to big), sometimes all zero, sometimes offset so a
/// sub-block's min is far from zero, sometimes a lone spike.
fn block_floats(rng: &mut Rng) -> Vec<f32> {
    let magnitude = [1e-7f32, 1e-4, 1.0, 30.0, 1e3][rng.below(5) as usize];
    let mut v: Vec<f32> = (0..QK_K).map(|_| rng.unit() * magnitude).collect();
    match rng.below(8) {
        0 => v.fill(0.0),
        1 => v.iter_mut().for_each(|x| *x = *x * 0.1 - magnitude),
        2 => {
            v.fill(0.0);
            v[rng.below(QK_K as u64) as usize] = magnitude;
        }
        _ => {}
    }
    v
}

/// A finite f16 of moderate magnitude (either sign) as bytes.
fn finite_f16(rng: &mut Rng) -> [u8; 2] {
    quants::fp32_to_fp16(rng.unit() * [1e-3f32, 0.1, 4.0][rng.below(3) as usize]).to_le_bytes()
}

/// One weight row of `t`: each super-block quantized from [`block_floats`], or (one in four)
/// arbitrary bytes with finite `d`/`dmin`, which reaches every bit pattern of the packed
/// scales and quants the quantizer may never produce.
fn weight_row(t: GgmlType, k: usize, rng: &mut Rng) -> Vec<u8> {
    let bb = t.block_bytes();
    let mut row = vec![0u8; t.row_bytes(k).unwrap()];
    for block in row.chunks_exact_mut(bb) {
        if rng.below(4) == 0 {
            block.iter_mut().for_each(|b| *b = rng.next() as u8);
            if t == GgmlType::Q6_K {
                block[208..210].copy_from_slice(&finite_f16(rng));
            } else {
                block[0..2].copy_from_slice(&finite_f16(rng));
                block[2..4].copy_from_slice(&finite_f16(rng));
            }
        } else {
            quants::quantize_row(t, &block_floats(rng), block).unwrap();
        }
    }
    row
}

/// One activation row quantized to Q8_K by the reference.
fn activation_row(k: usize, rng: &mut Rng) -> Vec<u8> {
    let f: Vec<f32> = (0..k / QK_K).flat_map(|_| block_floats(rng)).collect();
    let mut q = vec![0u8; GgmlType::Q8_K.row_bytes(k).unwrap()];
    quants::quantize_activations(GgmlType::Q8_K, &f, &mut q).unwrap();
    q
}

/// `n` rows at `stride` bytes (the gaps filled with junk), cut right after the last row so
/// that any read past it panics.
fn strided(rows: &[Vec<u8>], stride: usize, rng: &mut Rng) -> Vec<u8> {
    let len = rows[0].len();
    let mut buf: Vec<u8> = (0..(rows.len() - 1) * stride + len)
        .map(|_| rng.next() as u8)
        .collect();
    for (i, r) in rows.iter().enumerate() {
        buf[i * stride..][..len].copy_from_slice(r);
    }
    buf
}

/// Σ|w_i·x_i| of the dequantized rows: the scale float-order differences are measured
/// against. For Q4_K/Q5_K, whose `w = d·sc·q − dmin·m` llama.cpp sums as two separate
/// terms, each term's magnitude counts: `Σ (|d·sc·q| + |dmin·m|)·|x|`.
fn magnitude(t: GgmlType, k: usize, w: &[u8], x: &[u8]) -> f64 {
    let mut xd = vec![0f32; k];
    quants::dequantize_row(GgmlType::Q8_K, x, &mut xd).unwrap();
    let parts: Vec<Vec<u8>> = if t == GgmlType::Q6_K {
        vec![w.to_vec()]
    } else {
        // Zeroing `dmin` leaves the quant term, zeroing `d` the min term.
        [2..4, 0..2]
            .into_iter()
            .map(|zeroed| {
                let mut part = w.to_vec();
                for block in part.chunks_exact_mut(t.block_bytes()) {
                    block[zeroed.clone()].fill(0);
                }
                part
            })
            .collect()
    };
    let mut sum = 0f64;
    for part in parts {
        let mut wd = vec![0f32; k];
        quants::dequantize_row(t, &part, &mut wd).unwrap();
        sum += wd
            .iter()
            .zip(&xd)
            .map(|(a, b)| (*a as f64 * *b as f64).abs())
            .sum::<f64>();
    }
    sum
}

/// Runs `t`'s tile over `nr × nc` rows with padded strides and checks every output against
/// the reference `vec_dot`, and that nothing outside the tile is written.
#[allow(clippy::too_many_arguments)]
fn check_tile(
    t: GgmlType,
    tile: TileFn,
    blocks: usize,
    nr: usize,
    nc: usize,
    pads: (usize, usize, usize),
    seed: u64,
) -> Result<(), TestCaseError> {
    let k = blocks * QK_K;
    let mut rng = Rng::new(seed);
    let w_rows: Vec<Vec<u8>> = (0..nr).map(|_| weight_row(t, k, &mut rng)).collect();
    let x_rows: Vec<Vec<u8>> = (0..nc).map(|_| activation_row(k, &mut rng)).collect();
    let (w_stride, x_stride) = (w_rows[0].len() + pads.0, x_rows[0].len() + pads.1);
    let out_stride = nr + pads.2;
    let w = strided(&w_rows, w_stride, &mut rng);
    let x = strided(&x_rows, x_stride, &mut rng);
    let mut out = vec![SENTINEL; nc * out_stride + 3];
    tile(
        cpu(),
        k,
        &w,
        w_stride,
        nr,
        &x,
        x_stride,
        nc,
        &mut out,
        out_stride,
    );
    check_outputs(t, t.name(), &out, out_stride, &w_rows, &x_rows)
}

/// Marks the elements of a tile's output buffer that it must not write.
const SENTINEL: f32 = -1234.5;

/// Every output of a tile of `t` weights (`out[c * out_stride + r]`) against the reference
/// `vec_dot` of GGUF rows `w_rows[r]` and `x_rows[c]`, and every other element still
/// [`SENTINEL`].
fn check_outputs(
    t: GgmlType,
    what: &str,
    out: &[f32],
    out_stride: usize,
    w_rows: &[Vec<u8>],
    x_rows: &[Vec<u8>],
) -> Result<(), TestCaseError> {
    let (nr, nc) = (w_rows.len(), x_rows.len());
    let k = w_rows[0].len() / t.block_bytes() * QK_K;
    for (i, &v) in out.iter().enumerate() {
        let (c, r) = (i / out_stride, i % out_stride);
        if c >= nc || r >= nr {
            prop_assert!(v == SENTINEL, "{what}: out[{i}] outside the tile written");
            continue;
        }
        let want = quants::vec_dot(t, k, &w_rows[r], &x_rows[c]).unwrap() as f64;
        let tol = 2e-5 * magnitude(t, k, &w_rows[r], &x_rows[c]) + 1e-30;
        prop_assert!(
            (v as f64 - want).abs() <= tol,
            "{what} k={k} r={r} c={c} of {nr}×{nc}: {v} vs {want} (tolerance {tol})"
        );
    }
    Ok(())
}

/// The repacked tile of `t` (`x8`) over `groups` groups of 8 weight rows × `nc` activation
/// rows, against the reference `vec_dot` on the GGUF rows the groups were repacked from.
fn check_repacked_tile(
    t: GgmlType,
    blocks: usize,
    groups: usize,
    nc: usize,
    pads: (usize, usize),
    seed: u64,
) -> Result<(), TestCaseError> {
    let (k, nr) = (blocks * QK_K, groups * x8::GROUP_ROWS);
    let mut rng = Rng::new(seed);
    let w_rows: Vec<Vec<u8>> = (0..nr).map(|_| weight_row(t, k, &mut rng)).collect();
    let x_rows: Vec<Vec<u8>> = (0..nc).map(|_| activation_row(k, &mut rng)).collect();
    let w_stride = w_rows[0].len();
    let gguf = w_rows.concat();
    let (layout, w) = x8::repack(t, nr, k, &gguf).unwrap();
    prop_assert_eq!(w.len(), gguf.len());
    prop_assert!(
        x8::unpack(layout, nr, k, &w) == Some(gguf),
        "repack does not round-trip"
    );
    let x_stride = x_rows[0].len() + pads.0;
    let x = strided(&x_rows, x_stride, &mut rng);
    let out_stride = nr + pads.1;
    let mut out = vec![SENTINEL; nc * out_stride + 3];
    x8::tile_fn(layout).unwrap()(
        cpu(),
        k,
        &w,
        w_stride,
        nr,
        &x,
        x_stride,
        nc,
        &mut out,
        out_stride,
    );
    check_outputs(
        t,
        &format!("repacked {}", t.name()),
        &out,
        out_stride,
        &w_rows,
        &x_rows,
    )
}

/// A float for the quantizer: mostly ordinary values, with zeros, signed zeros, NaNs,
/// infinities, subnormals, huge values and exact ties of magnitude mixed in.
fn activation_float(rng: &mut Rng, magnitude: f32) -> f32 {
    match rng.below(40) {
        0 => 0.0,
        1 => -0.0,
        2 => f32::NAN,
        3 => f32::from_bits(0x7fc0_0000 | rng.next() as u32 & 0x003f_ffff), // NaN payloads
        4 => f32::INFINITY,
        5 => f32::NEG_INFINITY,
        6 => f32::from_bits(rng.next() as u32 & 0x807f_ffff), // subnormal
        7 => 3e38,
        8 => -magnitude, // ties with `magnitude` below
        9 => magnitude,
        _ => rng.unit() * magnitude,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Every output of a tile equals the reference dot product up to float order.
    #[test]
    fn kquant_tiles_match_reference_vec_dot(
        ti in 0usize..3,
        blocks in prop_oneof![1usize..=3, Just(6usize), Just(9usize)],
        nr in 1usize..=9,
        nc in 1usize..=9,
        w_pad in 0usize..300,
        x_pad in 0usize..300,
        out_pad in 0usize..5,
        seed in any::<u64>(),
    ) {
        let t = TYPES[ti];
        let tile = tile_fn(t).unwrap();
        check_tile(t, tile, blocks, nr, nc, (w_pad, x_pad, out_pad), seed)?;
    }

    /// The repacked Q4_K and Q6_K tiles equal the reference on the rows they were repacked
    /// from, and the repacking round-trips.
    #[test]
    fn repacked_tiles_match_reference_vec_dot(
        q6: bool,
        blocks in prop_oneof![1usize..=3, Just(6usize)],
        groups in 1usize..=3,
        nc in 1usize..=9,
        x_pad in 0usize..300,
        out_pad in 0usize..5,
        seed in any::<u64>(),
    ) {
        let t = if q6 { GgmlType::Q6_K } else { GgmlType::Q4_K };
        check_repacked_tile(t, blocks, groups, nc, (x_pad, out_pad), seed)?;
    }

    /// The AVX2 Q8_K quantizer writes exactly the reference's bytes.
    #[test]
    fn q8_k_quantizer_is_byte_identical(
        blocks in 1usize..=4,
        special in 0u32..3,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let k = blocks * QK_K;
        let src: Vec<f32> = (0..blocks)
            .flat_map(|_| {
                let magnitude = [1e-40f32, 1e-20, 1.0, 100.0, 1e30][rng.below(5) as usize];
                // `special`: 0 ordinary blocks, as a model produces; 1 ordinary blocks with
                // one in four all zero; 2 degenerate values mixed in.
                let zero_block = special == 1 && rng.below(4) == 0;
                let block: Vec<f32> = (0..QK_K)
                    .map(|_| match special {
                        _ if zero_block => 0.0,
                        0 | 1 => rng.unit() * magnitude,
                        _ => activation_float(&mut rng, magnitude),
                    })
                    .collect();
                block
            })
            .collect();
        let n = GgmlType::Q8_K.row_bytes(k).unwrap();
        let (mut want, mut got) = (vec![0u8; n], vec![0xa5u8; n]);
        quants::quantize_activations(GgmlType::Q8_K, &src, &mut want).unwrap();
        quantize_activations(cpu(), GgmlType::Q8_K, &src, &mut got).unwrap();
        prop_assert_eq!(got, want);
    }
}

/// The quantizer on hand-picked degenerate blocks: all NaN, a lone infinity, the largest
/// magnitude first as a negative then as a positive, a subnormal maximum (the inverse scale
/// overflows), and halfway values.
#[test]
fn q8_k_quantizer_degenerate_blocks() {
    let mut cases: Vec<Vec<f32>> = vec![
        vec![f32::NAN; QK_K],
        vec![0.0; QK_K],
        vec![-0.0; QK_K],
        (0..QK_K)
            .map(|i| if i == 7 { f32::INFINITY } else { 1.0 })
            .collect(),
        (0..QK_K)
            .map(|i| if i.is_multiple_of(2) { -3.0 } else { 3.0 })
            .collect(),
        (0..QK_K)
            .map(|i| if i.is_multiple_of(2) { 3.0 } else { -3.0 })
            .collect(),
        (0..QK_K).map(|i| f32::from_bits(i as u32 + 1)).collect(),
        (0..QK_K).map(|i| (i as f32 - 127.5) / 127.0).collect(),
        (0..QK_K).map(|i| (i as f32 - 128.0) * 0.5).collect(),
    ];
    cases.push(cases.concat());
    for src in cases {
        let n = GgmlType::Q8_K.row_bytes(src.len()).unwrap();
        let (mut want, mut got) = (vec![0u8; n], vec![0x5au8; n]);
        quants::quantize_activations(GgmlType::Q8_K, &src, &mut want).unwrap();
        quantize_activations(cpu(), GgmlType::Q8_K, &src, &mut got).unwrap();
        assert_eq!(got, want, "input starting {:?}", &src[..4]);
    }
}

/// Every block-remainder combination at once, deterministically: nr and nc 1..=9 for each
/// type at a Qwen-like k.
#[test]
fn kquant_tiles_every_remainder() {
    for (ti, &t) in TYPES.iter().enumerate() {
        for nr in 1..=9 {
            for nc in 1..=9 {
                let seed = (ti * 100 + nr * 10 + nc) as u64;
                check_tile(t, tile_fn(t).unwrap(), 6, nr, nc, (7, 13, 1), seed).unwrap();
            }
        }
    }
}

/// The repacked tiles at every activation-row remainder of their 8 × 4 register block, and
/// what `repack` refuses.
#[test]
fn repacked_every_remainder_and_refusals() {
    for t in [GgmlType::Q4_K, GgmlType::Q6_K] {
        for nc in 1..=9 {
            check_repacked_tile(t, 6, 2, nc, (5, 2), nc as u64).unwrap();
        }
        let row = t.row_bytes(QK_K).unwrap();
        assert!(
            x8::repack(t, 12, QK_K, &vec![0; 12 * row]).is_err(),
            "12 rows"
        );
        assert!(
            x8::repack(t, 8, QK_K, &vec![0; 8 * row - 1]).is_err(),
            "short data"
        );
        assert!(!x8::can_repack(t, 8, QK_K + 32));
    }
    assert!(!x8::can_repack(GgmlType::Q5_K, 8, QK_K));
}

/// The fastest of many short runs of `f`, in ns per call: on a machine shared with other
/// work, the minimum is the run nothing preempted.
fn best_ns(mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    f();
    let once = start.elapsed().as_secs_f64();
    // Runs of about a millisecond, shorter than a scheduler time slice.
    let reps = ((1e-3 / once.max(1e-9)) as usize).max(1);
    let mut best = f64::MAX;
    for _ in 0..200 {
        let start = Instant::now();
        for _ in 0..reps {
            f();
        }
        best = best.min(start.elapsed().as_secs_f64() * 1e9 / reps as f64);
    }
    best
}

/// Timing: ns per super-block dot for decode (nc = 1) and a prompt tile (nc = 64), each
/// against a loop of one-row dots (`nr = nc = 1` tiles). Run with
/// `cargo test --release -p kernels-avx2 --test kquants_props -- --ignored --nocapture`.
#[test]
#[ignore]
fn time_kquant_tiles() {
    let nr = 64;
    for &t in &TYPES {
        let tile = tile_fn(t).unwrap();
        for k in [1536usize, 8960] {
            let mut rng = Rng::new(k as u64);
            let w_rows: Vec<Vec<u8>> = (0..nr).map(|_| weight_row(t, k, &mut rng)).collect();
            let x_rows: Vec<Vec<u8>> = (0..64).map(|_| activation_row(k, &mut rng)).collect();
            let (ws, xs) = (w_rows[0].len(), x_rows[0].len());
            let (w, x) = (w_rows.concat(), x_rows.concat());
            let mut out = vec![0f32; nr * 64];
            let per_dot = |nc: usize| (nr * nc * (k / QK_K)) as f64;
            let decode =
                best_ns(|| tile(cpu(), k, &w, ws, nr, &x, xs, 1, &mut out, nr)) / per_dot(1);
            let gemm =
                best_ns(|| tile(cpu(), k, &w, ws, nr, &x, xs, 64, &mut out, nr)) / per_dot(64);
            // The same products one dot at a time.
            let single = best_ns(|| {
                for c in 0..4 {
                    for r in 0..nr {
                        let o = &mut out[c * nr + r..][..1];
                        tile(
                            cpu(),
                            k,
                            &w[r * ws..][..ws],
                            ws,
                            1,
                            &x[c * xs..][..xs],
                            xs,
                            1,
                            o,
                            1,
                        );
                    }
                }
            }) / per_dot(4);
            let start = Instant::now();
            for r in 0..nr {
                std::hint::black_box(quants::vec_dot(t, k, &w[r * ws..][..ws], &x[..xs]).unwrap());
            }
            let scalar = start.elapsed().as_secs_f64() * 1e9 / per_dot(1);
            std::hint::black_box(&out);
            println!(
                "{} k={k}: nc=1 {decode:.2} ns, nc=64 {gemm:.2} ns, one-row loop {single:.2} ns, reference {scalar:.1} ns per super-block dot",
                t.name()
            );
            if let Ok((layout, wp)) = x8::repack(t, nr, k, &w) {
                let tile = x8::tile_fn(layout).unwrap();
                let decode =
                    best_ns(|| tile(cpu(), k, &wp, ws, nr, &x, xs, 1, &mut out, nr)) / per_dot(1);
                let gemm =
                    best_ns(|| tile(cpu(), k, &wp, ws, nr, &x, xs, 64, &mut out, nr)) / per_dot(64);
                println!(
                    "{} repacked ×8 k={k}: nc=1 {decode:.2} ns, nc=64 {gemm:.2} ns per super-block dot",
                    t.name()
                );
            }
        }
    }
}
