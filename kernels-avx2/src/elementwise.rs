//! Element-wise ops (softmax, activations, add/mul with row broadcast, gated units) and the
//! vector math they share with attention: `exp`, `tanh`, SiLU and ggml's table GELU on eight
//! lanes.
//!
//! Results follow `kernels_reference::elementwise`: `Scale`, `Add` and `Mul` are bit-exact,
//! GELU is bit-exact (the same f16 table), and the functions built on `exp`/`tanh` differ from
//! libm's by a couple of ulp. Ops small enough to be decode-sized run on the calling thread;
//! bigger ones are cut into chunks for the pool.

use crate::{cpu::Avx2, disjoint::DisjointSlice};
use half::f16;
use kernels_reference::{check, elementwise::gelu_exact};
use plugin_api::{
    parallel_for, BinaryArgs, BinaryOp, GluArgs, GluKind, PoolRef, SoftmaxArgs, UnaryArgs, UnaryOp,
};
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Below this many elements an op runs on the calling thread: waking the pool costs more than
/// the few microseconds the work takes.
pub(crate) const PARALLEL_MIN: usize = 1 << 16;
/// Elements per pool task once an op is split.
const TASK_ELEMS: usize = 1 << 14;

/// `e^x` on eight lanes: ggml's `ggml_v_expf` (Cody-Waite reduction by ln 2, a degree-5
/// polynomial, and a scaled path for results near overflow or underflow), within ~1.5 ulp of
/// the correctly rounded value. `-inf` gives 0, overflow gives `inf`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn exp8(x: __m256) -> __m256 {
    let c = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
    // 0x1.8p23: adding it rounds to an integer in the low mantissa bits.
    let r = c(0x4b40_0000);
    // log2(e), then ln 2 split in a high part (exact products) and a low part.
    let z = _mm256_fmadd_ps(x, c(0x3fb8_aa3b), r);
    let n = _mm256_sub_ps(z, r);
    let b = _mm256_fnmadd_ps(n, c(0x35bf_be8e), _mm256_fnmadd_ps(n, c(0x3f31_7200), x));
    let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
    let k = _mm256_castsi256_ps(_mm256_add_epi32(
        e,
        _mm256_castps_si256(_mm256_set1_ps(1.0)),
    ));
    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    let big = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(126.0));
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
            u,
            _mm256_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
        ),
        u,
        _mm256_mul_ps(c(0x3f7f_fff6), b),
    );
    if _mm256_movemask_ps(big) == 0 {
        return _mm256_fmadd_ps(j, k, k);
    }
    // 2^n does not fit an f32 exponent: build it as a product of two powers of two.
    let g = _mm256_and_si256(
        _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
        _mm256_set1_epi32(0x8200_0000u32 as i32),
    );
    let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
    let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    let huge = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
    _mm256_or_ps(
        _mm256_and_ps(huge, _mm256_mul_ps(s1, s1)),
        _mm256_andnot_ps(
            huge,
            _mm256_or_ps(
                _mm256_and_ps(big, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                _mm256_andnot_ps(big, _mm256_fmadd_ps(k, j, k)),
            ),
        ),
    )
}

/// `tanh(x)` on eight lanes, as Cephes' `tanhf`: an odd polynomial below 0.625, where
/// `1 - 2 / (e^2x + 1)` would lose the small result to cancellation, that formula above.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn tanh8(x: __m256) -> __m256 {
    let sign = _mm256_set1_ps(-0.0);
    let ax = _mm256_andnot_ps(sign, x);
    let z = _mm256_mul_ps(x, x);
    let mut p = _mm256_set1_ps(-5.704_988_7e-3);
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.063_909e-2));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.373_971_6e-2));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.333_144_2e-1));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.333_328e-1));
    let small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
    let one = _mm256_set1_ps(1.0);
    let e = exp8(_mm256_add_ps(ax, ax));
    let large = _mm256_sub_ps(
        one,
        _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(e, one)),
    );
    let large = _mm256_or_ps(large, _mm256_and_ps(sign, x));
    let use_small = _mm256_cmp_ps::<_CMP_LT_OQ>(ax, _mm256_set1_ps(0.625));
    _mm256_blendv_ps(large, small, use_small)
}

