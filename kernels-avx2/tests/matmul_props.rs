//! The matmul driver of kernels-avx2 against the reference kernels: every weight type (the
//! SIMD ones and the scalar fallbacks), batches that cross the GEMM's column blocks, row
//! counts that cross its row blocks, padded strides, and the fused variant (norm, bias,
//! residual accumulation, several products of one input) on real threads.

use kernels_avx2::Avx2Kernels;
use kernels_reference::quants;
use plugin_api::abi_stable::std_types::{ROption, RSlice, RSliceMut};
use plugin_api::*;
use proptest::prelude::*;

/// `n` values in [-2, 2) from a xorshift generator seeded by `seed`.
fn uniform(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

/// A `rows × cols` weight of type `t` quantized from random floats.
fn weight(t: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let f = uniform(seed, rows * cols);
    let row_bytes = t.row_bytes(cols).unwrap();
    let mut w = vec![0u8; rows * row_bytes];
    for r in 0..rows {
        quants::quantize_row(
            t,
            &f[r * cols..][..cols],
            &mut w[r * row_bytes..][..row_bytes],
        )
        .unwrap();
    }
    w
}

/// The reference product, through the reference plugin's matmul: `n_batch` rows of `rows`.
fn reference_matmul(w: WeightRef<'_>, x: &[f32], x_stride: usize, n_batch: usize) -> Vec<f32> {
    let mut y = vec![0f32; n_batch * w.rows];
    kernels_reference::matmul::matmul_op(
        MatmulArgs {
            weight: w,
            input: RSlice::from_slice(x),
            input_stride: x_stride,
            n_batch,
            output: RSliceMut::from_mut_slice(&mut y),
            output_stride: w.rows,
        },
        &InlinePool::pool_ref(),
    )
    .unwrap();
    y
}

/// Σ|w·x| per output, the scale float-order differences are measured against.
fn magnitude(w: WeightRef<'_>, x: &[f32], x_stride: usize, b: usize, r: usize) -> f64 {
    let row_bytes = w.dtype.row_bytes(w.cols).unwrap();
    let mut wd = vec![0f32; w.cols];
    quants::dequantize_row(
        w.dtype,
        &w.data.as_slice()[r * row_bytes..][..row_bytes],
        &mut wd,
    )
    .unwrap();
    wd.iter()
        .zip(&x[b * x_stride..][..w.cols])
        .map(|(a, b)| (*a as f64 * *b as f64).abs())
        .sum()
}

fn cols_for(t: GgmlType, blocks: usize) -> usize {
    let unit = t.block_size().max(32);
    unit * blocks
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Plain matmul: the same quantized activations as the reference (the quantizers are
    /// byte-identical), so outputs differ only by float summation order.
    #[test]
    fn matmul_matches_reference(
        ti in 0usize..14, rows in 1usize..150, blocks in 1usize..4,
        n_batch in prop_oneof![1usize..4, 60usize..70], in_pad in 0usize..5, out_pad in 0usize..5,
        threads in 1usize..4, seed in any::<u64>(),
    ) {
        let t = kernels_reference::weight_types()[ti];
        let cols = cols_for(t, blocks);
        let w = weight(t, rows, cols, seed);
        let wr = WeightRef { dtype: t, layout: 0, rows, cols, data: RSlice::from_slice(&w) };
        let (in_stride, out_stride) = (cols + in_pad, rows + out_pad);
        let x = uniform(seed ^ 0x5bd1, (n_batch - 1) * in_stride + cols);
        let mut y = vec![f32::NAN; (n_batch - 1) * out_stride + rows];
        let pool = SpawningPool(threads);
        Avx2Kernels::matmul(MatmulArgs {
            weight: wr, input: RSlice::from_slice(&x), input_stride: in_stride, n_batch,
            output: RSliceMut::from_mut_slice(&mut y), output_stride: out_stride,
        }, &pool.pool_ref()).unwrap();
        let want = reference_matmul(wr, &x, in_stride, n_batch);
        for b in 0..n_batch {
            for r in 0..rows {
                let (got, exp) = (y[b * out_stride + r] as f64, want[b * rows + r] as f64);
                let tol = 2e-5 * (magnitude(wr, &x, in_stride, b, r) + 1e-3);
                prop_assert!((got - exp).abs() <= tol, "{} r={r} b={b}: {got} vs {exp}", t.name());
            }
            if b + 1 < n_batch {
                // Padding between output rows is never written.
                prop_assert!(y[b * out_stride + rows..(b + 1) * out_stride].iter().all(|v| v.is_nan()));
            }
        }
    }

    /// Fused: RMS norm, then Q/K/V-like products of mixed types with and without bias and
    /// residual accumulation, against the ops one by one.
    #[test]
    fn fused_matmul_matches_the_ops_one_by_one(
        rows in prop::collection::vec(1usize..100, 1..4), types in prop::collection::vec(0usize..5, 3),
        n_batch in prop_oneof![1usize..3, 64usize..68], normed: bool, bias: bool, accumulate: bool,
        threads in 1usize..4, seed in any::<u64>(),
    ) {
        // The types our models mix in one layer; all share Q8_0 or Q8_K activations.
        const MIX: [GgmlType; 5] = [GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K];
        let cols = 256 * (1 + (seed % 2) as usize);
        let x = uniform(seed ^ 0x77, n_batch * cols);
        let norm_w = uniform(seed ^ 0x99, cols);
        let ws: Vec<(GgmlType, Vec<u8>, Vec<f32>)> = rows.iter().enumerate().map(|(i, &r)| {
            let t = MIX[types[i % types.len()]];
            (t, weight(t, r, cols, seed.wrapping_add(i as u64)), uniform(seed ^ i as u64, r))
        }).collect();
        let initial: Vec<Vec<f32>> = rows.iter().map(|&r| uniform(seed ^ 0x33, n_batch * r)).collect();
        let mut outs = initial.clone();
        {
        let mut targets: Vec<MatmulTarget<'_>> = ws.iter().zip(outs.iter_mut()).zip(&rows).map(|(((t, w, b), out), &r)| MatmulTarget {
            weight: WeightRef { dtype: *t, layout: 0, rows: r, cols, data: RSlice::from_slice(w) },
            bias: if bias { ROption::RSome(RSlice::from_slice(b)) } else { ROption::RNone },
            output: RSliceMut::from_mut_slice(out),
            output_stride: r,
            accumulate,
        }).collect();
        let pool = SpawningPool(threads);
        Avx2Kernels::fused_matmul(FusedMatmulArgs {
            input: RSlice::from_slice(&x), input_stride: cols, n_batch, cols,
            norm: if normed { ROption::RSome(RSlice::from_slice(&norm_w)) } else { ROption::RNone },
            norm_eps: 1e-6,
            targets: RSliceMut::from_mut_slice(&mut targets),
        }, &pool.pool_ref()).unwrap();
        }

        let mut xn = x.clone();
        if normed {
            for b in 0..n_batch {
                kernels_reference::norm::rms_norm_row(&x[b * cols..][..cols], Some(&norm_w), 1e-6, &mut xn[b * cols..][..cols]);
            }
        }
        for (i, ((t, w, bvec), &r)) in ws.iter().zip(&rows).enumerate() {
            let wr = WeightRef { dtype: *t, layout: 0, rows: r, cols, data: RSlice::from_slice(w) };
            let prod = reference_matmul(wr, &xn, cols, n_batch);
            for b in 0..n_batch {
                for j in 0..r {
                    let mut exp = prod[b * r + j] as f64;
                    if bias { exp += bvec[j] as f64; }
                    if accumulate { exp += initial[i][b * r + j] as f64; }
                    let got = outs[i][b * r + j] as f64;
                    // With the norm fused, an activation may round to a neighbouring 8-bit
                    // value where the two norms differ in the last bit: allow one quantum.
                    let rel = if normed { 2e-2 } else { 2e-5 };
                    let tol = rel * (magnitude(wr, &xn, cols, b, j) + 1e-3) + 1e-5 * exp.abs();
                    prop_assert!((got - exp).abs() <= tol, "product {i} ({}) b={b} j={j}: {got} vs {exp}", t.name());
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Q4_K, Q6_K and Q5_0 weights repacked by `prepare_weight` give the reference's
    /// products, in plain and fused matmuls, decode and prompt batches, on real threads.
    #[test]
    fn repacked_matmul_matches_reference(
        t in prop::sample::select(vec![GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q5_0]), groups in 1usize..40, blocks in 1usize..4,
        n_batch in prop_oneof![1usize..4, 60usize..70], fused: bool,
        threads in 1usize..4, seed in any::<u64>(),
    ) {
        let (rows, cols) = (8 * groups, 256 * blocks);
        let w = weight(t, rows, cols, seed);
        let wr = WeightRef { dtype: t, layout: 0, rows, cols, data: RSlice::from_slice(&w) };
        let prepared = Avx2Kernels::prepare_weight(wr).unwrap().expect("repacked in groups of 8");
        prop_assert_eq!(prepared.data.len(), w.len());
        let packed = WeightRef { layout: prepared.layout, data: RSlice::from_slice(&prepared.data), ..wr };
        let x = uniform(seed ^ 0x5bd1, n_batch * cols);
        let mut y = vec![f32::NAN; n_batch * rows];
        let pool = SpawningPool(threads);
        if fused {
            let mut targets = [MatmulTarget {
                weight: packed, bias: ROption::RNone, output: RSliceMut::from_mut_slice(&mut y),
                output_stride: rows, accumulate: false,
            }];
            Avx2Kernels::fused_matmul(FusedMatmulArgs {
                input: RSlice::from_slice(&x), input_stride: cols, n_batch, cols,
                norm: ROption::RNone, norm_eps: 1e-6,
                targets: RSliceMut::from_mut_slice(&mut targets),
            }, &pool.pool_ref()).unwrap();
        } else {
            Avx2Kernels::matmul(MatmulArgs {
                weight: packed, input: RSlice::from_slice(&x), input_stride: cols, n_batch,
                output: RSliceMut::from_mut_slice(&mut y), output_stride: rows,
            }, &pool.pool_ref()).unwrap();
        }
        let want = reference_matmul(wr, &x, cols, n_batch);
        for b in 0..n_batch {
            for r in 0..rows {
                let (got, exp) = (y[b * rows + r] as f64, want[b * rows + r] as f64);
                let tol = 2e-5 * (magnitude(wr, &x, cols, b, r) + 1e-3);
                prop_assert!((got - exp).abs() <= tol, "r={r} b={b}: {got} vs {exp}");
            }
        }
    }
}

/// The first `rows` rows of `data`, a `dtype` matrix of 256 columns, in `layout`.
fn weight_at(dtype: GgmlType, rows: usize, layout: u32, data: &[u8]) -> WeightRef<'_> {
    let len = rows * dtype.row_bytes(256).unwrap();
    WeightRef {
        dtype,
        layout,
        rows,
        cols: 256,
        data: RSlice::from_slice(&data[..len]),
    }
}

/// `prepare_weight` repacks only Q4_K, Q6_K and Q5_0 in groups of 8 rows, and a matmul refuses a layout it
/// does not know or one whose constraints the weight breaks, with one line.
#[test]
fn prepare_weight_scope_and_layout_errors() {
    let q4k = weight(GgmlType::Q4_K, 12, 256, 1);
    let q6k = weight(GgmlType::Q6_K, 8, 256, 2);
    let q5k = weight(GgmlType::Q5_K, 8, 256, 3);
    assert!(
        Avx2Kernels::prepare_weight(weight_at(GgmlType::Q4_K, 12, 0, &q4k))
            .unwrap()
            .is_none()
    );
    assert!(
        Avx2Kernels::prepare_weight(weight_at(GgmlType::Q5_K, 8, 0, &q5k))
            .unwrap()
            .is_none()
    );
    let layout = Avx2Kernels::prepare_weight(weight_at(GgmlType::Q4_K, 8, 0, &q4k))
        .unwrap()
        .unwrap()
        .layout;
    assert_ne!(layout, 0);
    let x = vec![0f32; 256];
    for (w, what) in [
        (
            weight_at(GgmlType::Q4_K, 8, layout ^ 1, &q4k),
            "unknown layout",
        ),
        (weight_at(GgmlType::Q6_K, 8, layout, &q6k), "repacked Q6_K"),
        (weight_at(GgmlType::Q4_K, 12, layout, &q4k), "12 rows"),
    ] {
        let mut y = vec![0f32; w.rows];
        let err = Avx2Kernels::matmul(
            MatmulArgs {
                weight: w,
                input: RSlice::from_slice(&x),
                input_stride: 256,
                n_batch: 1,
                output: RSliceMut::from_mut_slice(&mut y),
                output_stride: w.rows,
            },
            &InlinePool::pool_ref(),
        )
        .expect_err(what);
        assert!(
            err.contains("layout") && !err.contains('\n'),
            "{what}: {err}"
        );
    }
}

/// Shape errors are one line, not a panic.
#[test]
fn mismatched_shapes_are_errors() {
    let w = weight(GgmlType::Q8_0, 4, 64, 1);
    let x = vec![0f32; 32];
    let mut y = vec![0f32; 4];
    let err = Avx2Kernels::matmul(
        MatmulArgs {
            weight: WeightRef {
                dtype: GgmlType::Q8_0,
                layout: 0,
                rows: 4,
                cols: 64,
                data: RSlice::from_slice(&w),
            },
            input: RSlice::from_slice(&x),
            input_stride: 64,
            n_batch: 1,
            output: RSliceMut::from_mut_slice(&mut y),
            output_stride: 4,
        },
        &InlinePool::pool_ref(),
    )
    .unwrap_err();
    assert!(!err.is_empty() && !err.contains('\n'), "{err}");
}

/// `y = weight · x` for the single activation row `x` (decode), on `pool`.
fn decode_matmul(weight: WeightRef<'_>, x: &[f32], y: &mut [f32], pool: &SpawningPool) {
    Avx2Kernels::matmul(
        MatmulArgs {
            weight,
            input: RSlice::from_slice(x),
            input_stride: weight.cols,
            n_batch: 1,
            output: RSliceMut::from_mut_slice(y),
            output_stride: weight.rows,
        },
        &pool.pool_ref(),
    )
    .unwrap();
}

/// Decode over enough weight rows that the driver's tiles reach their largest size (256 rows
/// for one activation row), for every type, on one and two threads: each output once.
#[test]
fn decode_over_long_row_ranges_matches_reference() {
    let rows = 2600;
    for (ti, &t) in kernels_reference::weight_types().iter().enumerate() {
        let cols = cols_for(t, 1);
        let w = weight(t, rows, cols, ti as u64);
        let wr = WeightRef {
            dtype: t,
            layout: 0,
            rows,
            cols,
            data: RSlice::from_slice(&w),
        };
        let x = uniform(ti as u64 ^ 0x77, cols);
        let want = reference_matmul(wr, &x, cols, 1);
        for threads in [1, 2] {
            let mut y = vec![f32::NAN; rows];
            decode_matmul(wr, &x, &mut y, &SpawningPool(threads));
            for r in 0..rows {
                let tol = 2e-5 * (magnitude(wr, &x, cols, 0, r) + 1e-3);
                let (got, exp) = (y[r] as f64, want[r] as f64);
                assert!(
                    (got - exp).abs() <= tol,
                    "{} r={r} t={threads}: {got} vs {exp}",
                    t.name()
                );
            }
        }
    }
}

/// Decode matmul speed on weights far larger than the caches, as in a real decode step:
/// GB/s of weights streamed per type. Timing only (run with
/// `cargo test --release -p kernels-avx2 --test matmul_props -- --ignored --nocapture`).
#[test]
#[ignore]
fn time_decode_matmul_streaming() {
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let pool = SpawningPool(threads);
    for t in [
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_1,
    ] {
        let rows: usize = std::env::var("ROWS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(8960);
        let cols = 1536;
        let one = weight(t, 64, cols, 7);
        let row_bytes = t.row_bytes(cols).unwrap();
        // 8 matrices of ~7-13 MB each, cycled so none is cache-resident.
        let n_mats = std::env::var("MATS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(8);
        let mats: Vec<Vec<u8>> = (0..n_mats)
            .map(|_| {
                (0..rows)
                    .flat_map(|r| one[(r % 64) * row_bytes..][..row_bytes].to_vec())
                    .collect()
            })
            .collect();
        // REPACK=1: Q4_K as `prepare_weight` repacks it.
        let mut layout = 0;
        let mats: Vec<Vec<u8>> = if std::env::var("REPACK").is_ok()
            && matches!(t, GgmlType::Q4_K | GgmlType::Q6_K | GgmlType::Q5_0)
        {
            mats.iter()
                .map(|m| {
                    let w = WeightRef {
                        dtype: t,
                        layout: 0,
                        rows,
                        cols,
                        data: RSlice::from_slice(m),
                    };
                    let p = Avx2Kernels::prepare_weight(w).unwrap().unwrap();
                    layout = p.layout;
                    p.data.to_vec()
                })
                .collect()
        } else {
            mats
        };
        let x = uniform(3, cols);
        let mut y = vec![0f32; rows];
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = std::time::Instant::now();
            for m in &mats {
                let weight = WeightRef {
                    dtype: t,
                    layout,
                    rows,
                    cols,
                    data: RSlice::from_slice(m),
                };
                decode_matmul(weight, &x, &mut y, &pool);
            }
            best = best.min(start.elapsed().as_secs_f64());
        }
        let bytes = (n_mats * rows * row_bytes) as f64;
        println!(
            "{:5}{} decode {rows}x{cols}: {:.2} GB/s ({:.1} µs per matrix)",
            t.name(),
            if layout != 0 { " repacked" } else { "" },
            bytes / best / 1e9,
            best / n_mats as f64 * 1e6
        );
    }
}
