//! Property tests of the scalar ops through their plugin entry points: each op is checked
//! against an independent, obviously-correct formulation of what it must compute.

use half::f16;
use kernels_scalar::ScalarKernels;
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

fn kv_of(dtype: GgmlType, data: &[u8], token_stride: usize, head_stride: usize) -> KvRef<'_> {
    KvRef {
        dtype,
        data: RSlice::from_slice(data),
        token_stride,
        head_stride,
    }
}

fn pool<'a>() -> PoolRef<'a> {
    InlinePool::pool_ref()
}

fn close(a: f32, b: f32, tol: f32) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| f16::from_f32(*x).to_le_bytes())
        .collect()
}

/// Naive attention straight from the definition, with K/V given per token as
/// `[n_head_kv][head_dim]` f32 (already rounded through f16 when the cache is f16).
#[allow(clippy::too_many_arguments)]
fn naive_attention(
    q: &[f32],
    q_pos: &[i32],
    k: &[f32],
    v: &[f32],
    kv_len: usize,
    n_head: usize,
    n_head_kv: usize,
    d: usize,
    scale: f32,
    softcap: f32,
    window: u32,
) -> Vec<f32> {
    let mut out = vec![0f32; q_pos.len() * n_head * d];
    for (i, &p) in q_pos.iter().enumerate() {
        for h in 0..n_head {
            let kh = h * n_head_kv / n_head;
            let qv = &q[(i * n_head + h) * d..][..d];
            let visible: Vec<usize> = (0..kv_len)
                .filter(|&j| j as i32 <= p && (window == 0 || p - (j as i32) < window as i32))
                .collect();
            let scores: Vec<f64> = visible
                .iter()
                .map(|&j| {
                    let kv = &k[(j * n_head_kv + kh) * d..][..d];
                    let mut s =
                        qv.iter().zip(kv).map(|(a, b)| (a * b) as f64).sum::<f64>() * scale as f64;
                    if softcap > 0.0 {
                        s = softcap as f64 * (s / softcap as f64).tanh();
                    }
                    s
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for (s, &j) in scores.iter().zip(&visible) {
                let w = (s - max).exp() / sum;
                let vv = &v[(j * n_head_kv + kh) * d..][..d];
                for c in 0..d {
                    out[(i * n_head + h) * d + c] += (w * vv[c] as f64) as f32;
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn attention_matches_definition(
        n_head_kv in 1usize..4, group in 1usize..4, d in 1usize..20,
        kv_len in 1usize..24, n_q in 1usize..5, window in 0u32..8,
        softcap in prop_oneof![Just(0.0f32), 1.0f32..50.0], f16_cache: bool,
        seed in any::<u64>(),
    ) {
        let n_head = n_head_kv * group;
        let gen = |n: usize| uniform(seed, n);
        let q = gen(n_q * n_head * d);
        let mut k = uniform(seed ^ 0x9e37, kv_len * n_head_kv * d);
        let mut v = uniform(seed ^ 0x7f4a, kv_len * n_head_kv * d);
        // The last n_q cache rows belong to the queries (prefill of a chunk at its end).
        let q_pos: Vec<i32> = (0..n_q).map(|i| (kv_len - n_q.min(kv_len) + i.min(kv_len - 1)) as i32).collect();
        let (dtype, elem, kb, vb) = if f16_cache {
            k.iter_mut().for_each(|x| *x = f16::from_f32(*x).to_f32());
            v.iter_mut().for_each(|x| *x = f16::from_f32(*x).to_f32());
            (GgmlType::F16, 2, f16_bytes(&k), f16_bytes(&v))
        } else {
            let b = |x: &[f32]| x.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
            (GgmlType::F32, 4, b(&k), b(&v))
        };
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![f32::NAN; n_q * n_head * d];
        let kv_ref = |data| kv_of(dtype, data, n_head_kv * d * elem, d * elem);
        let args = AttentionArgs {
            q: RSlice::from_slice(&q), q_stride: n_head * d, q_pos: RSlice::from_slice(&q_pos), n_q,
            k: kv_ref(&kb), v: kv_ref(&vb), kv_len, n_head, n_head_kv, head_dim: d,
            scale, softcap, window, causal: true,
            out: RSliceMut::from_mut_slice(&mut out), out_stride: n_head * d,
        };
        ScalarKernels::attention(args, &pool()).unwrap();
        let want = naive_attention(&q, &q_pos, &k, &v, kv_len, n_head, n_head_kv, d, scale, softcap, window);
        for (a, b) in out.iter().zip(&want) {
            prop_assert!(close(*a, *b, 1e-5), "{a} vs {b}");
        }
    }

    #[test]
    fn rope_rotates_pairs_and_keeps_norms(
        n_heads in 1usize..4, half_rot in 1usize..16, extra in 0usize..6,
        pos in 0i32..5000, neox: bool, seed in any::<u64>(),
    ) {
        let n_rot = 2 * half_rot;
        let d = n_rot + 2 * extra;
        let x: Vec<f32> = (0..n_heads * d).map(|i| ((i as u64 ^ seed) % 97) as f32 / 31.0 - 1.5).collect();
        let mut y = x.clone();
        let mode = if neox { RopeMode::Neox } else { RopeMode::Normal };
        ScalarKernels::rope(RopeArgs {
            x: RSliceMut::from_mut_slice(&mut y), n_tokens: 1, n_heads, head_dim: d, token_stride: n_heads * d,
            positions: RSlice::from_slice(&[pos]), n_rot, freq_base: 10000.0, freq_scale: 1.0, mode,
        }, &pool()).unwrap();
        for h in 0..n_heads {
            let (xh, yh) = (&x[h * d..][..d], &y[h * d..][..d]);
            for i in 0..half_rot {
                let (a, b) = if neox { (i, i + half_rot) } else { (2 * i, 2 * i + 1) };
                // Independent angle: computed in f64 from the definition.
                let theta = pos as f64 * 10000f64.powf(-2.0 * i as f64 / n_rot as f64);
                let (c, s) = (theta.cos(), theta.sin());
                let ea = xh[a] as f64 * c - xh[b] as f64 * s;
                let eb = xh[a] as f64 * s + xh[b] as f64 * c;
                // f32 angle accumulation (as ggml does) drifts by ~1e-3 rad at pos 5000.
                prop_assert!((yh[a] as f64 - ea).abs() < 1e-2 && (yh[b] as f64 - eb).abs() < 1e-2);
                let n0 = xh[a].hypot(xh[b]);
                let n1 = yh[a].hypot(yh[b]);
                prop_assert!(close(n0, n1, 1e-5));
            }
            prop_assert_eq!(&xh[n_rot..], &yh[n_rot..]);
        }
    }

    #[test]
    fn rms_norm_matches_definition(rows in 1usize..4, dim in 1usize..300, eps in 1e-6f32..1e-4, weighted: bool) {
        let x: Vec<f32> = (0..rows * dim).map(|i| ((i * 7919) % 101) as f32 / 25.0 - 2.0).collect();
        let w: Vec<f32> = (0..dim).map(|i| 0.5 + (i % 5) as f32 * 0.25).collect();
        let mut out = vec![0f32; rows * dim];
        ScalarKernels::rms_norm(RmsNormArgs {
            x: RSlice::from_slice(&x), out: RSliceMut::from_mut_slice(&mut out),
            weight: if weighted { ROption::RSome(RSlice::from_slice(&w)) } else { ROption::RNone },
            rows, dim, eps,
        }, &pool()).unwrap();
        for r in 0..rows {
            let xr = &x[r * dim..][..dim];
            let ms = xr.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / dim as f64;
            for c in 0..dim {
                let mut want = xr[c] as f64 / (ms + eps as f64).sqrt();
                if weighted { want *= w[c] as f64; }
                prop_assert!(close(out[r * dim + c], want as f32, 1e-5));
            }
        }
    }

    #[test]
    fn softmax_is_a_distribution(cols in 1usize..100, scale in 0.1f32..4.0, big in -80.0f32..80.0) {
        let mut x: Vec<f32> = (0..cols).map(|i| big + (i % 13) as f32 * 0.7).collect();
        let orig = x.clone();
        ScalarKernels::softmax(SoftmaxArgs { x: RSliceMut::from_mut_slice(&mut x), rows: 1, cols, scale }, &pool()).unwrap();
        let sum: f32 = x.iter().sum();
        prop_assert!((sum - 1.0).abs() < 1e-5);
        for i in 0..cols { for j in 0..cols {
            if orig[i] > orig[j] { prop_assert!(x[i] >= x[j]); }
        }}
    }

    #[test]
    fn binary_broadcasts_rows(rows in 1usize..5, cols in 1usize..40, mul: bool, broadcast: bool) {
        let a0: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..if broadcast { cols } else { rows * cols }).map(|i| 1.0 + i as f32 * 0.25).collect();
        let mut a = a0.clone();
        let op = if mul { BinaryOp::Mul } else { BinaryOp::Add };
        ScalarKernels::binary(BinaryArgs { op, a: RSliceMut::from_mut_slice(&mut a), b: RSlice::from_slice(&b), rows, cols }, &pool()).unwrap();
        for i in 0..rows * cols {
            let bv = if broadcast { b[i % cols] } else { b[i] };
            let want = if mul { a0[i] * bv } else { a0[i] + bv };
            prop_assert_eq!(a[i], want);
        }
    }

    #[test]
    fn glu_and_unary_agree(n in 1usize..64, gelu: bool) {
        let g0: Vec<f32> = (0..n).map(|i| i as f32 * 0.37 - 8.0).collect();
        let up: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.05).collect();
        let mut g = g0.clone();
        let kind = if gelu { GluKind::Gelu } else { GluKind::Silu };
        ScalarKernels::glu(GluArgs { kind, gate: RSliceMut::from_mut_slice(&mut g), up: RSlice::from_slice(&up) }, &pool()).unwrap();
        let mut act = g0.clone();
        let op = if gelu { UnaryOp::Gelu } else { UnaryOp::Silu };
        ScalarKernels::unary(UnaryArgs { op, x: RSliceMut::from_mut_slice(&mut act), param: 0.0 }, &pool()).unwrap();
        for i in 0..n {
            prop_assert_eq!(g[i], act[i] * up[i]);
            let x = g0[i] as f64;
            let want = if gelu {
                0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
            } else { x / (1.0 + (-x).exp()) };
            // GELU goes through ggml's f16 table: input and output rounded to f16.
            let tol = if gelu { 2e-3 } else { 1e-5 };
            prop_assert!(close(act[i], want as f32, tol), "{} vs {want}", act[i]);
        }
    }

    /// GELU is ggml's table: f16 in, f16 out, exact at the thresholds.
    #[test]
    fn gelu_follows_ggml_f16_table(x in -12.0f32..12.0) {
        let mut v = [x];
        ScalarKernels::unary(UnaryArgs { op: UnaryOp::Gelu, x: RSliceMut::from_mut_slice(&mut v), param: 0.0 }, &pool()).unwrap();
        if x <= -10.0 {
            prop_assert_eq!(v[0], 0.0);
        } else if x >= 10.0 {
            prop_assert_eq!(v[0], x);
        } else {
            prop_assert_eq!(half::f16::from_f32(v[0]).to_f32(), v[0], "output is an f16 value");
            let xh = half::f16::from_f32(x).to_f32();
            prop_assert_eq!(v[0], half::f16::from_f32(kernels_scalar::elementwise::gelu_exact(xh)).to_f32());
        }
    }

    /// Inconsistent shapes are an error, never a panic or an out-of-bounds read.
    #[test]
    fn bad_shapes_are_errors(rows in 0usize..8, cols in 0usize..80, len in 0usize..400, n_batch in 0usize..4) {
        let data = vec![0u8; len];
        let x = vec![0f32; len];
        let mut y = vec![0f32; len / 2];
        let args = MatmulArgs {
            weight: WeightRef { dtype: GgmlType::Q8_0, layout: 0, rows, cols, data: RSlice::from_slice(&data) },
            input: RSlice::from_slice(&x), input_stride: cols, n_batch,
            output: RSliceMut::from_mut_slice(&mut y), output_stride: rows,
        };
        let _ = ScalarKernels::matmul(args, &pool());
        let mut q = vec![0f32; len];
        let _ = ScalarKernels::rope(RopeArgs {
            x: RSliceMut::from_mut_slice(&mut q), n_tokens: n_batch, n_heads: rows, head_dim: cols,
            token_stride: rows * cols, positions: RSlice::from_slice(&[0, 1, 2][..n_batch.min(3)]),
            n_rot: cols, freq_base: 10000.0, freq_scale: 1.0, mode: RopeMode::Neox,
        }, &pool());
    }
}

#[test]
fn attention_sees_nothing_masked() {
    // One query at position 0 with three cached keys: only key 0 is visible, so the output is
    // exactly value 0 whatever the scores.
    let d = 4;
    let q = [1.0f32, -1.0, 0.5, 2.0];
    let k: Vec<f32> = (0..3 * d).map(|i| i as f32).collect();
    let v: Vec<f32> = (0..3 * d).map(|i| 10.0 + i as f32).collect();
    let kb: Vec<u8> = k.iter().flat_map(|f| f.to_le_bytes()).collect();
    let vb: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
    let mut out = vec![0f32; d];
    let kv = |b| kv_of(GgmlType::F32, b, d * 4, d * 4);
    ScalarKernels::attention(
        AttentionArgs {
            q: RSlice::from_slice(&q),
            q_stride: d,
            q_pos: RSlice::from_slice(&[0]),
            n_q: 1,
            k: kv(&kb),
            v: kv(&vb),
            kv_len: 3,
            n_head: 1,
            n_head_kv: 1,
            head_dim: d,
            scale: 1.0,
            softcap: 0.0,
            window: 0,
            causal: true,
            out: RSliceMut::from_mut_slice(&mut out),
            out_stride: d,
        },
        &InlinePool::pool_ref(),
    )
    .unwrap();
    assert_eq!(out, v[..d]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// `matmul` equals the dot products of the dequantized weights with the dequantized
    /// quantized activations, for every weight type, batch sizes, padded strides, and row
    /// counts that do not divide the task size.
    #[test]
    fn matmul_matches_dequantized_dot_products(
        ti in 0usize..14, rows in 1usize..70, blocks in 1usize..3, n_batch in 1usize..4,
        in_pad in 0usize..5, out_pad in 0usize..5, seed in any::<u64>(),
    ) {
        use kernels_scalar::quants;
        let t = kernels_scalar::weight_types()[ti];
        let cols = t.block_size().max(32) * blocks;
        let cols = if t.block_size() == 1 { cols } else { cols.div_ceil(t.block_size()) * t.block_size() };
        let w_f32 = uniform(seed, rows * cols);
        let row_bytes = t.row_bytes(cols).unwrap();
        let mut w = vec![0u8; rows * row_bytes];
        for r in 0..rows {
            quants::quantize_row(t, &w_f32[r * cols..][..cols], &mut w[r * row_bytes..][..row_bytes]).unwrap();
        }
        let (in_stride, out_stride) = (cols + in_pad, rows + out_pad);
        let x = uniform(seed ^ 0x5bd1, (n_batch - 1) * in_stride + cols);
        let mut y = vec![f32::NAN; (n_batch - 1) * out_stride + rows];
        let pool = SpawningPool(3);
        let args = MatmulArgs {
            weight: WeightRef { dtype: t, layout: 0, rows, cols, data: RSlice::from_slice(&w) },
            input: RSlice::from_slice(&x), input_stride: in_stride, n_batch,
            output: RSliceMut::from_mut_slice(&mut y), output_stride: out_stride,
        };
        ScalarKernels::matmul(args, &pool.pool_ref()).unwrap();

        let xt = quants::vec_dot_type(t);
        let x_row_bytes = xt.row_bytes(cols).unwrap();
        let mut w_deq = vec![0f32; cols];
        let mut xq = vec![0u8; x_row_bytes];
        let mut x_deq = vec![0f32; cols];
        for b in 0..n_batch {
            quants::quantize_row(xt, &x[b * in_stride..][..cols], &mut xq).unwrap();
            quants::dequantize_row(xt, &xq, &mut x_deq).unwrap_or_else(|_| {
                // Q8_1 has no dequantizer in ggml; its values are d·q like Q8_0's.
                x_deq.copy_from_slice(&x[b * in_stride..][..cols]);
            });
            for r in 0..rows {
                quants::dequantize_row(t, &w[r * row_bytes..][..row_bytes], &mut w_deq).unwrap();
                let want: f64 = w_deq.iter().zip(&x_deq).map(|(a, b)| *a as f64 * *b as f64).sum();
                let scale: f64 = w_deq.iter().zip(&x_deq).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                let got = y[b * out_stride + r] as f64;
                // Q8_1 activations are compared against the unquantized input: allow its
                // quantization error (≤ 1/254 of each block's max) on top of rounding.
                let tol = if xt == GgmlType::Q8_1 { 1e-2 } else { 1e-4 };
                prop_assert!((got - want).abs() <= tol * (scale + 1e-3),
                    "{} r={r} b={b}: {got} vs {want}", t.name());
            }
            if out_pad > 0 && b + 1 < n_batch {
                // The padding between output rows is never written.
                prop_assert!(y[b * out_stride + rows..(b + 1) * out_stride].iter().all(|v| v.is_nan()));
            }
        }
    }
}
