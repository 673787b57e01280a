//! Scaled dot-product attention straight over the f16 (or f32) KV cache: flash-style tiles
//! with an online softmax, for decode and prompt processing alike.
//!
//! A *tile* is a block of queries × the query heads that share one KV head (grouped-query
//! attention), against a range of keys. It walks its keys in blocks of up to
//! `MAX_BLOCK_KEYS`: each K and V block is widened to f32 once into a small buffer that stays
//! in L1 and serves every row of the tile (so a GQA group of 7 heads, or 4 queries × 7 heads
//! in a prompt, reads the cache once, not once per head), then per row
//!
//! 1. the block's scores, eight keys at a time (FMA dot products reduced by a transposing
//!    horizontal add), scaled and soft-capped; rows that see the same keys (the heads of one
//!    query always do) go two at a time, each loaded K/V element feeding both;
//! 2. the block's maximum updates the running maximum and rescales the running sum and output
//!    once per block rather than once per key;
//! 3. the exponentials (a vectorised `exp`) weight the value rows, accumulated with FMA into
//!    the output row held in registers.
//!
//! Keys a row cannot see are masked per row inside a block; blocks no row of the tile sees
//! (the causal future, keys before the sliding window) are never read. Tiles with one or two
//! rows (decode without GQA) skip the f32 buffer and read the cache directly.
//!
//! A paged cache (`KvRef::block_tokens`) is read the same way, over the same key blocks (so
//! paging changes no bit of the result), a block now spanning several scattered pages: it is
//! widened page by page into the f32 buffer, and tiles that read the cache in place reach its
//! rows through a table of row pointers gathered once per block ([`RowTable`]). The kernels
//! are generic over how they find a row ([`RowSource`]), so a contiguous cache keeps its
//! strided rows. Measured alternatives, in decode: row offsets through a table for contiguous
//! caches too cost 6% with GQA and 30% without; widening a paged cache for one-row tiles too
//! cost 2.3× without GQA. Splitting key blocks at page boundaries would multiply the
//! per-block softmax work by up to 64 and make results depend on the page size.
//!
//! The pool gets (query block × KV head) tiles, heaviest first. When that makes too few tasks
//! for the threads, as in decode, the key range is split as well ("flash decoding"): each task
//! leaves an unnormalised output with its maximum and sum, and a second pass merges them.
//!
//! Precision follows `kernels_reference::attention`: everything in f32 whatever the cache
//! type, scores `scale · q·k`, soft-capping as `cap · tanh(q·k · scale/cap)`, the output
//! divided by the sum at the end. Only summation order and `exp`/`tanh` (within ~2 ulp of
//! libm) differ.

use crate::{
    cpu::Avx2,
    disjoint::DisjointSlice,
    elementwise::{exp8, hmax, hsum, load, store, tanh8, PARALLEL_MIN},
};
use kernels_reference::{attention::visible_range, check};
use plugin_api::{parallel_for, AttentionArgs, GgmlType, KvRef, PoolRef};
use std::arch::x86_64::*;

/// Floats of one widened K (or V) block: 8 KiB, so that both blocks take half of a 32 KiB L1
/// and leave the rest to the query, output and score rows (16 KiB blocks measured 8% slower
/// in decode).
const BLOCK_FLOATS: usize = 2048;
/// Most keys per block (fewer when heads are wider than 64).
const MAX_BLOCK_KEYS: usize = 64;
/// Rows (query × head) a tile aims for: each widened block serves this many rows.
const TILE_ROWS: usize = 32;
/// Most floats of a tile's query and output rows together (keeps its scratch small).
const TILE_FLOATS: usize = 8192;
/// Fewest keys in one split of the key range: below that, merging costs more than it saves.
const MIN_SPLIT_KEYS: usize = 128;
/// Tasks per pool thread to aim for, so that uneven (causal) tasks still balance.
const TASKS_PER_THREAD: usize = 4;

/// Element types of the rows the kernels read, as const-generic tags (one monomorphised
/// inner loop per type).
const F32: u8 = 0;
const F16: u8 = 1;

const fn elem_bytes(e: u8) -> usize {
    if e == F32 {
        4
    } else {
        2
    }
}