/// `x · sigmoid(x) = x / (1 + e^-x)`, as `ggml_silu_f32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn silu8(x: __m256) -> __m256 {
    let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
    _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e))
}

/// ggml's GELU table: entry `i` is the f16 GELU of the f16 with bits `i`, computed with the
/// reference's own `gelu_exact`, so the look-up is bit-exact with `elementwise::gelu`. One
/// entry more than the 65536 f16 values: the gather reads 4 bytes at each 2-byte entry.
fn gelu_table() -> &'static [u16] {
    static TABLE: OnceLock<Box<[u16]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu_exact(f16::from_bits(bits).to_f32())).to_bits())
            .chain([0])
            .collect()
    })
}

/// GELU as ggml's CPU backend computes it (`elementwise::gelu`): 0 below -10, the identity
/// above 10, in between the table entry at `x` rounded to f16. `table` is [`gelu_table`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn gelu8(x: __m256, table: &[u16]) -> __m256 {
    assert!(table.len() > usize::from(u16::MAX) + 1);
    let idx = _mm256_cvtepu16_epi32(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x));
    // SAFETY: every index is a u16, so the 4 bytes read at `table + 2·idx` end at most at
    // byte 2·65535 + 4, inside the 65537 entries asserted above.
    let raw = unsafe { _mm256_i32gather_epi32::<2>(table.as_ptr().cast(), idx) };
    let entries = _mm256_and_si256(raw, _mm256_set1_epi32(0xffff));
    // Narrow the eight 32-bit lanes to eight u16 in the low half (packus works per 128-bit
    // lane, so gather its lanes 0 and 2).
    let packed = _mm256_permute4x64_epi64::<0b00_00_10_00>(_mm256_packus_epi32(entries, entries));
    let y = _mm256_cvtph_ps(_mm256_castsi256_si128(packed));
    let low = _mm256_cmp_ps::<_CMP_LE_OQ>(x, _mm256_set1_ps(-10.0));
    let high = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(10.0));
    let y = _mm256_andnot_ps(low, y);
    _mm256_blendv_ps(y, x, high)
}

/// Eight floats from `x[i..i + 8]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn load(x: &[f32], i: usize) -> __m256 {
    let v = &x[i..i + 8];
    // SAFETY: `v` holds the 8 floats read (bounds-checked slice); unaligned load.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

/// Stores eight floats to `x[i..i + 8]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn store(x: &mut [f32], i: usize, v: __m256) {
    let out = &mut x[i..i + 8];
    // SAFETY: `out` holds the 8 floats written (bounds-checked slice); unaligned store.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) }
}

/// The up to 7 trailing elements of `x` from `i`, padded with `fill` to a vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn load_tail(x: &[f32], i: usize, fill: f32) -> __m256 {
    let mut buf = [fill; 8];
    buf[..x.len() - i].copy_from_slice(&x[i..]);
    load(&buf, 0)
}

/// Stores the first `x.len() - i` lanes of `v` to the tail of `x` from `i`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn store_tail(x: &mut [f32], i: usize, v: __m256) {
    let mut buf = [0f32; 8];
    store(&mut buf, 0, v);
    let n = x.len() - i;
    x[i..].copy_from_slice(&buf[..n]);
}

/// `x = f(x)` over a slice, eight lanes at a time (the tail padded with zeros).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn map_in_place(x: &mut [f32], f: impl Fn(__m256) -> __m256) {
    let body = x.len() / 8 * 8;
    for i in (0..body).step_by(8) {
        store(x, i, f(load(x, i)));
    }
    if body < x.len() {
        store_tail(x, body, f(load_tail(x, body, 0.0)));
    }
}

