//! Property tests of the AVX2 attention, norm, RoPE and element-wise ops against the
//! reference kernels (`kernels_reference`), through the plugin entry points, on a real
//! multi-threaded pool as well as inline: random shapes (odd sizes, padded strides), edge
//! values, f16 and f32 caches, GQA ratios, sliding windows, soft-capping, causal or not, single
//! and many queries at arbitrary positions.

use half::f16;
use kernels_avx2::Avx2Kernels;
use kernels_reference as reference;
use plugin_api::abi_stable::sabi_trait::TD_Opaque;
use plugin_api::abi_stable::sabi_types::RRef;
use plugin_api::abi_stable::std_types::{RSlice, RSliceMut};
use plugin_api::pool::{TaskBody_TO, ThreadPool_TO};
use plugin_api::*;
use proptest::prelude::*;

/// `n` values in [-amp, amp) from a xorshift generator seeded by `seed`.
fn uniform(seed: u64, n: usize, amp: f32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

/// A pool that really runs tasks on several threads (spawned per call: fine for tests), so
/// that the ops' splitting of work and of their output is exercised.
struct ScopedPool(usize);

impl ThreadPool for ScopedPool {
    fn n_threads(&self) -> usize {
        self.0
    }

    fn parallel_for(&self, n_tasks: usize, body: TaskBody_TO<'_, RRef<'_, ()>>) {
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for thread in 0..self.0 {
                let (next, body) = (&next, &body);
                s.spawn(move || loop {
                    let task = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if task >= n_tasks {
                        break;
                    }
                    body.run(task, thread);
                });
            }
        });
    }
}

static INLINE: ScopedPool = ScopedPool(1);
static THREE: ScopedPool = ScopedPool(3);

/// The inline pool, or a pool of three threads.
fn pool(threaded: bool) -> PoolRef<'static> {
    if threaded {
        ThreadPool_TO::from_ptr(&THREE, TD_Opaque)
    } else {
        ThreadPool_TO::from_ptr(&INLINE, TD_Opaque)
    }
}

fn threads(n: usize) -> PoolRef<'static> {
    let leaked: &'static ScopedPool = Box::leak(Box::new(ScopedPool(n)));
    ThreadPool_TO::from_ptr(leaked, TD_Opaque)
}

/// Which implementation an op runs.
#[derive(Clone, Copy, Debug)]
enum Impl {
    Avx2,
    Reference,
}

/// A KV cache side: `kv_len` tokens × `n_kv` heads × `d` values, heads `head_pad` elements
/// apart beyond `d` and tokens `token_pad` bytes beyond the heads. Padding bytes are 0xff (NaN
/// as f16 and f32), so reading any of it shows in the result. Contiguous as made by
/// [`Cache::new`], paged (blocks of `block_tokens` rows, `blocks` the table) by
/// [`Cache::paged`].
#[derive(Clone)]
struct Cache {
    bytes: Vec<u8>,
    dtype: GgmlType,
    token_stride: usize,
    head_stride: usize,
    block_tokens: usize,
    blocks: Vec<u32>,
}