/// The `attention` entry point.
pub fn attention_op(mut a: AttentionArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
    check::attention(&a)?;
    let cpu = Avx2::get()?;
    if a.n_q == 0 {
        return Ok(());
    }
    let k = Cache::new(&a.k, a.head_dim);
    let v = Cache::new(&a.v, a.head_dim);
    let plan = Plan::new(&a, pool.n_threads());
    let mut out_buf = std::mem::take(&mut a.out);
    let out = out_buf.as_mut_slice();
    let (n_q, n_head, n_kv, d) = (plan.n_q, plan.n_head, plan.n_kv, plan.d);
    let n_tasks = n_kv * plan.n_qblocks * plan.splits;
    // Heaviest tiles first: with a causal mask the last query block sees the most keys.
    let tile_of = |task: usize| {
        let rest = task / plan.splits;
        let qb = plan.n_qblocks - 1 - rest / n_kv;
        (rest % n_kv, qb, task % plan.splits)
    };

    if plan.splits == 1 {
        let sink = Sink::Out {
            out: DisjointSlice::new(out),
            stride: a.out_stride,
        };
        return parallel_for(pool, n_tasks, |task, _| {
            let (kv_head, qb, split) = tile_of(task);
            // SAFETY: cpu proves avx2+fma+f16c.
            unsafe { run_tile(cpu, &plan, k, v, kv_head, qb, split, &sink) };
        });
    }

    let splits = plan.splits;
    let mut part_o = vec![0f32; splits * n_q * n_head * d];
    let mut part_m = vec![0f32; splits * n_q * n_head];
    let mut part_l = vec![0f32; splits * n_q * n_head];
    {
        let sink = Sink::Partial {
            o: DisjointSlice::new(&mut part_o),
            m: DisjointSlice::new(&mut part_m),
            l: DisjointSlice::new(&mut part_l),
        };
        parallel_for(pool, n_tasks, |task, _| {
            let (kv_head, qb, split) = tile_of(task);
            // SAFETY: cpu proves avx2+fma+f16c.
            unsafe { run_tile(cpu, &plan, k, v, kv_head, qb, split, &sink) };
        })?;
    }
    let parts = Partials {
        o: &part_o,
        m: &part_m,
        l: &part_l,
    };
    let stride = a.out_stride;
    if n_q * n_head * d * splits < PARALLEL_MIN || pool.n_threads() <= 1 {
        for i in 0..n_q {
            // SAFETY: cpu proves avx2+fma+f16c.
            unsafe { merge(cpu, &plan, &parts, i, &mut out[i * stride..][..n_head * d]) };
        }
        return Ok(());
    }
    let out = DisjointSlice::new(out);
    parallel_for(pool, n_q, |i, _| {
        // SAFETY: one task per query, whose output row (n_head·d floats at i·stride, in bounds
        // and disjoint from the other queries' since stride ≥ n_head·d, per check::attention)
        // no other task touches.
        let row = unsafe { out.range_mut(i * stride, n_head * d) };
        // SAFETY: cpu proves avx2+fma+f16c.
        unsafe { merge(cpu, &plan, &parts, i, row) };
    })
}

/// One side of the cache, contiguous or paged: `head_dim` elements of head `h` of logical
/// token `t` at byte `kv.row_offset(t, h)`.
#[derive(Clone, Copy)]
struct Cache<'a> {
    kv: KvRef<'a>,
    data: &'a [u8],
    elem: u8,
    row_bytes: usize,
}

impl<'a> Cache<'a> {
    fn new(kv: &KvRef<'a>, head_dim: usize) -> Self {
        let elem = if kv.dtype == GgmlType::F16 { F16 } else { F32 };
        Cache {
            kv: *kv,
            data: kv.data.as_slice(),
            elem,
            row_bytes: head_dim * elem_bytes(elem),
        }
    }

    /// Physical rows `row..row + n` (`n ≥ 1`) of head `head`, `token_stride` apart. Slicing
    /// cannot fail for the rows of keys below `kv_len`: `check::attention` validated them (and
    /// whole pages).
    #[inline]
    fn physical_rows(&self, head: usize, row: usize, n: usize) -> Rows<'a> {
        let start = row * self.kv.token_stride + head * self.kv.head_stride;
        let end = start + (n - 1) * self.kv.token_stride + self.row_bytes;
        Rows::new(
            &self.data[start..end],
            self.kv.token_stride,
            n,
            self.row_bytes,
        )
    }

    /// Keys `j0..j1` of head `head` as runs of rows `token_stride` apart, first to last: the
    /// whole range when contiguous, one run per page it touches when paged. The page of `j0`
    /// is found once; the runs after it start pages (`KvRef::physical_row` would divide per
    /// run, which cost 6% of a paged decode without GQA).
    fn runs(&self, head: usize, j0: usize, j1: usize) -> impl Iterator<Item = Rows<'a>> + '_ {
        let page_len = self.kv.block_tokens;
        let (mut page, mut skip) = match page_len {
            0 => (0, j0),
            _ => (j0 / page_len, j0 % page_len),
        };
        let mut j = j0;
        std::iter::from_fn(move || {
            if j >= j1 {
                return None;
            }
            let (row, n) = match page_len {
                0 => (j, j1 - j),
                _ => (
                    self.kv.blocks[page] as usize * page_len + skip,
                    (page_len - skip).min(j1 - j),
                ),
            };
            (page, skip, j) = (page + 1, 0, j + n);
            Some(self.physical_rows(head, row, n))
        })
    }

    /// Keys `j0..j1` of head `head`, as rows `token_stride` apart that the kernels read in
    /// place: a contiguous cache only (a paged one goes through `runs`).
    fn rows(&self, head: usize, j0: usize, j1: usize) -> Rows<'a> {
        assert!(
            self.kv.block_tokens == 0,
            "a paged cache is read through `runs`"
        );
        self.physical_rows(head, j0, j1 - j0)
    }
}

/// `n ≥ 1` rows of `row_bytes` bytes, `stride` bytes apart, all inside `data` (checked when
/// made, so the kernels may read any row through [`Rows::ptr`]): a block of cache rows, or of
/// the widened f32 buffer.
#[derive(Clone, Copy)]
struct Rows<'a> {
    data: &'a [u8],
    stride: usize,
    n: usize,
    row_bytes: usize,
}

impl<'a> Rows<'a> {
    fn new(data: &'a [u8], stride: usize, n: usize, row_bytes: usize) -> Self {
        let end = n
            .checked_sub(1)
            .and_then(|last| last.checked_mul(stride))
            .and_then(|start| start.checked_add(row_bytes));
        assert!(
            end.is_some_and(|end| end <= data.len()),
            "{n} rows of {row_bytes} bytes {stride} apart overrun {} bytes",
            data.len()
        );
        Rows {
            data,
            stride,
            n,
            row_bytes,
        }
    }

    fn row(&self, j: usize) -> &'a [u8] {
        &self.data[j * self.stride..][..self.row_bytes]
    }

    /// Start of row `min(j, n - 1)`: `row_bytes` readable bytes (checked in [`Rows::new`]).
    /// Clamping lets a group of eight keys run past the block's end without reading outside
    /// it; the extra keys are masked.
    #[inline]
    fn ptr(&self, j: usize) -> *const u8 {
        self.data
            .as_ptr()
            .wrapping_add(j.min(self.n - 1) * self.stride)
    }
}

