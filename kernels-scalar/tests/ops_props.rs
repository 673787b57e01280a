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
    KvRef::contiguous(dtype, data, token_stride, head_stride)
}

/// Side `data` (token rows `token_stride` bytes apart) paged into blocks of `block_tokens`
/// rows, `blocks` the table.
fn paged_kv<'a>(
    dtype: GgmlType,
    data: &'a [u8],
    token_stride: usize,
    head_stride: usize,
    block_tokens: usize,
    blocks: &'a [u32],
) -> KvRef<'a> {
    KvRef {
        block_tokens,
        blocks: RSlice::from_slice(blocks),
        ..kv_of(dtype, data, token_stride, head_stride)
    }
}

/// The `kv_len` rows of `rows` (`token_stride` bytes each) laid out as a paged cache: a pool
/// of blocks of `block_tokens` rows, `spare` more than the rows need, and a table that is a
/// random permutation of the pool's blocks (longer than needed when there are spare blocks).
/// Every other byte of the pool is 0xff (NaN as f16 and f32), so reading a wrong row shows.
fn page(
    rows: &[u8],
    token_stride: usize,
    kv_len: usize,
    block_tokens: usize,
    spare: usize,
    seed: u64,
) -> (Vec<u8>, Vec<u32>) {
    let used = kv_len.div_ceil(block_tokens);
    let n_blocks = used + spare;
    // Fisher–Yates, u in [-2, 2) picking among the first i + 1.
    let mut ids: Vec<u32> = (0..n_blocks as u32).collect();
    let picks = uniform(seed, n_blocks);
    for i in (1..n_blocks).rev() {
        let at = ((picks[i] + 2.0) / 4.0 * (i + 1) as f32) as usize;
        ids.swap(i, at.min(i));
    }
    ids.truncate(used + spare / 2);
    let mut pool = vec![0xffu8; n_blocks * block_tokens * token_stride];
    for j in 0..kv_len {
        let row = ids[j / block_tokens] as usize * block_tokens + j % block_tokens;
        pool[row * token_stride..][..token_stride]
            .copy_from_slice(&rows[j * token_stride..][..token_stride]);
    }
    (pool, ids)
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

    /// Over a paged cache (any block size, spare garbage blocks, K and V in different block
    /// orders), attention gives bit for bit what it gives over the same rows contiguously:
    /// decode and prefill positions, GQA, windows, causal or not.
    #[test]
    fn paged_attention_equals_contiguous(
        n_head_kv in 1usize..4, group in 1usize..4, d in 1usize..20,
        kv_len in prop_oneof![0usize..24, 24usize..200], n_q in 1usize..5,
        window in prop_oneof![Just(0u32), 1u32..80], causal: bool, f16_cache: bool,
        block_tokens in 1usize..=64, spare in 0usize..4, seed in any::<u64>(),
    ) {
        let n_head = n_head_kv * group;
        let elem = if f16_cache { 2 } else { 4 };
        let (token_stride, head_stride) = (n_head_kv * d * elem, d * elem);
        let dtype = if f16_cache { GgmlType::F16 } else { GgmlType::F32 };
        let bytes = |x: Vec<f32>| if f16_cache {
            f16_bytes(&x)
        } else {
            x.iter().flat_map(|f| f.to_le_bytes()).collect()
        };
        let kb = bytes(uniform(seed ^ 0x9e37, kv_len * n_head_kv * d));
        let vb = bytes(uniform(seed ^ 0x7f4a, kv_len * n_head_kv * d));
        let (kp, k_blocks) = page(&kb, token_stride, kv_len, block_tokens, spare, seed);
        let (vp, v_blocks) = page(&vb, token_stride, kv_len, block_tokens, spare, !seed);
        let q = uniform(seed, n_q * n_head * d);
        // Scattered positions, some past the cache (non-causal queries see all of it).
        let q_pos: Vec<i32> = uniform(seed ^ 0x51, n_q)
            .iter()
            .map(|u| ((u + 2.0) / 4.0 * (kv_len + 4) as f32) as i32)
            .collect();
        let run = |k: KvRef<'_>, v: KvRef<'_>| {
            let mut out = vec![f32::NAN; n_q * n_head * d];
            ScalarKernels::attention(AttentionArgs {
                q: RSlice::from_slice(&q), q_stride: n_head * d, q_pos: RSlice::from_slice(&q_pos), n_q,
                k, v, kv_len, n_head, n_head_kv, head_dim: d,
                scale: 1.0 / (d as f32).sqrt(), softcap: 0.0, window, causal,
                out: RSliceMut::from_mut_slice(&mut out), out_stride: n_head * d,
            }, &pool()).unwrap();
            out
        };
        let flat = run(
            kv_of(dtype, &kb, token_stride, head_stride),
            kv_of(dtype, &vb, token_stride, head_stride),
        );
        let paged = run(
            paged_kv(dtype, &kp, token_stride, head_stride, block_tokens, &k_blocks),
            paged_kv(dtype, &vp, token_stride, head_stride, block_tokens, &v_blocks),
        );
        for (at, (a, b)) in paged.iter().zip(&flat).enumerate() {
            prop_assert!(a.to_bits() == b.to_bits(), "float {at}: {a} paged vs {b} contiguous");
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

/// A block table too short for `kv_len`, or naming a block outside the pool, is one clear
/// error, not a panic; table entries past what `kv_len` reads are never looked at.
#[test]
fn attention_rejects_bad_block_tables() {
    let (d, kv_len, block_tokens) = (4, 10, 4);
    let row = d * 4;
    let kb: Vec<u8> = uniform(3, kv_len * d)
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    // 3 blocks hold the 10 tokens; the pool has 5, the table names 4.
    let (pool_bytes, table) = page(&kb, row, kv_len, block_tokens, 2, 8);
    let q = [0.5f32; 4];
    let attend = |k_table: &[u32], k_pool: &[u8]| {
        let mut out = vec![0f32; d];
        let k = paged_kv(GgmlType::F32, k_pool, row, row, block_tokens, k_table);
        let v = paged_kv(GgmlType::F32, &pool_bytes, row, row, block_tokens, &table);
        ScalarKernels::attention(
            AttentionArgs {
                q: RSlice::from_slice(&q),
                q_stride: d,
                q_pos: RSlice::from_slice(&[9]),
                n_q: 1,
                k,
                v,
                kv_len,
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
            &pool(),
        )
    };
    attend(&table, &pool_bytes).unwrap();
    let short = attend(&table[..2], &pool_bytes).unwrap_err();
    assert_eq!(
        short,
        "k block table holds 2 blocks of 4 tokens, kv_len 10 needs 3"
    );
    let outside = attend(&[table[0], 5, table[2]], &pool_bytes).unwrap_err();
    assert_eq!(
        outside,
        "k block 5 of 4 tokens ends at byte 384, past the 320-byte cache"
    );
    // A block the pool holds only in part: the rows past kv_len are not read, but blocks come
    // whole.
    let last = pool_bytes.len() - row;
    assert!(attend(&[0, 1, 4], &pool_bytes[..last]).is_err());
    assert!(attend(&[0, 1, 4], &pool_bytes).is_ok());
    // The fourth entry is never read.
    attend(&[table[0], table[1], table[2], u32::MAX], &pool_bytes).unwrap();
    assert!(attend(&[table[0], table[1], u32::MAX], &pool_bytes)
        .unwrap_err()
        .contains(&format!("block {}", u32::MAX)));
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