/// `x = f(x, y)` over two slices of equal length.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn zip_in_place(x: &mut [f32], y: &[f32], f: impl Fn(__m256, __m256) -> __m256) {
    assert_eq!(x.len(), y.len());
    let body = x.len() / 8 * 8;
    for i in (0..body).step_by(8) {
        store(x, i, f(load(x, i), load(y, i)));
    }
    if body < x.len() {
        store_tail(x, body, f(load_tail(x, body, 0.0), load_tail(y, body, 0.0)));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn unary_chunk(_: Avx2, op: UnaryOp, x: &mut [f32], param: f32) {
    match op {
        UnaryOp::Silu => map_in_place(x, |v| silu8(v)),
        UnaryOp::Gelu => {
            let table = gelu_table();
            map_in_place(x, |v| gelu8(v, table))
        }
        UnaryOp::Scale => {
            let p = _mm256_set1_ps(param);
            map_in_place(x, |v| _mm256_mul_ps(v, p))
        }
        UnaryOp::Softcap => {
            // A division, not a multiplication by the reciprocal: the reference's rounding.
            let p = _mm256_set1_ps(param);
            map_in_place(x, |v| _mm256_mul_ps(tanh8(_mm256_div_ps(v, p)), p))
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn glu_chunk(_: Avx2, kind: GluKind, gate: &mut [f32], up: &[f32]) {
    match kind {
        GluKind::Silu => zip_in_place(gate, up, |g, u| _mm256_mul_ps(silu8(g), u)),
        GluKind::Gelu => {
            let table = gelu_table();
            zip_in_place(gate, up, |g, u| _mm256_mul_ps(gelu8(g, table), u))
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn binary_row(_: Avx2, op: BinaryOp, a: &mut [f32], b: &[f32]) {
    match op {
        BinaryOp::Add => zip_in_place(a, b, |x, y| _mm256_add_ps(x, y)),
        BinaryOp::Mul => zip_in_place(a, b, |x, y| _mm256_mul_ps(x, y)),
    }
}

/// Softmax of one row in place, after multiplying by `scale`, as `softmax_row` of the
/// reference: the exponentials summed in f64, then scaled by the f32 reciprocal of the sum.
#[target_feature(enable = "avx2,fma,f16c")]
fn softmax_row(_: Avx2, x: &mut [f32], scale: f32) {
    let body = x.len() / 8 * 8;
    let tail = body < x.len();
    let s = _mm256_set1_ps(scale);
    let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut max = neg_inf;
    for i in (0..body).step_by(8) {
        let v = _mm256_mul_ps(load(x, i), s);
        store(x, i, v);
        max = _mm256_max_ps(max, v);
    }
    if tail {
        // Padding with -inf leaves the maximum alone and adds e^-inf = 0 to the sum.
        let v = _mm256_mul_ps(load_tail(x, body, f32::NEG_INFINITY), s);
        store_tail(x, body, v);
        max = _mm256_max_ps(max, v);
    }
    let max = _mm256_set1_ps(hmax(max));
    let (mut sum_lo, mut sum_hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let mut add = |e: __m256| {
        sum_lo = _mm256_add_pd(sum_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        sum_hi = _mm256_add_pd(sum_hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(e)));
    };
    for i in (0..body).step_by(8) {
        let e = exp8(_mm256_sub_ps(load(x, i), max));
        store(x, i, e);
        add(e);
    }
    if tail {
        let e = exp8(_mm256_sub_ps(load_tail(x, body, f32::NEG_INFINITY), max));
        store_tail(x, body, e);
        add(e);
    }
    let mut lanes = [0f64; 4];
    // SAFETY: `lanes` holds the 4 doubles stored.
    unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(sum_lo, sum_hi)) };
    let inv = _mm256_set1_ps((1.0 / lanes.iter().sum::<f64>()) as f32);
    map_in_place(x, |v| _mm256_mul_ps(v, inv));
}

/// The largest of eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

/// The sum of eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Runs `f(start, len)` over `0..n` cut into pieces of `piece` (a multiple of `align`, so
/// that pieces cut at row boundaries), on the calling thread when `n` is small.
pub(crate) fn for_chunks(
    pool: &PoolRef<'_>,
    n: usize,
    align: usize,
    f: impl Fn(usize, usize) + Sync,
) -> Result<(), String> {
    let align = align.max(1);
    if n < PARALLEL_MIN || pool.n_threads() <= 1 {
        f(0, n);
        return Ok(());
    }
    let piece = TASK_ELEMS.div_ceil(align) * align;
    parallel_for(pool, n.div_ceil(piece), |task, _| {
        let start = task * piece;
        f(start, piece.min(n - start));
    })
}

pub fn softmax_op(mut a: SoftmaxArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
    check::softmax(&a)?;
    let cpu = Avx2::get()?;
    let (rows, cols, scale) = (a.rows, a.cols, a.scale);
    if cols == 0 {
        return Ok(());
    }
    let x = DisjointSlice::new(&mut a.x.as_mut_slice()[..rows * cols]);
    for_chunks(pool, rows * cols, cols, |start, len| {
        // SAFETY: `for_chunks` hands out non-overlapping `start..start + len` ranges.
        let x = unsafe { x.range_mut(start, len) };
        for row in x.chunks_exact_mut(cols) {
            // SAFETY: cpu proves avx2+fma+f16c.
            unsafe { softmax_row(cpu, row, scale) };
        }
    })
}

pub fn unary_op(mut a: UnaryArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
    let (op, param) = (a.op, a.param);
    if op == UnaryOp::Softcap && param <= 0.0 {
        return Err(format!("soft-cap must be positive, got {param}"));
    }
    let cpu = Avx2::get()?;
    let x = a.x.as_mut_slice();
    let n = x.len();
    let x = DisjointSlice::new(x);
    for_chunks(pool, n, 8, |start, len| {
        // SAFETY: `for_chunks` hands out non-overlapping `start..start + len` ranges.
        let x = unsafe { x.range_mut(start, len) };
        // SAFETY: cpu proves avx2+fma+f16c.
        unsafe { unary_chunk(cpu, op, x, param) };
    })
}

pub fn binary_op(mut a: BinaryArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
    check::binary(&a)?;
    let cpu = Avx2::get()?;
    let (op, rows, cols) = (a.op, a.rows, a.cols);
    let n = rows * cols;
    if n == 0 {
        return Ok(());
    }
    let b = a.b.as_slice();
    let broadcast = b.len() == cols;
    let x = DisjointSlice::new(&mut a.a.as_mut_slice()[..n]);
    for_chunks(pool, n, cols, |start, len| {
        // SAFETY: `for_chunks` hands out non-overlapping `start..start + len` ranges.
        let x = unsafe { x.range_mut(start, len) };
        if broadcast {
            for row in x.chunks_exact_mut(cols) {
                // SAFETY: cpu proves avx2+fma+f16c.
                unsafe { binary_row(cpu, op, row, b) };
            }
        } else {
            // SAFETY: cpu proves avx2+fma+f16c.
            unsafe { binary_row(cpu, op, x, &b[start..start + len]) };
        }
    })
}

pub fn glu_op(mut a: GluArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
    check::glu(&a)?;
    let cpu = Avx2::get()?;
    let kind = a.kind;
    let up = a.up.as_slice();
    let gate = a.gate.as_mut_slice();
    let n = gate.len();
    let gate = DisjointSlice::new(gate);
    for_chunks(pool, n, 8, |start, len| {
        // SAFETY: `for_chunks` hands out non-overlapping `start..start + len` ranges.
        let g = unsafe { gate.range_mut(start, len) };
        // SAFETY: cpu proves avx2+fma+f16c.
        unsafe { glu_chunk(cpu, kind, g, &up[start..start + len]) };
    })
}