/// The rows of one block of keys or values as the kernels read them, through raw pointers.
///
/// # Safety
/// Implementors guarantee `len() ≥ 1` and that `ptr(j)`, for any `j`, points at `row_bytes()`
/// readable bytes: row `min(j, len() - 1)`, which stays valid as long as `self` may be used.
/// Clamping lets a group of eight keys run past the block's end without reading outside it;
/// the extra keys are masked.
unsafe trait RowSource: Copy {
    fn len(&self) -> usize;
    fn row_bytes(&self) -> usize;
    fn ptr(&self, j: usize) -> *const u8;
}

// SAFETY: `Rows::new` checked that its `n ≥ 1` rows lie inside `data`, which stays borrowed
// while the `Rows` lives, and `Rows::ptr` clamps to them.
unsafe impl RowSource for Rows<'_> {
    fn len(&self) -> usize {
        self.n
    }

    fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    #[inline]
    fn ptr(&self, j: usize) -> *const u8 {
        Rows::ptr(self, j)
    }
}

/// Rows scattered over several runs (the pages one block of keys of a paged cache spans),
/// gathered into a table of row pointers: what lets tiles of one or two rows read a paged
/// cache in place, where widening it would cost more than the tile's arithmetic.
#[derive(Clone, Copy)]
struct RowTable<'t> {
    ptrs: &'t [*const u8],
    row_bytes: usize,
}

impl<'t> RowTable<'t> {
    /// The rows of `runs`, first to last, their pointers written to `ptrs`. The cache the
    /// runs read outlives the table (`'c: 't`).
    fn gather<'c: 't>(runs: impl Iterator<Item = Rows<'c>>, ptrs: &'t mut [*const u8]) -> Self {
        let (mut n, mut row_bytes) = (0, 0);
        for run in runs {
            for (jj, ptr) in ptrs[n..n + run.n].iter_mut().enumerate() {
                *ptr = run.ptr(jj);
            }
            n += run.n;
            row_bytes = run.row_bytes;
        }
        assert!(n > 0, "no rows to gather");
        RowTable {
            ptrs: &ptrs[..n],
            row_bytes,
        }
    }
}

// SAFETY: every pointer is a row start `Rows::ptr` gave for a row of its run (`row_bytes`
// readable bytes of a cache that outlives the table, per `gather`'s bound), and the table is
// not empty (asserted in `gather`).
unsafe impl RowSource for RowTable<'_> {
    fn len(&self) -> usize {
        self.ptrs.len()
    }

    fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    #[inline]
    fn ptr(&self, j: usize) -> *const u8 {
        self.ptrs[j.min(self.ptrs.len() - 1)]
    }
}

/// How the op is cut into tiles, and what every tile needs to know.
struct Plan<'a> {
    q: &'a [f32],
    q_stride: usize,
    q_pos: &'a [i32],
    n_q: usize,
    kv_len: usize,
    n_head: usize,
    n_kv: usize,
    /// Query heads per KV head.
    group: usize,
    d: usize,
    /// `d` rounded up to whole vectors: the row length of every f32 buffer (zero padded).
    d_pad: usize,
    /// `scale`, divided by the cap when soft-capping (as the reference does).
    scale: f32,
    softcap: f32,
    window: u32,
    causal: bool,
    block_keys: usize,
    block_queries: usize,
    n_qblocks: usize,
    /// The keys any query sees: `key_lo..key_hi`, cut into `splits` ranges of `split_keys`.
    key_lo: usize,
    key_hi: usize,
    splits: usize,
    split_keys: usize,
    /// Widen K/V blocks to f32 once per tile (rather than per row, in place).
    stage: bool,
    /// K or V is paged: blocks read in place (not staged) go through tables of row pointers.
    paged: bool,
}

impl<'a> Plan<'a> {
    fn new(a: &AttentionArgs<'a>, n_threads: usize) -> Self {
        let (n_q, n_head, n_kv, d) = (a.n_q, a.n_head, a.n_head_kv, a.head_dim);
        let group = n_head / n_kv;
        let d_pad = d.div_ceil(8) * 8;
        let block_keys = (BLOCK_FLOATS / d_pad / 8 * 8).clamp(8, MAX_BLOCK_KEYS);
        let target = if n_threads <= 1 {
            1
        } else {
            n_threads * TASKS_PER_THREAD
        };
        // As many queries per tile as make TILE_ROWS rows, fewer if that leaves threads idle.
        let max_queries = (TILE_ROWS / group)
            .min(TILE_FLOATS / (group * d_pad))
            .max(1);
        let block_queries = max_queries.min(n_q * n_kv / target).clamp(1, n_q);
        let n_qblocks = n_q.div_ceil(block_queries);

        let q_pos = a.q_pos.as_slice();
        let (mut key_lo, mut key_hi) = (usize::MAX, 0);
        for &p in q_pos {
            let (s, e) = visible_range(p as usize, a.kv_len, a.causal, a.window);
            if s < e {
                key_lo = key_lo.min(s);
                key_hi = key_hi.max(e);
            }
        }
        let key_lo = key_lo.min(key_hi);
        let span = key_hi - key_lo;
        let tiles = n_kv * n_qblocks;
        let splits = if tiles >= target {
            1
        } else {
            target.div_ceil(tiles).min(span / MIN_SPLIT_KEYS).max(1)
        };
        let split_keys = span.div_ceil(splits).div_ceil(8).max(1) * 8;
        let splits = span.div_ceil(split_keys).max(1);

        let scale = if a.softcap > 0.0 {
            a.scale / a.softcap
        } else {
            a.scale
        };
        Plan {
            q: a.q.as_slice(),
            q_stride: a.q_stride,
            q_pos,
            n_q,
            kv_len: a.kv_len,
            n_head,
            n_kv,
            group,
            d,
            d_pad,
            scale,
            softcap: a.softcap,
            window: a.window,
            causal: a.causal,
            block_keys,
            block_queries,
            n_qblocks,
            key_lo,
            key_hi,
            splits,
            split_keys,
            // In place, K and V are read as one element type.
            stage: block_queries * group > 2 || d % 8 != 0 || a.k.dtype != a.v.dtype,
            paged: a.k.block_tokens > 0 || a.v.block_tokens > 0,
        }
    }
}