impl Cache {
    #[allow(clippy::too_many_arguments)]
    fn new(
        values: &[f32],
        f16_cache: bool,
        kv_len: usize,
        n_kv: usize,
        d: usize,
        head_pad: usize,
        token_pad: usize,
    ) -> Self {
        let elem = if f16_cache { 2 } else { 4 };
        let head_stride = (d + head_pad) * elem;
        let token_stride = n_kv * head_stride + token_pad;
        let mut bytes = vec![0xffu8; kv_len * token_stride];
        for t in 0..kv_len {
            for h in 0..n_kv {
                for c in 0..d {
                    let x = values[(t * n_kv + h) * d + c];
                    let at = t * token_stride + h * head_stride + c * elem;
                    if f16_cache {
                        bytes[at..at + 2].copy_from_slice(&f16::from_f32(x).to_le_bytes());
                    } else {
                        bytes[at..at + 4].copy_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
        let dtype = if f16_cache {
            GgmlType::F16
        } else {
            GgmlType::F32
        };
        Cache {
            bytes,
            dtype,
            token_stride,
            head_stride,
            block_tokens: 0,
            blocks: Vec::new(),
        }
    }

    /// The first `kv_len` rows of this contiguous cache, paged: a pool of blocks of
    /// `block_tokens` rows, `spare` more than the tokens need, the table a random permutation
    /// of the pool's blocks (longer than needed when there are spare blocks). Every byte of
    /// the pool not holding one of the rows is 0xff, so reading a wrong row shows.
    fn paged(&self, kv_len: usize, block_tokens: usize, spare: usize, seed: u64) -> Cache {
        let used = kv_len.div_ceil(block_tokens);
        let n_blocks = used + spare;
        // Fisher–Yates with the uniform generator: u in [0, 1) picks among the first i + 1.
        let mut ids: Vec<u32> = (0..n_blocks as u32).collect();
        let picks = uniform(seed, n_blocks, 0.5);
        for i in (1..n_blocks).rev() {
            let at = ((picks[i] + 0.5) * (i + 1) as f32) as usize;
            ids.swap(i, at.min(i));
        }
        ids.truncate(used + spare / 2);
        let ts = self.token_stride;
        let mut bytes = vec![0xffu8; n_blocks * block_tokens * ts];
        for j in 0..kv_len {
            let row = ids[j / block_tokens] as usize * block_tokens + j % block_tokens;
            bytes[row * ts..][..ts].copy_from_slice(&self.bytes[j * ts..][..ts]);
        }
        Cache {
            bytes,
            block_tokens,
            blocks: ids,
            ..*self
        }
    }

    fn kv_ref(&self) -> KvRef<'_> {
        KvRef {
            block_tokens: self.block_tokens,
            blocks: RSlice::from_slice(&self.blocks),
            ..KvRef::contiguous(self.dtype, &self.bytes, self.token_stride, self.head_stride)
        }
    }
}

/// One attention problem.
#[derive(Debug, Clone)]
struct AttnCase {
    n_q: usize,
    n_head: usize,
    n_kv: usize,
    d: usize,
    kv_len: usize,
    q_pos: Vec<i32>,
    scale: f32,
    softcap: f32,
    window: u32,
    causal: bool,
    f16_cache: bool,
    amp: f32,
    q_pad: usize,
    out_pad: usize,
    head_pad: usize,
    token_pad: usize,
    seed: u64,
}

/// What a run needs besides the case: inputs built once, shared by both implementations.
#[derive(Clone)]
struct AttnData {
    q: Vec<f32>,
    k: Cache,
    v: Cache,
    /// K and V values as the cache holds them (rounded through f16 for an f16 cache).
    k_vals: Vec<f32>,
    v_vals: Vec<f32>,
}

impl AttnData {
    /// The same inputs over paged K and V caches of blocks of `block_tokens` rows, K and V
    /// each with its own block permutation and `spare` unused blocks (see [`Cache::paged`]).
    fn paged(&self, kv_len: usize, block_tokens: usize, spare: usize, seed: u64) -> AttnData {
        AttnData {
            q: self.q.clone(),
            k: self.k.paged(kv_len, block_tokens, spare, seed),
            v: self.v.paged(kv_len, block_tokens, spare, seed ^ 0x5eed),
            k_vals: self.k_vals.clone(),
            v_vals: self.v_vals.clone(),
        }
    }
}

/// Fills the output's padding (and all of it, before the op) so untouched floats show.
const SENTINEL: f32 = -12345.5;

impl AttnCase {
    /// Global causal attention over an f16 cache with no padding: each test then sets what
    /// it is about.
    fn plain() -> AttnCase {
        AttnCase {
            n_q: 1,
            n_head: 1,
            n_kv: 1,
            d: 8,
            kv_len: 1,
            q_pos: vec![0],
            scale: 0.125,
            softcap: 0.0,
            window: 0,
            causal: true,
            f16_cache: true,
            amp: 1.0,
            q_pad: 0,
            out_pad: 0,
            head_pad: 0,
            token_pad: 0,
            seed: 1,
        }
    }

    fn data(&self) -> AttnData {
        let (q_stride, n) = (
            self.n_head * self.d + self.q_pad,
            self.kv_len * self.n_kv * self.d,
        );
        let q = uniform(self.seed, self.n_q * q_stride, self.amp);
        let round = |x: Vec<f32>| -> Vec<f32> {
            if self.f16_cache {
                x.iter().map(|v| f16::from_f32(*v).to_f32()).collect()
            } else {
                x
            }
        };
        let k_vals = round(uniform(self.seed ^ 0x9e37_79b9, n, self.amp));
        let v_vals = round(uniform(self.seed ^ 0x7f4a_7c15, n, 2.0));
        let cache = |vals: &[f32]| {
            Cache::new(
                vals,
                self.f16_cache,
                self.kv_len,
                self.n_kv,
                self.d,
                self.head_pad,
                self.token_pad,
            )
        };
        AttnData {
            k: cache(&k_vals),
            v: cache(&v_vals),
            q,
            k_vals,
            v_vals,
        }
    }

    fn run(&self, data: &AttnData, which: Impl, pool: &PoolRef<'_>) -> Result<Vec<f32>, String> {
        let row = self.n_head * self.d;
        let out_stride = row + self.out_pad;
        let mut out = vec![SENTINEL; self.n_q * out_stride];
        let args = AttentionArgs {
            q: RSlice::from_slice(&data.q),
            q_stride: row + self.q_pad,
            q_pos: RSlice::from_slice(&self.q_pos),
            n_q: self.n_q,
            k: data.k.kv_ref(),
            v: data.v.kv_ref(),
            kv_len: self.kv_len,
            n_head: self.n_head,
            n_head_kv: self.n_kv,
            head_dim: self.d,
            scale: self.scale,
            softcap: self.softcap,
            window: self.window,
            causal: self.causal,
            out: RSliceMut::from_mut_slice(&mut out),
            out_stride,
        };
        match which {
            Impl::Avx2 => Avx2Kernels::attention(args, pool)?,
            Impl::Reference => reference::attention::attention_op(args, pool)?,
        }
        Ok(out)
    }

    /// Checks the AVX2 output against the reference's. The tolerance covers what summation
    /// order can change: relative 1e-5 of the values' scale, plus the rounding of the scores
    /// (which grows with |q·k|, so with `amp` and `d`) and of tanh under a soft-cap, each
    /// error in a score being a relative error of its weight.
    fn check(&self, data: &AttnData, got: &[f32], want: &[f32]) -> Result<(), TestCaseError> {
        let (d, row) = (self.d, self.n_head * self.d);
        let out_stride = row + self.out_pad;
        let eps = f32::EPSILON;
        let v_max = data.v_vals.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
        let group = self.n_head / self.n_kv;
        for i in 0..self.n_q {
            for c in row..out_stride {
                prop_assert_eq!(got[i * out_stride + c], SENTINEL, "padding written");
            }
            for h in 0..self.n_head {
                let q = &data.q[i * (row + self.q_pad) + h * d..][..d];
                let kh = h / group;
                let dot_max = (0..self.kv_len)
                    .map(|j| {
                        let k = &data.k_vals[(j * self.n_kv + kh) * d..][..d];
                        q.iter().zip(k).map(|(a, b)| (a * b).abs()).sum::<f32>()
                    })
                    .fold(0f32, f32::max);
                let score_err = 8.0 * eps * dot_max * self.scale + 4.0 * eps * self.softcap;
                let tol = v_max * (1e-5 + 2.0 * score_err);
                for c in 0..d {
                    let at = i * out_stride + h * d + c;
                    let (a, b) = (got[at], want[at]);
                    prop_assert!(
                        (a - b).abs() <= tol,
                        "query {} head {} col {}: {} vs reference {} (tol {})",
                        i,
                        h,
                        c,
                        a,
                        b,
                        tol
                    );
                }
            }
        }
        Ok(())
    }

    fn assert_matches(&self, threaded: bool) -> Result<(), TestCaseError> {
        let data = self.data();
        let p = pool(threaded);
        let want = self.run(&data, Impl::Reference, &pool(false)).unwrap();
        let got = self.run(&data, Impl::Avx2, &p).unwrap();
        self.check(&data, &got, &want)
    }

    /// Over a paged cache (blocks of `block_tokens` rows, `spare` unused blocks), each
    /// implementation gives bit for bit what it gives over the same rows laid out contiguously,
    /// and the AVX2 kernel stays as close to the reference as [`AttnCase::check`] demands.
    fn assert_paged_matches(
        &self,
        block_tokens: usize,
        spare: usize,
        p: &PoolRef<'_>,
    ) -> Result<(), TestCaseError> {
        let data = self.data();
        let paged = data.paged(self.kv_len, block_tokens, spare, self.seed);
        let mut paged_out = Vec::new();
        for which in [Impl::Reference, Impl::Avx2] {
            let flat = self.run(&data, which, p).unwrap();
            let got = self.run(&paged, which, p).unwrap();
            for (at, (a, b)) in got.iter().zip(&flat).enumerate() {
                prop_assert!(
                    a.to_bits() == b.to_bits(),
                    "{:?} over {}-token blocks, float {}: {} vs {} contiguous",
                    which,
                    block_tokens,
                    at,
                    a,
                    b
                );
            }
            paged_out.push(got);
        }
        self.check(&paged, &paged_out[1], &paged_out[0])
    }
}

prop_compose! {
    fn attn_case()(
        n_kv in 1usize..4,
        group in prop::sample::select(vec![1usize, 2, 4, 7]),
        d in prop::sample::select(vec![1usize, 3, 7, 8, 13, 16, 24, 40, 64, 80, 128]),
        kv_len in prop_oneof![0usize..40, 40usize..400],
        n_q in prop_oneof![Just(1usize), 1usize..24],
        contiguous: bool,
        window in prop_oneof![Just(0u32), 1u32..64, 64u32..300],
        softcap in prop_oneof![Just(0.0f32), 1.0f32..50.0],
        causal in prop::bool::weighted(0.7),
        f16_cache: bool,
        amp in prop::sample::select(vec![0.25f32, 1.0, 3.0]),
        scale_mul in 0.25f32..2.0,
        pads in (0usize..3, 0usize..3, 0usize..3, 0usize..5),
        seed in any::<u64>(),
    ) -> AttnCase {
        let n_head = n_kv * group;
        // Contiguous: the queries are the last n_q cache rows (a prompt chunk); otherwise
        // scattered, unsorted positions, some past the cache.
        let q_pos = if contiguous {
            (0..n_q).map(|i| (kv_len + i).saturating_sub(n_q) as i32).collect()
        } else {
            uniform(seed ^ 0x51, n_q, 1.0)
                .iter()
                .map(|u| ((u + 1.0) * 0.5 * (kv_len + 8) as f32) as i32)
                .collect()
        };
        let (q_pad, out_pad, head_pad, token_pad) = pads;
        AttnCase {
            n_q, n_head, n_kv, d, kv_len, q_pos,
            scale: scale_mul / (d as f32).sqrt(),
            softcap, window, causal, f16_cache, amp,
            q_pad, out_pad, head_pad,
            // Bytes: odd paddings misalign rows, which the kernels must not mind.
            token_pad: token_pad * if f16_cache { 1 } else { 4 },
            seed,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn attention_matches_reference(case in attn_case(), threaded: bool) {
        case.assert_matches(threaded)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Paged caches with any block size, windows starting anywhere in a block, decode and
    /// prefill, GQA or not (in place or widened).
    #[test]
    fn attention_paged_matches_contiguous(
        case in attn_case(), block_tokens in 1usize..=64, spare in 0usize..4, threaded: bool,
    ) {
        case.assert_paged_matches(block_tokens, spare, &pool(threaded))?;
    }
}

/// Decode over a long paged cache with many threads, so that the key range is split (and split
/// points fall inside blocks): GQA 7 (widened blocks) and one KV head per query head (read in
/// place), block sizes that divide the 64-key blocks, do not, or are smaller than 8 keys.
#[test]
fn attention_paged_decode_split_keys() {
    for (n_head, n_kv, window) in [(14, 2, 0), (4, 4, 0), (14, 2, 700), (4, 4, 333)] {
        let case = AttnCase {
            n_q: 1,
            n_head,
            n_kv,
            d: 64,
            kv_len: 2000,
            q_pos: vec![1999],
            scale: 0.125,
            window,
            seed: 11,
            ..AttnCase::plain()
        };
        for (block_tokens, n_threads) in [(16, 5), (1, 16), (5, 16), (48, 5), (64, 2), (100, 16)] {
            case.assert_paged_matches(block_tokens, 3, &threads(n_threads))
                .unwrap();
        }
    }
}

/// K and V of different element types (an f16 K with an f32 V), in tiles that read the cache
/// in place (no GQA, one query) and in widened ones.
#[test]
fn attention_mixed_cache_types() {
    for n_q in [1, 9] {
        let case = AttnCase {
            n_q,
            n_head: 2,
            n_kv: 2,
            d: 16,
            kv_len: 70,
            q_pos: (70 - n_q as i32..70).collect(),
            scale: 0.25,
            seed: 12,
            ..AttnCase::plain()
        };
        let f16_data = case.data();
        let f32_data = AttnCase {
            f16_cache: false,
            ..case.clone()
        }
        .data();
        let mixed = AttnData {
            v: f32_data.v,
            v_vals: f32_data.v_vals,
            ..f16_data
        };
        let want = case.run(&mixed, Impl::Reference, &pool(false)).unwrap();
        let got = case.run(&mixed, Impl::Avx2, &pool(false)).unwrap();
        case.check(&mixed, &got, &want).unwrap();
    }
}

/// A block table too short for `kv_len`, or naming a block outside the pool, is an error (the
/// reference's), not a panic; ids past what `kv_len` reads are never looked at.
#[test]
fn attention_rejects_bad_block_tables() {
    let case = AttnCase {
        n_q: 2,
        n_head: 4,
        n_kv: 2,
        d: 16,
        kv_len: 37,
        q_pos: vec![20, 36],
        scale: 0.25,
        seed: 5,
        ..AttnCase::plain()
    };
    let block_tokens = 8;
    // 5 blocks hold the 37 tokens; the table names 6, the pool has 7.
    let data = case.data().paged(case.kv_len, block_tokens, 2, 9);
    let n_blocks = (data.k.bytes.len() / (block_tokens * data.k.token_stride)) as u32;
    let with_k_table = |edit: &dyn Fn(&mut Vec<u32>)| {
        let mut bad = data.clone();
        edit(&mut bad.k.blocks);
        let want = case.run(&bad, Impl::Reference, &pool(false));
        let got = case.run(&bad, Impl::Avx2, &pool(true));
        match (&want, &got) {
            (Ok(w), Ok(g)) => case.check(&bad, g, w).unwrap(),
            _ => assert_eq!(got, want),
        }
        want
    };
    let short = with_k_table(&|t| t.truncate(4));
    assert!(short.unwrap_err().contains("block table"));
    let outside = with_k_table(&|t| t[4] = n_blocks);
    assert!(outside.unwrap_err().contains(&format!("block {n_blocks}")));
    // The table's sixth block is not read: any id there is fine.
    with_k_table(&|t| t[5] = u32::MAX).unwrap();
}

/// A decode step: one query at the end of a long cache, GQA 7, on many threads, so that the
/// key range is split and the partial results merged.
#[test]
fn attention_decode_split_keys() {
    for (f16_cache, softcap, window, d) in [
        (true, 0.0, 0, 64),
        (false, 30.0, 0, 64),
        (true, 0.0, 700, 128),
        (true, 50.0, 0, 40),
    ] {
        let case = AttnCase {
            n_q: 1,
            n_head: 14,
            n_kv: 2,
            d,
            kv_len: 2000,
            q_pos: vec![1999],
            scale: 1.0 / (d as f32).sqrt(),
            softcap,
            window,
            f16_cache,
            out_pad: 3,
            seed: 7,
            ..AttnCase::plain()
        };
        let data = case.data();
        let want = case.run(&data, Impl::Reference, &pool(false)).unwrap();
        for n in [2, 5, 16] {
            let got = case.run(&data, Impl::Avx2, &threads(n)).unwrap();
            case.check(&data, &got, &want).unwrap();
        }
    }
}

/// Several queries with too few tiles for 16 threads: split keys, and a merge big enough to
/// run on the pool.
#[test]
fn attention_split_keys_parallel_merge() {
    let n_q = 40;
    let case = AttnCase {
        n_q,
        n_head: 7,
        n_kv: 1,
        d: 128,
        kv_len: 1200,
        q_pos: (0..n_q).map(|i| 1100 + 2 * i as i32).collect(),
        scale: 0.09,
        q_pad: 5,
        out_pad: 1,
        head_pad: 2,
        token_pad: 6,
        seed: 99,
        ..AttnCase::plain()
    };
    let data = case.data();
    let want = case.run(&data, Impl::Reference, &pool(false)).unwrap();
    let got = case.run(&data, Impl::Avx2, &threads(16)).unwrap();
    case.check(&data, &got, &want).unwrap();
}

/// A prompt as one call: many query blocks, causal and windowed, on a pool; over a paged
/// cache too.
#[test]
fn attention_prefill_blocks() {
    for (n_head, n_kv, window, softcap, f16_cache) in [
        (14, 2, 0, 0.0, true),
        (8, 8, 100, 0.0, false),
        (16, 4, 0, 30.0, true),
    ] {
        let n = 300;
        let case = AttnCase {
            n_q: n,
            n_head,
            n_kv,
            d: 64,
            kv_len: n,
            q_pos: (0..n as i32).collect(),
            scale: 0.125,
            softcap,
            window,
            f16_cache,
            seed: 3,
            ..AttnCase::plain()
        };
        let data = case.data();
        let want = case.run(&data, Impl::Reference, &pool(false)).unwrap();
        for threaded in [false, true] {
            let got = case.run(&data, Impl::Avx2, &pool(threaded)).unwrap();
            case.check(&data, &got, &want).unwrap();
        }
        for block_tokens in [16, 7] {
            case.assert_paged_matches(block_tokens, 2, &pool(true))
                .unwrap();
        }
    }
}

/// Queries that see no key get zeros, like the reference, whatever else is in the batch.
#[test]
fn attention_rows_without_keys_are_zero() {
    let case = AttnCase {
        n_q: 3,
        n_head: 2,
        n_kv: 1,
        d: 8,
        kv_len: 10,
        // Non-causal with a window of 2: position 20 sees keys 19..=20, none of 0..10.
        q_pos: vec![20, 5, 30],
        scale: 0.3,
        window: 2,
        causal: false,
        f16_cache: false,
        seed: 1,
        ..AttnCase::plain()
    };
    let data = case.data();
    let got = case.run(&data, Impl::Avx2, &pool(false)).unwrap();
    let want = case.run(&data, Impl::Reference, &pool(false)).unwrap();
    assert!(got[..16].iter().all(|&x| x == 0.0));
    assert!(got[32..].iter().all(|&x| x == 0.0));
    assert!(got[16..32].iter().any(|&x| x != 0.0));
    case.check(&data, &got, &want).unwrap();
    // An empty cache: every output zero.
    let empty = AttnCase {
        kv_len: 0,
        q_pos: vec![0, 1, 2],
        causal: true,
        ..case
    };
    let data = empty.data();
    let got = empty.run(&data, Impl::Avx2, &pool(true)).unwrap();
    assert!(got.iter().all(|&x| x == 0.0));
}

/// Every shape the reference rejects is rejected (an error, not a panic), and only those.
#[test]
fn attention_rejects_what_the_reference_rejects() {
    let base = AttnCase {
        n_q: 2,
        n_head: 4,
        n_kv: 2,
        d: 16,
        kv_len: 5,
        q_pos: vec![3, 4],
        scale: 0.25,
        seed: 5,
        ..AttnCase::plain()
    };
    let data = base.data();
    let bad = [
        AttnCase {
            n_kv: 3,
            ..base.clone()
        },
        AttnCase {
            q_pos: vec![3],
            ..base.clone()
        },
        AttnCase {
            q_pos: vec![3, -1],
            ..base.clone()
        },
        AttnCase {
            kv_len: 6,
            ..base.clone()
        },
        AttnCase {
            n_q: 3,
            q_pos: vec![1, 2, 3],
            ..base.clone()
        },
        AttnCase {
            d: 0,
            ..base.clone()
        },
    ];
    for case in &bad {
        let want = case.run(&data, Impl::Reference, &pool(false));
        let got = case.run(&data, Impl::Avx2, &pool(false));
        assert!(want.is_err(), "{case:?}");
        assert_eq!(got, want, "{case:?}");
    }
}

/// `|a - b| ≤ tol · max(|a|, |b|) + abs`, NaNs equal to NaNs.
fn near(a: f32, b: f32, tol: f32, abs: f32) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= tol * a.abs().max(b.abs()) + abs
}

/// Edge values mixed into random ones: zeros, tiny, huge, the GELU thresholds.
fn edgy(seed: u64, n: usize, amp: f32) -> Vec<f32> {
    const EDGES: [f32; 14] = [
        0.0, -0.0, 1e-30, -1e-6, 1e-3, 9.999, 10.0, -10.0, -10.001, 30.0, -30.0, 88.0, -100.0, 5.0,
    ];
    uniform(seed, n, amp)
        .into_iter()
        .enumerate()
        .map(|(i, x)| {
            if (i as u64 ^ seed).is_multiple_of(7) {
                EDGES[(i + seed as usize) % EDGES.len()]
            } else {
                x
            }
        })
        .collect()
}

fn rms_norm_run(
    which: Impl,
    x: &[f32],
    w: Option<&[f32]>,
    rows: usize,
    dim: usize,
    eps: f32,
    p: &PoolRef<'_>,
) -> Result<Vec<f32>, String> {
    let mut out = vec![SENTINEL; x.len()];
    let args = RmsNormArgs {
        x: RSlice::from_slice(x),
        out: RSliceMut::from_mut_slice(&mut out),
        weight: w.map(RSlice::from_slice).into(),
        rows,
        dim,
        eps,
    };
    match which {
        Impl::Avx2 => Avx2Kernels::rms_norm(args, p)?,
        Impl::Reference => reference::norm::rms_norm_op(args, p)?,
    }
    Ok(out)
}

fn rope_run(which: Impl, x: &mut [f32], args: &RopeCase, p: &PoolRef<'_>) -> Result<(), String> {
    let a = RopeArgs {
        x: RSliceMut::from_mut_slice(x),
        n_tokens: args.positions.len(),
        n_heads: args.n_heads,
        head_dim: args.head_dim,
        token_stride: args.n_heads * args.head_dim + args.pad,
        positions: RSlice::from_slice(&args.positions),
        n_rot: args.n_rot,
        freq_base: args.freq_base,
        freq_scale: args.freq_scale,
        mode: args.mode,
    };
    match which {
        Impl::Avx2 => Avx2Kernels::rope(a, p),
        Impl::Reference => reference::rope::rope_op(a, p),
    }
}

#[derive(Debug, Clone)]
struct RopeCase {
    n_heads: usize,
    head_dim: usize,
    n_rot: usize,
    pad: usize,
    positions: Vec<i32>,
    freq_base: f32,
    freq_scale: f32,
    mode: RopeMode,
}

impl RopeCase {
    fn check(&self, seed: u64, p: &PoolRef<'_>) -> Result<(), TestCaseError> {
        let n = self.positions.len() * (self.n_heads * self.head_dim + self.pad);
        let x0 = uniform(seed, n, 3.0);
        let (mut got, mut want) = (x0.clone(), x0.clone());
        rope_run(Impl::Reference, &mut want, self, &pool(false)).unwrap();
        rope_run(Impl::Avx2, &mut got, self, p).unwrap();
        for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
            prop_assert!(
                near(a, b, 0.0, 1e-6),
                "{i}: {a} vs reference {b} ({self:?})"
            );
        }
        Ok(())
    }
}

fn softmax_run(which: Impl, x: &mut [f32], rows: usize, cols: usize, scale: f32, p: &PoolRef<'_>) {
    let a = SoftmaxArgs {
        x: RSliceMut::from_mut_slice(x),
        rows,
        cols,
        scale,
    };
    match which {
        Impl::Avx2 => Avx2Kernels::softmax(a, p).unwrap(),
        Impl::Reference => reference::elementwise::softmax_op(a).unwrap(),
    }
}

fn unary_run(
    which: Impl,
    op: UnaryOp,
    x: &mut [f32],
    param: f32,
    p: &PoolRef<'_>,
) -> Result<(), String> {
    let a = UnaryArgs {
        op,
        x: RSliceMut::from_mut_slice(x),
        param,
    };
    match which {
        Impl::Avx2 => Avx2Kernels::unary(a, p),
        Impl::Reference => reference::elementwise::unary_op(a),
    }
}

fn binary_run(
    which: Impl,
    op: BinaryOp,
    a: &mut [f32],
    b: &[f32],
    rows: usize,
    cols: usize,
    p: &PoolRef<'_>,
) -> Result<(), String> {
    let args = BinaryArgs {
        op,
        a: RSliceMut::from_mut_slice(a),
        b: RSlice::from_slice(b),
        rows,
        cols,
    };
    match which {
        Impl::Avx2 => Avx2Kernels::binary(args, p),
        Impl::Reference => reference::elementwise::binary_op(args),
    }
}

fn glu_run(
    which: Impl,
    kind: GluKind,
    gate: &mut [f32],
    up: &[f32],
    p: &PoolRef<'_>,
) -> Result<(), String> {
    let a = GluArgs {
        kind,
        gate: RSliceMut::from_mut_slice(gate),
        up: RSlice::from_slice(up),
    };
    match which {
        Impl::Avx2 => Avx2Kernels::glu(a, p),
        Impl::Reference => reference::elementwise::glu_op(a),
    }
}

/// Relative tolerance of the functions built on exp/tanh: 4 ulp (measured worst: 2.6 for
/// SiLU, 1.9 for soft-capping, over a dense sweep).
const TRANSCENDENTAL_TOL: f32 = 4.0 * f32::EPSILON;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn rms_norm_matches_reference(
        rows in 0usize..5, dim in prop_oneof![1usize..40, 40usize..300], eps in 1e-6f32..1e-4,
        weighted: bool, amp in prop::sample::select(vec![1e-3f32, 1.0, 100.0]), seed in any::<u64>(),
    ) {
        let x = edgy(seed, rows * dim, amp);
        let w = uniform(seed ^ 3, dim, 2.0);
        let w = weighted.then_some(&w[..]);
        let want = rms_norm_run(Impl::Reference, &x, w, rows, dim, eps, &pool(false)).unwrap();
        let got = rms_norm_run(Impl::Avx2, &x, w, rows, dim, eps, &pool(false)).unwrap();
        for (&a, &b) in got.iter().zip(&want) {
            // Only the order of an f64 sum differs: equal but for a rare last-bit rounding.
            prop_assert!(near(a, b, 2.0 * f32::EPSILON, 0.0), "{a} vs {b}");
        }
        // The row function the matmul fuses computes the same.
        if rows > 0 {
            let cpu = kernels_avx2::cpu::Avx2::detect().unwrap();
            let mut row = vec![0f32; dim];
            kernels_avx2::norm::rms_norm_row(cpu, &x[..dim], w, eps, &mut row);
            prop_assert_eq!(&row[..], &got[..dim]);
        }
    }

    #[test]
    fn rope_matches_reference(
        n_heads in 1usize..5, half_rot in 1usize..40, extra in 0usize..5, pad in 0usize..3,
        positions in prop::collection::vec(prop_oneof![0i32..64, 0i32..40_000, 40_000i32..130_000], 0..6),
        freq_base in prop::sample::select(vec![10_000.0f32, 500_000.0, 1_000_000.0]),
        freq_scale in prop::sample::select(vec![1.0f32, 0.25]),
        neox: bool, threaded: bool, seed in any::<u64>(),
    ) {
        let n_rot = 2 * half_rot;
        let case = RopeCase {
            n_heads, head_dim: n_rot + extra, n_rot, pad, positions, freq_base, freq_scale,
            mode: if neox { RopeMode::Neox } else { RopeMode::Normal },
        };
        case.check(seed, &pool(threaded))?;
    }

    #[test]
    fn softmax_matches_reference(
        rows in 0usize..5, cols in prop_oneof![1usize..20, 20usize..300], scale in 0.05f32..4.0,
        offset in -80.0f32..80.0, masked: bool, seed in any::<u64>(),
    ) {
        let mut x: Vec<f32> = uniform(seed, rows * cols, 20.0).iter().map(|v| v + offset).collect();
        if masked {
            // Masked logits, as a causal mask writes them; never a whole row.
            for (i, v) in x.iter_mut().enumerate() {
                if !i.is_multiple_of(cols) && (i as u64 ^ seed).is_multiple_of(3) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        let mut want = x.clone();
        softmax_run(Impl::Reference, &mut want, rows, cols, scale, &pool(false));
        softmax_run(Impl::Avx2, &mut x, rows, cols, scale, &pool(false));
        for (&a, &b) in x.iter().zip(&want) {
            prop_assert!(near(a, b, TRANSCENDENTAL_TOL, 1e-37), "{a} vs {b}");
        }
    }

    #[test]
    fn unary_matches_reference(
        n in prop_oneof![0usize..20, 20usize..500],
        op in prop::sample::select(vec![UnaryOp::Silu, UnaryOp::Gelu, UnaryOp::Scale, UnaryOp::Softcap]),
        param in prop_oneof![0.5f32..50.0, -2.0f32..0.0], amp in prop::sample::select(vec![1.0f32, 12.0, 200.0]),
        seed in any::<u64>(),
    ) {
        let x = edgy(seed, n, amp);
        let (mut got, mut want) = (x.clone(), x.clone());
        let r = unary_run(Impl::Reference, op, &mut want, param, &pool(false));
        let a = unary_run(Impl::Avx2, op, &mut got, param, &pool(false));
        prop_assert_eq!(&a, &r);
        if r.is_err() {
            return Ok(());
        }
        for (&g, &w) in got.iter().zip(&want) {
            match op {
                // Bit-exact: a product, and GELU's f16 table built with the reference's formula.
                UnaryOp::Scale | UnaryOp::Gelu => prop_assert!(g.to_bits() == w.to_bits() || (g == w), "{g} vs {w}"),
                UnaryOp::Softcap => prop_assert!(near(g, w, TRANSCENDENTAL_TOL, 1e-37), "{g} vs {w}"),
                UnaryOp::Silu => prop_assert!(near(g, w, TRANSCENDENTAL_TOL, 1e-37), "{g} vs {w}"),
            }
        }
    }

    #[test]
    fn binary_matches_reference(
        rows in 0usize..6, cols in prop_oneof![1usize..20, 20usize..200], mul: bool,
        broadcast: bool, seed in any::<u64>(),
    ) {
        let a0 = edgy(seed, rows * cols, 10.0);
        let b = uniform(seed ^ 9, if broadcast { cols } else { rows * cols }, 3.0);
        let op = if mul { BinaryOp::Mul } else { BinaryOp::Add };
        let (mut got, mut want) = (a0.clone(), a0);
        binary_run(Impl::Reference, op, &mut want, &b, rows, cols, &pool(false)).unwrap();
        binary_run(Impl::Avx2, op, &mut got, &b, rows, cols, &pool(false)).unwrap();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn glu_matches_reference(n in prop_oneof![0usize..20, 20usize..500], gelu: bool, seed in any::<u64>()) {
        let g0 = edgy(seed, n, 12.0);
        let up = uniform(seed ^ 4, n, 2.0);
        let kind = if gelu { GluKind::Gelu } else { GluKind::Silu };
        let (mut got, mut want) = (g0.clone(), g0);
        glu_run(Impl::Reference, kind, &mut want, &up, &pool(false)).unwrap();
        glu_run(Impl::Avx2, kind, &mut got, &up, &pool(false)).unwrap();
        for (&a, &b) in got.iter().zip(&want) {
            if gelu {
                prop_assert_eq!(a, b);
            } else {
                prop_assert!(near(a, b, TRANSCENDENTAL_TOL, 1e-37), "{a} vs {b}");
            }
        }
    }
}

/// GELU over every f16 value (the whole table) and around the ±10 thresholds: bit-exact.
#[test]
fn gelu_is_bit_exact_everywhere() {
    let mut x: Vec<f32> = (0..=u16::MAX)
        .map(|b| f16::from_bits(b).to_f32())
        .filter(|v| v.is_finite())
        .collect();
    x.extend((-2000..2000).map(|i| 10.0 + i as f32 * 1e-4));
    x.extend((-2000..2000).map(|i| -10.0 + i as f32 * 1e-4));
    let (mut got, mut want) = (x.clone(), x);
    unary_run(Impl::Reference, UnaryOp::Gelu, &mut want, 0.0, &pool(false)).unwrap();
    unary_run(Impl::Avx2, UnaryOp::Gelu, &mut got, 0.0, &pool(true)).unwrap();
    for (&a, &b) in got.iter().zip(&want) {
        assert!(
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            "{a} vs {b}"
        );
    }
}

/// SiLU and soft-capping over a dense sweep of inputs (exp and tanh across all their
/// branches: tiny, the tanh polynomial/exp switch at 0.625, overflow).
#[test]
fn exp_and_tanh_paths_are_accurate() {
    let x: Vec<f32> = (-40_000..40_000).map(|i| i as f32 * 2.5e-3).collect();
    for (op, param, tol, abs) in [
        (UnaryOp::Silu, 0.0, TRANSCENDENTAL_TOL, 1e-37),
        (UnaryOp::Softcap, 1.0, TRANSCENDENTAL_TOL, 1e-37),
        (UnaryOp::Softcap, 30.0, TRANSCENDENTAL_TOL, 1e-37),
    ] {
        let (mut got, mut want) = (x.clone(), x.clone());
        unary_run(Impl::Reference, op, &mut want, param, &pool(false)).unwrap();
        unary_run(Impl::Avx2, op, &mut got, param, &pool(true)).unwrap();
        for ((&a, &b), &x) in got.iter().zip(&want).zip(&x) {
            assert!(near(a, b, tol, abs), "{op:?}({x}): {a} vs {b}");
        }
    }
    // Softmax over logits reaching exp's underflow and gradual-underflow range.
    let mut s: Vec<f32> = (0..1000).map(|i| -(i as f32) * 0.11).collect();
    let mut want = s.clone();
    softmax_run(Impl::Reference, &mut want, 1, 1000, 1.0, &pool(false));
    softmax_run(Impl::Avx2, &mut s, 1, 1000, 1.0, &pool(false));
    for (&a, &b) in s.iter().zip(&want) {
        assert!(near(a, b, TRANSCENDENTAL_TOL, 1e-44), "{a} vs {b}");
    }
}

/// Ops big enough to be split over the pool give what the reference gives.
#[test]
fn large_ops_split_over_the_pool() {
    let p = threads(4);
    let (rows, cols) = (37, 4099);
    let x = edgy(11, rows * cols, 4.0);
    let w = uniform(12, cols, 2.0);
    let want = rms_norm_run(
        Impl::Reference,
        &x,
        Some(&w),
        rows,
        cols,
        1e-5,
        &pool(false),
    )
    .unwrap();
    let got = rms_norm_run(Impl::Avx2, &x, Some(&w), rows, cols, 1e-5, &p).unwrap();
    assert!(got
        .iter()
        .zip(&want)
        .all(|(&a, &b)| near(a, b, 2.0 * f32::EPSILON, 0.0)));

    let (mut got, mut want) = (x.clone(), x.clone());
    softmax_run(Impl::Reference, &mut want, rows, cols, 0.7, &pool(false));
    softmax_run(Impl::Avx2, &mut got, rows, cols, 0.7, &p);
    assert!(got
        .iter()
        .zip(&want)
        .all(|(&a, &b)| near(a, b, TRANSCENDENTAL_TOL, 1e-37)));

    for op in [
        UnaryOp::Silu,
        UnaryOp::Gelu,
        UnaryOp::Scale,
        UnaryOp::Softcap,
    ] {
        let (mut got, mut want) = (x.clone(), x.clone());
        unary_run(Impl::Reference, op, &mut want, 3.0, &pool(false)).unwrap();
        unary_run(Impl::Avx2, op, &mut got, 3.0, &p).unwrap();
        assert!(
            got.iter()
                .zip(&want)
                .all(|(&a, &b)| near(a, b, TRANSCENDENTAL_TOL, 1e-37)),
            "{op:?}"
        );
    }
    for op in [BinaryOp::Add, BinaryOp::Mul] {
        for b in [w.clone(), uniform(13, rows * cols, 2.0)] {
            let (mut got, mut want) = (x.clone(), x.clone());
            binary_run(Impl::Reference, op, &mut want, &b, rows, cols, &pool(false)).unwrap();
            binary_run(Impl::Avx2, op, &mut got, &b, rows, cols, &p).unwrap();
            assert_eq!(got, want);
        }
    }
    for kind in [GluKind::Silu, GluKind::Gelu] {
        let up = uniform(14, x.len(), 2.0);
        let (mut got, mut want) = (x.clone(), x.clone());
        glu_run(Impl::Reference, kind, &mut want, &up, &pool(false)).unwrap();
        glu_run(Impl::Avx2, kind, &mut got, &up, &p).unwrap();
        assert!(got
            .iter()
            .zip(&want)
            .all(|(&a, &b)| near(a, b, TRANSCENDENTAL_TOL, 1e-37)));
    }
    let case = RopeCase {
        n_heads: 16,
        head_dim: 128,
        n_rot: 128,
        pad: 8,
        positions: (0..64).map(|i| i * 97).collect(),
        freq_base: 1_000_000.0,
        freq_scale: 1.0,
        mode: RopeMode::Neox,
    };
    case.check(15, &p).unwrap();
    let normal = RopeCase {
        mode: RopeMode::Normal,
        n_rot: 64,
        ..case
    };
    normal.check(17, &p).unwrap();
}

/// Inconsistent shapes are errors, exactly where the reference says so.
#[test]
fn small_ops_reject_what_the_reference_rejects() {
    let p = pool(false);
    let x = vec![1f32; 10];
    for (rows, dim, w) in [
        (3, 4, None),
        (2, 5, Some(4)),
        (2, 5, Some(5)),
        (1, 11, None),
    ] {
        let w = w.map(|n| vec![1f32; n]);
        let a = rms_norm_run(Impl::Avx2, &x, w.as_deref(), rows, dim, 1e-5, &p);
        let r = rms_norm_run(Impl::Reference, &x, w.as_deref(), rows, dim, 1e-5, &p);
        assert_eq!(a.is_err(), r.is_err(), "rms_norm {rows}×{dim}");
    }
    for (n_rot, n_heads, head_dim, pad, positions) in [
        (3, 1, 4, 0, vec![0]),
        (6, 1, 4, 0, vec![0]),
        (4, 2, 4, 0, vec![0, 1]),
        (4, 1, 4, 0, vec![0, 1, 2]),
    ] {
        let case = RopeCase {
            n_heads,
            head_dim,
            n_rot,
            pad,
            positions,
            freq_base: 10_000.0,
            freq_scale: 1.0,
            mode: RopeMode::Normal,
        };
        let (mut a, mut b) = (vec![0f32; 9], vec![0f32; 9]);
        let ra = rope_run(Impl::Avx2, &mut a, &case, &p);
        let rb = rope_run(Impl::Reference, &mut b, &case, &p);
        assert_eq!(ra, rb, "{case:?}");
    }
    let (mut a, mut b) = (vec![0f32; 10], vec![0f32; 10]);
    for (rows, cols, bl) in [(3, 4, 4), (2, 5, 3), (2, 5, 10), (3, 3, 9), (4, 3, 3)] {
        let bv = vec![1f32; bl];
        for op in [BinaryOp::Add, BinaryOp::Mul] {
            let ra = binary_run(Impl::Avx2, op, &mut a, &bv, rows, cols, &p);
            let rb = binary_run(Impl::Reference, op, &mut b, &bv, rows, cols, &p);
            assert_eq!(ra, rb, "binary {rows}×{cols} b {bl}");
        }
    }
    let ra = glu_run(Impl::Avx2, GluKind::Silu, &mut a, &x[..9], &p);
    let rb = glu_run(Impl::Reference, GluKind::Silu, &mut b, &x[..9], &p);
    assert!(ra.is_err() && ra == rb);
    let sa = Avx2Kernels::softmax(
        SoftmaxArgs {
            x: RSliceMut::from_mut_slice(&mut a),
            rows: 3,
            cols: 4,
            scale: 1.0,
        },
        &p,
    );
    assert!(sa.is_err());
    let ua = unary_run(Impl::Avx2, UnaryOp::Softcap, &mut a, 0.0, &p);
    assert!(ua.is_err());
}

/// Timings against the reference, and of the AVX2 kernel over a paged cache (blocks of 16
/// tokens in a shuffled pool) against a contiguous one (run with `--release -- --ignored
/// --nocapture`; `BENCH_ONLY=<name part>` picks shapes, `BENCH_NO_REF=1` skips the slow
/// reference, `BENCH_ROUNDS=<n>` sets how many times each AVX2 timing is taken, the best
/// kept). The 2-thread pool spawns its threads per call, which dominates the decode
/// timings.
#[test]
#[ignore]
fn time_attention_against_reference() {
    fn time(mut f: impl FnMut()) -> f64 {
        f();
        let mut best = f64::INFINITY;
        let mut total = 0.0;
        let mut runs = 0;
        while total < 0.5 || runs < 3 {
            let t = std::time::Instant::now();
            f();
            let s = t.elapsed().as_secs_f64();
            best = best.min(s);
            total += s;
            runs += 1;
        }
        best
    }
    // (name, queries, keys, query heads, KV heads): GQA 7 widens K/V blocks; one KV head per
    // query head in decode reads the cache in place.
    let shapes = [
        ("decode kv 512", 1, 512, 14, 2),
        ("decode kv 2048", 1, 2048, 14, 2),
        ("decode kv 4096", 1, 4096, 14, 2),
        ("decode kv 2048 MHA", 1, 2048, 8, 8),
        ("prefill 512", 512, 512, 14, 2),
    ];
    let only = std::env::var("BENCH_ONLY").ok();
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    for (name, n_q, kv_len, n_head, n_kv) in shapes {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let case = AttnCase {
            n_q,
            n_head,
            n_kv,
            d: 64,
            kv_len,
            q_pos: (kv_len - n_q..kv_len).map(|p| p as i32).collect(),
            scale: 0.125,
            seed: 1,
            ..AttnCase::plain()
        };
        let data = case.data();
        let paged = data.paged(kv_len, 16, 0, 2);
        for n_threads in [1, 2] {
            let p = threads(n_threads);
            let r = if std::env::var("BENCH_NO_REF").is_ok() {
                f64::NAN
            } else {
                time(|| {
                    case.run(&data, Impl::Reference, &p).unwrap();
                })
            };
            // Contiguous and paged alternate, so that load from elsewhere hits both alike.
            let (mut a, mut a_paged) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..rounds {
                a = a.min(time(|| {
                    case.run(&data, Impl::Avx2, &p).unwrap();
                }));
                a_paged = a_paged.min(time(|| {
                    case.run(&paged, Impl::Avx2, &p).unwrap();
                }));
            }
            println!(
                "{name:>18}, {n_threads} thread(s): reference {:9.1} µs, avx2 {:8.1} µs, \
                 speedup {:5.1}×; paged {:8.1} µs ({:+.1}%)",
                r * 1e6,
                a * 1e6,
                r / a,
                a_paged * 1e6,
                (a_paged / a - 1.0) * 100.0
            );
        }
    }
}