/// Where tiles leave their rows.
enum Sink<'a> {
    /// Normalised, in the op's output (`stride` floats between queries).
    Out {
        out: DisjointSlice<'a, f32>,
        stride: usize,
    },
    /// Unnormalised output, running maximum and sum per (split, query, head), for [`merge`].
    Partial {
        o: DisjointSlice<'a, f32>,
        m: DisjointSlice<'a, f32>,
        l: DisjointSlice<'a, f32>,
    },
}

/// The partial results of all splits, read by [`merge`].
struct Partials<'a> {
    o: &'a [f32],
    m: &'a [f32],
    l: &'a [f32],
}

/// The rows of a tile: row `r` has `d_pad` floats of query and (unnormalised) output, a
/// running maximum and sum (`rows`, whose `scores` hold a block of scores for two rows), and
/// sees keys `ranges[r]`.
struct TileRows<'s> {
    rows: RowsState<'s>,
    ranges: &'s [(usize, usize)],
}

/// Every row of the tile that sees some of keys `j0..j1` takes its step against them (`keys`
/// and `vals`: the block's rows, of element type `elem`). Rows that see the same keys of the
/// block (the heads of one query always do) go in pairs, each K/V element loaded once for
/// both.
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_block<R: RowSource>(
    p: &Plan<'_>,
    t: &mut TileRows<'_>,
    j0: usize,
    j1: usize,
    keys: R,
    vals: R,
    elem: u8,
) {
    let (dp, n_rows) = (p.d_pad, t.ranges.len());
    let mut r = 0;
    while r < n_rows {
        let (s, e) = t.ranges[r];
        let (first, end) = (s.max(j0) - j0, e.min(j1).saturating_sub(j0));
        if first >= end {
            r += 1;
            continue;
        }
        let blk = Block {
            keys,
            vals,
            first,
            end,
        };
        let pair = r + 1 < n_rows && t.ranges[r + 1] == t.ranges[r];
        let n = if pair { 2 } else { 1 };
        let rows = t.rows.select(r, n, dp, p.block_keys);
        match (pair, elem) {
            (true, F16) => pair_block::<F16, R>(p, rows, blk),
            (true, _) => pair_block::<F32, R>(p, rows, blk),
            (false, F16) => row_block::<F16, R>(p, rows, blk),
            (false, _) => row_block::<F32, R>(p, rows, blk),
        }
        r += n;
    }
}

/// Computes one tile: queries of block `qb` × the heads of KV head `kv_head`, over the keys
/// of split `split`, and writes its rows to `sink`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
fn run_tile(
    _: Avx2,
    p: &Plan<'_>,
    k: Cache<'_>,
    v: Cache<'_>,
    kv_head: usize,
    qb: usize,
    split: usize,
    sink: &Sink<'_>,
) {
    let (g, d, dp, bk) = (p.group, p.d, p.d_pad, p.block_keys);
    let i0 = qb * p.block_queries;
    let i1 = (i0 + p.block_queries).min(p.n_q);
    let n_rows = (i1 - i0) * g;
    let split_lo = p.key_lo + split * p.split_keys;
    let split_hi = (split_lo + p.split_keys).min(p.key_hi);

    let staged = if p.stage { 2 * bk * dp } else { 0 };
    let mut scratch = vec![0f32; 2 * n_rows * dp + 2 * n_rows + 2 * bk + staged];
    let (q_rows, rest) = scratch.split_at_mut(n_rows * dp);
    let (o_rows, rest) = rest.split_at_mut(n_rows * dp);
    let (m, rest) = rest.split_at_mut(n_rows);
    let (l, rest) = rest.split_at_mut(n_rows);
    let (scores, rest) = rest.split_at_mut(2 * bk);
    let (k_buf, v_buf) = rest.split_at_mut(staged / 2);
    m.fill(f32::NEG_INFINITY);

    // Row r = (query i0 + r / g, head kv_head·g + r % g); its visible keys within this split.
    let mut ranges = Vec::with_capacity(n_rows);
    for i in i0..i1 {
        let (s, e) = visible_range(p.q_pos[i] as usize, p.kv_len, p.causal, p.window);
        let (s, e) = (s.max(split_lo), e.min(split_hi));
        for h in kv_head * g..(kv_head + 1) * g {
            ranges.push((s, e.max(s)));
            let r = ranges.len() - 1;
            q_rows[r * dp..][..d].copy_from_slice(&p.q[i * p.q_stride + h * d..][..d]);
        }
    }
    let lo = ranges.iter().filter(|r| r.0 < r.1).map(|r| r.0).min();
    let hi = ranges.iter().map(|r| r.1).max().unwrap_or(0);

    if let Some(lo) = lo {
        let mut tile = TileRows {
            rows: RowsState {
                q: q_rows,
                o: &mut *o_rows,
                m: &mut *m,
                l: &mut *l,
                scores,
            },
            ranges: &ranges,
        };
        // Row pointers of one block of a paged cache read in place (`RowTable`).
        let mut k_ptrs = [std::ptr::null(); MAX_BLOCK_KEYS];
        let mut v_ptrs = [std::ptr::null(); MAX_BLOCK_KEYS];
        for j0 in (lo..hi).step_by(bk) {
            let j1 = (j0 + bk).min(hi);
            if !ranges.iter().any(|&(s, e)| s < j1 && e > j0) {
                continue;
            }
            if p.paged && !p.stage {
                let keys = RowTable::gather(k.runs(kv_head, j0, j1), &mut k_ptrs);
                let vals = RowTable::gather(v.runs(kv_head, j0, j1), &mut v_ptrs);
                tile_block(p, &mut tile, j0, j1, keys, vals, k.elem);
                continue;
            }
            let (keys, vals, elem) = if p.stage {
                widen(&k, kv_head, j0, j1, k_buf);
                widen(&v, kv_head, j0, j1, v_buf);
                (
                    f32_rows(k_buf, j1 - j0, dp),
                    f32_rows(v_buf, j1 - j0, dp),
                    F32,
                )
            } else {
                (k.rows(kv_head, j0, j1), v.rows(kv_head, j0, j1), k.elem)
            };
            tile_block(p, &mut tile, j0, j1, keys, vals, elem);
        }
    }

    let head0 = kv_head * g;
    match sink {
        Sink::Out { out, stride } => {
            for i in i0..i1 {
                // SAFETY: this tile alone writes heads head0..head0+g of queries i0..i1 (tiles
                // differ in query block or KV head, and there is one split); query rows are
                // `stride ≥ n_head·d` apart and in bounds (check::attention).
                let dst = unsafe { out.range_mut(i * stride + head0 * d, g * d) };
                for (hh, dst) in dst.chunks_exact_mut(d).enumerate() {
                    let r = (i - i0) * g + hh;
                    let inv = if l[r] == 0.0 { 0.0 } else { 1.0 / l[r] };
                    for (y, x) in dst.iter_mut().zip(&o_rows[r * dp..][..d]) {
                        *y = x * inv;
                    }
                }
            }
        }
        Sink::Partial { o, m: pm, l: pl } => {
            for i in i0..i1 {
                let at = (split * p.n_q + i) * p.n_head + head0;
                // SAFETY: this tile alone writes split `split`'s entries of heads
                // head0..head0+g of queries i0..i1; the buffers hold splits·n_q·n_head rows.
                let (dst, dm, dl) = unsafe {
                    (
                        o.range_mut(at * d, g * d),
                        pm.range_mut(at, g),
                        pl.range_mut(at, g),
                    )
                };
                for hh in 0..g {
                    let r = (i - i0) * g + hh;
                    dst[hh * d..][..d].copy_from_slice(&o_rows[r * dp..][..d]);
                    dm[hh] = m[r];
                    dl[hh] = l[r];
                }
            }
        }
    }
}

/// Rows of `d_pad` floats of a widened buffer, as the byte rows the kernels read.
fn f32_rows(buf: &[f32], n: usize, d_pad: usize) -> Rows<'_> {
    // SAFETY: any initialised f32 is four initialised bytes, and u8 has no alignment.
    let data = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), buf.len() * 4) };
    Rows::new(data, d_pad * 4, n, d_pad * 4)
}

/// Keys `j0..j1` of `head` widened to f32 rows of `d_pad` floats (zero padded) in `buf`, one
/// run of rows (the whole block, or one page) at a time.
///
/// The only code reading the cache in tiles of more than two rows, so where a GQA decode step
/// waits for it to stream in from L3 or memory. Software prefetching (a block ahead, into L2)
/// measured 7% slower than leaving the strided rows to the hardware prefetcher.
#[target_feature(enable = "avx2,fma,f16c")]
fn widen(cache: &Cache<'_>, head: usize, j0: usize, j1: usize, buf: &mut [f32]) {
    let d_pad = (cache.row_bytes / elem_bytes(cache.elem)).div_ceil(8) * 8;
    let mut at = 0;
    for rows in cache.runs(head, j0, j1) {
        let dst = &mut buf[at * d_pad..];
        if cache.elem == F16 {
            widen_rows::<F16>(&rows, dst)
        } else {
            widen_rows::<F32>(&rows, dst)
        }
        at += rows.n;
    }
}

/// `rows` widened to the first `rows.n` rows of `buf`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn widen_rows<const E: u8>(rows: &Rows<'_>, buf: &mut [f32]) {
    let es = elem_bytes(E);
    let d = rows.row_bytes / es;
    let body = d / 8 * 8;
    let d_pad = d.div_ceil(8) * 8;
    for (jj, dst) in buf.chunks_exact_mut(d_pad).take(rows.n).enumerate() {
        let src = rows.ptr(jj);
        for c in (0..body).step_by(8) {
            // SAFETY: row jj < rows.n lies inside its buffer (`Rows::ptr`) and holds d ≥ c + 8
            // elements.
            let v = unsafe { load8_raw::<E>(src.add(c * es)) };
            store(dst, c, v);
        }
        if body < d {
            let mut tail = [0f32; 8];
            let bytes = &rows.row(jj)[body * es..];
            for (t, b) in tail.iter_mut().zip(bytes.chunks_exact(es)) {
                *t = if E == F16 {
                    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
                } else {
                    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
                };
            }
            dst[body..].copy_from_slice(&tail);
        }
    }
}

/// Eight floats at `ptr` widened from element type `E`.
///
/// # Safety
/// `ptr` must point at 8 readable elements of `E`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_raw<const E: u8>(ptr: *const u8) -> __m256 {
    // SAFETY: the caller's contract.
    unsafe {
        if E == F16 {
            _mm256_cvtph_ps(_mm_loadu_si128(ptr.cast()))
        } else {
            _mm256_loadu_ps(ptr.cast())
        }
    }
}

/// The keys a row sees in one block: `first..end` relative to the block's first key.
#[derive(Clone, Copy)]
struct Block<R> {
    keys: R,
    vals: R,
    first: usize,
    end: usize,
}

/// One or two consecutive rows of a tile with their online-softmax state: query rows, output
/// rows (unnormalised), running maxima and sums, and a block of scores per row.
struct RowsState<'s> {
    q: &'s [f32],
    o: &'s mut [f32],
    m: &'s mut [f32],
    l: &'s mut [f32],
    scores: &'s mut [f32],
}

impl RowsState<'_> {
    /// Rows `r..r + n` (rows of `dp` floats), with scores for `n` blocks of `block_keys`.
    fn select(&mut self, r: usize, n: usize, dp: usize, block_keys: usize) -> RowsState<'_> {
        RowsState {
            q: &self.q[r * dp..(r + n) * dp],
            o: &mut self.o[r * dp..(r + n) * dp],
            m: &mut self.m[r..r + n],
            l: &mut self.l[r..r + n],
            scores: &mut self.scores[..n * block_keys],
        }
    }
}

/// One row against one block of keys: scores, the online-softmax step, and the weighted
/// values added to the (rescaled) output row.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn row_block<const E: u8, R: RowSource>(p: &Plan<'_>, st: RowsState<'_>, blk: Block<R>) {
    let n_vecs = st.q.len() / 8;
    let (first, end) = (blk.first, blk.end);
    // Whole groups of eight keys covering first..end; keys outside are masked.
    let (g0, g1) = (first / 8 * 8, end.div_ceil(8) * 8);
    let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
    for g in (g0..g1).step_by(8) {
        let s = finish_scores(p, dot8::<E, R>(st.q, &blk.keys, g, n_vecs), g, first, end);
        store(st.scores, g, s);
        vmax = _mm256_max_ps(vmax, s);
    }
    let Some(alpha) = softmax_step(st.scores, g0, g1, hmax(vmax), &mut st.m[0], &mut st.l[0])
    else {
        return;
    };
    accumulate::<E, R>(st.o, alpha, &st.scores[first..end], &blk.vals, first);
}

/// Two rows that see the same keys against one block: [`row_block`] for both at once, each
/// key and value element loaded (and widened) once for the two rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pair_block<const E: u8, R: RowSource>(p: &Plan<'_>, st: RowsState<'_>, blk: Block<R>) {
    let d_pad = st.q.len() / 2;
    let n_vecs = d_pad / 8;
    let (q0, q1) = st.q.split_at(d_pad);
    let (s0, s1) = st.scores.split_at_mut(st.scores.len() / 2);
    let (first, end) = (blk.first, blk.end);
    let (g0, g1) = (first / 8 * 8, end.div_ceil(8) * 8);
    let (mut max0, mut max1) = (
        _mm256_set1_ps(f32::NEG_INFINITY),
        _mm256_set1_ps(f32::NEG_INFINITY),
    );
    for g in (g0..g1).step_by(8) {
        let (a, b) = dot8x2::<E, R>(q0, q1, &blk.keys, g, n_vecs);
        let (a, b) = (
            finish_scores(p, a, g, first, end),
            finish_scores(p, b, g, first, end),
        );
        store(s0, g, a);
        store(s1, g, b);
        max0 = _mm256_max_ps(max0, a);
        max1 = _mm256_max_ps(max1, b);
    }
    let (m0, m1) = st.m.split_at_mut(1);
    let (l0, l1) = st.l.split_at_mut(1);
    let alpha0 = softmax_step(s0, g0, g1, hmax(max0), &mut m0[0], &mut l0[0]);
    let alpha1 = softmax_step(s1, g0, g1, hmax(max1), &mut m1[0], &mut l1[0]);
    let (o0, o1) = st.o.split_at_mut(d_pad);
    let (w0, w1) = (&s0[first..end], &s1[first..end]);
    match (alpha0, alpha1) {
        (Some(a0), Some(a1)) => {
            let mut c = 0;
            while c < n_vecs {
                let n = (n_vecs - c).min(4);
                let (o0, o1) = (&mut o0[c * 8..(c + n) * 8], &mut o1[c * 8..(c + n) * 8]);
                let (a, w, v) = ((a0, a1), (w0, w1), &blk.vals);
                match n {
                    4 => weighted_sum2::<E, 4, R>(o0, o1, a, w, v, first, c),
                    3 => weighted_sum2::<E, 3, R>(o0, o1, a, w, v, first, c),
                    2 => weighted_sum2::<E, 2, R>(o0, o1, a, w, v, first, c),
                    _ => weighted_sum2::<E, 1, R>(o0, o1, a, w, v, first, c),
                }
                c += n;
            }
        }
        // A row whose scores are all -inf or NaN here (non-finite inputs) sits this block out.
        (Some(a0), None) => accumulate::<E, R>(o0, a0, w0, &blk.vals, first),
        (None, Some(a1)) => accumulate::<E, R>(o1, a1, w1, &blk.vals, first),
        (None, None) => {}
    }
}

/// Scores `scale · q·k` of keys `g..g + 8` (block-relative) from their dot products,
/// soft-capped, and -inf for the keys outside the row's `first..end`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn finish_scores(p: &Plan<'_>, dots: __m256, g: usize, first: usize, end: usize) -> __m256 {
    let mut s = _mm256_mul_ps(dots, _mm256_set1_ps(p.scale));
    if p.softcap > 0.0 {
        s = _mm256_mul_ps(_mm256_set1_ps(p.softcap), tanh8(s));
    }
    if g < first || g + 8 > end {
        let idx = _mm256_add_epi32(
            _mm256_set1_epi32(g as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        let seen = _mm256_and_si256(
            _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(first as i32 - 1)),
            _mm256_cmpgt_epi32(_mm256_set1_epi32(end as i32), idx),
        );
        let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
        s = _mm256_blendv_ps(neg_inf, s, _mm256_castsi256_ps(seen));
    }
    s
}

/// The online-softmax step of one row, given its block of scores `scores[g0..g1]` and their
/// maximum: the scores become weights `e^(s - m)` under the new running maximum `m`, the sum
/// `l` is rescaled and grows by them. Returns the factor that rescales the row's earlier
/// output, or `None` when no score here is finite (the row then keeps its state).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn softmax_step(
    scores: &mut [f32],
    g0: usize,
    g1: usize,
    block_max: f32,
    m: &mut f32,
    l: &mut f32,
) -> Option<f32> {
    let m_new = m.max(block_max);
    if m_new == f32::NEG_INFINITY || m_new.is_nan() {
        return None;
    }
    // e^(m - m_new): exactly 1 while the maximum stays, 0 on the row's first block (m = -inf,
    // where output and sum are still 0).
    let alpha = if m_new == *m {
        1.0
    } else {
        _mm256_cvtss_f32(exp8(_mm256_set1_ps(*m - m_new)))
    };
    let mv = _mm256_set1_ps(m_new);
    let mut sum = _mm256_setzero_ps();
    for g in (g0..g1).step_by(8) {
        let e = exp8(_mm256_sub_ps(load(scores, g), mv));
        store(scores, g, e);
        sum = _mm256_add_ps(sum, e);
    }
    *l = *l * alpha + hsum(sum);
    *m = m_new;
    Some(alpha)
}

/// `o = o · alpha + Σ_j weights[j] · v[first + j]` for one row, in register-sized column
/// chunks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn accumulate<const E: u8, R: RowSource>(
    o: &mut [f32],
    alpha: f32,
    weights: &[f32],
    vals: &R,
    first: usize,
) {
    let n_vecs = o.len() / 8;
    let mut c = 0;
    while c < n_vecs {
        let n = (n_vecs - c).min(8);
        let o = &mut o[c * 8..(c + n) * 8];
        match n {
            8 => weighted_sum::<E, 8, R>(o, alpha, weights, vals, first, c),
            7 => weighted_sum::<E, 7, R>(o, alpha, weights, vals, first, c),
            6 => weighted_sum::<E, 6, R>(o, alpha, weights, vals, first, c),
            5 => weighted_sum::<E, 5, R>(o, alpha, weights, vals, first, c),
            4 => weighted_sum::<E, 4, R>(o, alpha, weights, vals, first, c),
            3 => weighted_sum::<E, 3, R>(o, alpha, weights, vals, first, c),
            2 => weighted_sum::<E, 2, R>(o, alpha, weights, vals, first, c),
            _ => weighted_sum::<E, 1, R>(o, alpha, weights, vals, first, c),
        }
        c += n;
    }
}

/// `q · k_j` for the eight keys `g..g + 8` of the block, as the lanes of one vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot8<const E: u8, R: RowSource>(q: &[f32], keys: &R, g: usize, n_vecs: usize) -> __m256 {
    assert!(q.len() >= n_vecs * 8 && keys.row_bytes() >= n_vecs * 8 * elem_bytes(E));
    let rows: [*const u8; 8] = std::array::from_fn(|jj| keys.ptr(g + jj));
    let mut acc = [_mm256_setzero_ps(); 8];
    for c in 0..n_vecs {
        // SAFETY: c < n_vecs; q holds n_vecs·8 floats and every key row (inside its buffer,
        // `RowSource::ptr`) n_vecs·8 elements, as asserted above.
        unsafe {
            let qv = _mm256_loadu_ps(q.as_ptr().add(c * 8));
            for (a, row) in acc.iter_mut().zip(&rows) {
                let k = load8_raw::<E>(row.add(c * 8 * elem_bytes(E)));
                *a = _mm256_fmadd_ps(k, qv, *a);
            }
        }
    }
    hsum8x8(acc)
}

/// `(q0 · k_j, q1 · k_j)` for the eight keys `g..g + 8` of the block: four keys × two rows
/// per pass, each key vector feeding two FMAs.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot8x2<const E: u8, R: RowSource>(
    q0: &[f32],
    q1: &[f32],
    keys: &R,
    g: usize,
    n_vecs: usize,
) -> (__m256, __m256) {
    let n = n_vecs * 8;
    assert!(q0.len() >= n && q1.len() >= n && keys.row_bytes() >= n * elem_bytes(E));
    // [q0·k_g, .., q0·k_g+3, q1·k_g, .., q1·k_g+3]
    let four = |g: usize| {
        let rows: [*const u8; 4] = std::array::from_fn(|jj| keys.ptr(g + jj));
        let mut acc = [_mm256_setzero_ps(); 8];
        for c in 0..n_vecs {
            // SAFETY: c < n_vecs; both query rows hold n_vecs·8 floats and every key row
            // (inside its buffer, `RowSource::ptr`) as many, as asserted above.
            unsafe {
                let (a, b) = (
                    _mm256_loadu_ps(q0.as_ptr().add(c * 8)),
                    _mm256_loadu_ps(q1.as_ptr().add(c * 8)),
                );
                for (jj, row) in rows.iter().enumerate() {
                    let k = load8_raw::<E>(row.add(c * 8 * elem_bytes(E)));
                    acc[jj] = _mm256_fmadd_ps(k, a, acc[jj]);
                    acc[4 + jj] = _mm256_fmadd_ps(k, b, acc[4 + jj]);
                }
            }
        }
        hsum8x8(acc)
    };
    let (lo, hi) = (four(g), four(g + 4));
    (
        _mm256_permute2f128_ps::<0x20>(lo, hi),
        _mm256_permute2f128_ps::<0x31>(lo, hi),
    )
}

/// `[Σ a0, Σ a1, .., Σ a7]`: the eight horizontal sums, by a tree of pairwise adds.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum8x8(a: [__m256; 8]) -> __m256 {
    let t0 = _mm256_hadd_ps(a[0], a[1]);
    let t1 = _mm256_hadd_ps(a[2], a[3]);
    let t2 = _mm256_hadd_ps(a[4], a[5]);
    let t3 = _mm256_hadd_ps(a[6], a[7]);
    // Per 128-bit half: the partial sums of a0..a3 and of a4..a7.
    let u0 = _mm256_hadd_ps(t0, t1);
    let u1 = _mm256_hadd_ps(t2, t3);
    let lo = _mm256_permute2f128_ps::<0x20>(u0, u1);
    let hi = _mm256_permute2f128_ps::<0x31>(u0, u1);
    _mm256_add_ps(lo, hi)
}

/// `o = o · alpha + Σ_j weights[j] · v[first + j]` over the `NV` vectors of output columns
/// from vector `col`, the output held in registers across the keys.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn weighted_sum<const E: u8, const NV: usize, R: RowSource>(
    o: &mut [f32],
    alpha: f32,
    weights: &[f32],
    vals: &R,
    first: usize,
    col: usize,
) {
    let es = elem_bytes(E);
    assert!(vals.row_bytes() >= (col + NV) * 8 * es && first + weights.len() <= vals.len());
    let mut acc: [__m256; NV] = std::array::from_fn(|n| load(o, n * 8));
    if alpha != 1.0 {
        let a = _mm256_set1_ps(alpha);
        acc.iter_mut().for_each(|v| *v = _mm256_mul_ps(*v, a));
    }
    for (j, &w) in weights.iter().enumerate() {
        let row = vals.ptr(first + j).wrapping_add(col * 8 * es);
        let w = _mm256_set1_ps(w);
        for (n, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row first + j < vals.len() lies inside its buffer (`RowSource::ptr`) and
            // holds (col + NV)·8 elements (asserted above); this reads vector col + n < col + NV.
            let v = unsafe { load8_raw::<E>(row.add(n * 8 * es)) };
            *acc = _mm256_fmadd_ps(v, w, *acc);
        }
    }
    for (n, acc) in acc.into_iter().enumerate() {
        store(o, n * 8, acc);
    }
}

/// [`weighted_sum`] for two rows with the same keys: each value vector feeds both rows' FMAs.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn weighted_sum2<const E: u8, const NV: usize, R: RowSource>(
    o0: &mut [f32],
    o1: &mut [f32],
    alpha: (f32, f32),
    weights: (&[f32], &[f32]),
    vals: &R,
    first: usize,
    col: usize,
) {
    let (w0, w1) = weights;
    let es = elem_bytes(E);
    assert!(
        vals.row_bytes() >= (col + NV) * 8 * es
            && w0.len() == w1.len()
            && first + w0.len() <= vals.len()
    );
    let (a0, a1) = (_mm256_set1_ps(alpha.0), _mm256_set1_ps(alpha.1));
    let mut acc0: [__m256; NV] = std::array::from_fn(|n| _mm256_mul_ps(load(o0, n * 8), a0));
    let mut acc1: [__m256; NV] = std::array::from_fn(|n| _mm256_mul_ps(load(o1, n * 8), a1));
    for (j, (&x0, &x1)) in w0.iter().zip(w1).enumerate() {
        let row = vals.ptr(first + j).wrapping_add(col * 8 * es);
        let (x0, x1) = (_mm256_set1_ps(x0), _mm256_set1_ps(x1));
        for n in 0..NV {
            // SAFETY: row first + j < vals.len() lies inside its buffer (`RowSource::ptr`) and
            // holds (col + NV)·8 elements (asserted above); this reads vector col + n < col + NV.
            let v = unsafe { load8_raw::<E>(row.add(n * 8 * es)) };
            acc0[n] = _mm256_fmadd_ps(v, x0, acc0[n]);
            acc1[n] = _mm256_fmadd_ps(v, x1, acc1[n]);
        }
    }
    for n in 0..NV {
        store(o0, n * 8, acc0[n]);
        store(o1, n * 8, acc1[n]);
    }
}

/// Merges the splits' partial results of query `i` into its output row (`n_head · d`).
#[target_feature(enable = "avx2,fma,f16c")]
fn merge(_: Avx2, p: &Plan<'_>, parts: &Partials<'_>, i: usize, out: &mut [f32]) {
    let (n_head, d) = (p.n_head, p.d);
    for (h, out) in out.chunks_exact_mut(d).enumerate() {
        let at = |s: usize| (s * p.n_q + i) * n_head + h;
        let max = (0..p.splits)
            .map(|s| parts.m[at(s)])
            .fold(f32::NEG_INFINITY, f32::max);
        out.fill(0.0);
        if max == f32::NEG_INFINITY {
            continue;
        }
        let mut sum = 0f32;
        for s in 0..p.splits {
            let m = parts.m[at(s)];
            if m == f32::NEG_INFINITY {
                continue;
            }
            let w = (m - max).exp();
            sum += parts.l[at(s)] * w;
            for (y, x) in out.iter_mut().zip(&parts.o[at(s) * d..][..d]) {
                *y += x * w;
            }
        }
        let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
        out.iter_mut().for_each(|y| *y *= inv);
    }
}
