//! The legacy 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) against 8-bit activations
//! (Q8_0 or Q8_1, see `vec_dot_type`), in register tiles.
//!
//! Per block the math is llama.cpp's: an exact integer sum `Σ q·y` of the 32 products, scaled
//! by `d_w·d_x` in f32, plus `m_w·s_x` for the types with a minimum (Q4_1, Q5_1; `s_x` is the
//! activation block's `d·Σy`, stored in Q8_1).
//!
//! * **Weights as unsigned bytes.** `_mm256_maddubs_epi16` multiplies unsigned by signed
//!   bytes, so the 4- and 5-bit types are unpacked to their unsigned codes (0..=15, 0..=31).
//!   Q4_0 and Q5_0 mean `q − 8` and `q − 16`: instead of making the weights signed (and paying
//!   the `sign` trick on every weight×activation pair), the offset comes out as
//!   `Σ q·y − 8·Σy`, with `8·Σy` computed once per activation block for every weight row.
//!   Q8_0 weights are signed: `Σ w·y = Σ |w|·(y·sign w)`.
//! * **Register tiles.** A pass computes up to 4 weight rows × 8 activation rows or 8 × 4
//!   (prompts, by type: [`max_block`]) or 8 weight rows × 1 (decode): each unpacked weight
//!   block feeds every activation row and each activation block every weight row. Smaller
//!   passes cover the remainders.
//! * **Offset terms once per tile.** For Q4_0/Q5_0, `offset·Σy` of each activation block is
//!   computed once per tile ([`offset_sums`]), not once per pass over its weight rows.
//! * **Four rows per vector.** The 8-lane integer sums of four weight rows against one
//!   activation block are reduced into one vector ([`dot_rows`], two lanes per row), which is
//!   then converted, scaled and accumulated once, instead of once per row.
//! * **Scales in one conversion.** The f16 scales of a group's four weight blocks (with `m`
//!   for Q4_1/Q5_1) go through one `vcvtph2ps`, permuted to the rows' lanes; likewise the
//!   activation blocks' `d` (and `s`).
//! * **Prefetch for decode.** Decode reads each weight once, from memory; each pass prefetches
//!   the next pass's rows.
//!
//! `maddubs` sums pairs of products into i16 with saturation, and `sign` cannot negate −128:
//! a Q8_0 weight < 0 against an activation −128 would go wrong, as in ggml. Activations from
//! `quantize_activations` are −128 only in blocks whose `d` rounds to 0 in f16 (all |x| below
//! ~3.7e-37), which contribute 0 either way.

use std::arch::x86_64::*;

/// Elements per block.
const QK: usize = 32;

/// The weight types, as const-generic tags (target-feature functions cannot be trait
/// methods, and const dispatch inlines to straight-line code per type).
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;

/// Bytes of one weight block.
const fn weight_block_bytes(t: u8) -> usize {
    match t {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        _ => 34,
    }
}

/// Whether the type has a minimum `m` (and so pairs with Q8_1 activations, whose `s` it needs).
const fn has_min(t: u8) -> bool {
    t == Q4_1 || t == Q5_1
}

/// Bytes of one activation block: Q8_1 `{d, s, qs}` or Q8_0 `{d, qs}`.
const fn act_block_bytes(t: u8) -> usize {
    if has_min(t) {
        36
    } else {
        34
    }
}

/// The offset of the unsigned codes (value = code − offset), 0 for the types without one.
const fn code_offset(t: u8) -> i8 {
    match t {
        Q4_0 => 8,
        Q5_0 => 16,
        _ => 0,
    }
}

/// The register block of a pass, weight rows × activation rows, for `nc` activation rows in
/// all (timed with the `bench_legacy_tiles` test):
/// * decode (`nc == 1`): 8 × 1, ahead of 4 × 1;
/// * prompts: 4 × 8 for the types whose unpacking costs most per weight block (Q5_0, Q5_1)
///   or that need no offset term (Q4_1, Q8_0): each unpacked block feeds 8 activation rows
///   (8–15 % faster than 8 × 4); Q4_0 unpacks in 3 instructions and keeps 8 × 4, itself
///   ahead of 4 × 4, 8 × 3 and 8 × 2.
const fn max_block(t: u8, nc: usize) -> (usize, usize) {
    if nc == 1 {
        (8, 1)
    } else if t == Q4_0 {
        (8, 4)
    } else {
        (4, 8)
    }
}

/// `Σ u·s` over each group of 4 adjacent bytes (u unsigned, s signed), as 8 i32 lanes: one
/// row's integer block dot product. With [`dot_rows`] (four rows) it is the whole integer
/// step, so that a VNNI variant swaps these two: one `vpdpbusd` per row, then the i32
/// reduction of `dot_rows`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// 16 bytes of 4-bit codes as 32 bytes: element j is the low nibble of byte j, element
/// j + 16 the high nibble (the GGUF layout), so the low 128-bit lane takes the low nibbles
/// and the high lane the high ones.
///
/// # Safety
/// `p` must be valid for reading 16 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes; the load is unaligned.
    let bytes = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast())) };
    // One variable shift moves the high lane's nibbles down (bits that cross into a byte from
    // its neighbour are masked off), cheaper than a shift plus a lane insert.
    let shifted = _mm256_srlv_epi64(bytes, _mm256_setr_epi64x(0, 0, 4, 4));
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F))
}

/// The 5th bits of a Q5 block (`qh`, bit j for element j) as 32 bytes, 0x10 or 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_high_bits(qh: u32) -> __m256i {
    // Byte j of the result looks at byte j/8 of qh (`pshufb` works within 128-bit lanes, and
    // each lane holds all four bytes of the broadcast), then tests bit j%8.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(qh as i32),
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Unpacks weight block `block`: the unsigned codes (Q4/Q5), or the signed weights (Q8_0).
///
/// # Safety
/// `block` must be valid for reading one block of type `T`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weight_codes<const T: u8>(block: *const u8) -> __m256i {
    // SAFETY (all loads): the offsets and lengths below stay inside the block's layout
    // (ggml-common.h), which the caller guarantees readable.
    unsafe {
        match T {
            Q8_0 => _mm256_loadu_si256(block.add(2).cast()),
            Q4_0 | Q4_1 => nibbles(block.add(if T == Q4_0 { 2 } else { 4 })),
            _ => {
                let (qh, qs) = if T == Q5_0 { (2, 6) } else { (4, 8) };
                let qh = block.add(qh).cast::<u32>().read_unaligned();
                _mm256_or_si256(nibbles(block.add(qs)), q5_high_bits(u32::from_le(qh)))
            }
        }
    }
}

/// An activation block's quants, ready for [`dot_u8_i8`].
#[derive(Clone, Copy)]
struct ActCodes {
    y: __m256i,
    /// Q4_0/Q5_0 only: `offset·Σy` as [`dot_rows`] leaves it for every row, to subtract from
    /// the reduced sums of four rows (see [`offset_sums`]).
    offset_sums: __m256i,
}

/// Loads activation block `block` (Q8_0 or Q8_1, as type `T` needs); `offset_sums` is its
/// entry of [`offset_sums`] (0 for the types without an offset).
///
/// # Safety
/// `block` must be valid for reading one activation block for type `T`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn act_codes<const T: u8>(block: *const u8, offset_sums: i64) -> ActCodes {
    let qs = if has_min(T) { 4 } else { 2 };
    // SAFETY: qs[32] lies at the end of the block, which the caller guarantees readable.
    let y = unsafe { _mm256_loadu_si256(block.add(qs).cast()) };
    ActCodes {
        y,
        offset_sums: _mm256_set1_epi64x(offset_sums),
    }
}

/// For the types whose codes carry an offset (Q4_0, Q5_0; empty for the others), the offset
/// term `offset·Σy` of every activation block of rows `0..nc` (`nb` per row, row after row),
/// split the way [`dot_rows`] splits each row's sum over its two lanes: the low dword sums
/// the products of the block's even 4-byte groups, the high dword the odd ones. Subtracting
/// it lane by lane leaves each lane the exact partial sum of `(code − offset)·y`, whose
/// magnitude the float accumulation then sees, not the larger `code·y`.
///
/// Computed once per tile (an 8-lane reduction per block) instead of once per pass over the
/// tile's weight rows.
#[target_feature(enable = "avx2,fma,f16c")]
fn offset_sums<const T: u8>(nb: usize, x: &[u8], x_stride: usize, nc: usize) -> Vec<i64> {
    if code_offset(T) == 0 {
        return Vec::new();
    }
    let xb = act_block_bytes(T);
    let mut sums = Vec::with_capacity(nc * nb);
    for c in 0..nc {
        for block in x[c * x_stride..][..nb * xb].chunks_exact(xb) {
            // SAFETY: the block's 32 quants end it; the load is unaligned.
            let y = unsafe { _mm256_loadu_si256(block[xb - QK..].as_ptr().cast()) };
            // One dword per 4-byte group, then the even and odd dwords summed into 0 and 1.
            let d = dot_u8_i8(_mm256_set1_epi8(code_offset(T)), y);
            let h = _mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256::<1>(d));
            let q = _mm_add_epi32(h, _mm_unpackhi_epi64(h, h));
            sums.push(_mm_cvtsi128_si64(q));
        }
    }
    sums
}

/// The unsigned and signed operands of [`dot_u8_i8`] for weight codes `w` and activation
/// bytes `y`. Q8_0 weights are signed: `Σ w·y = Σ |w|·(y·sign w)`. Computing `|w|` per pair
/// rather than once per weight block keeps one register per weight row, not two.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn operands<const T: u8>(w: __m256i, y: __m256i) -> (__m256i, __m256i) {
    if T == Q8_0 {
        (_mm256_abs_epi8(w), _mm256_sign_epi8(y, w))
    } else {
        (w, y)
    }
}

/// Where [`dot_rows`] leaves the sum of row i: split over lanes `ROW_LANE[i]` and
/// `ROW_LANE[i] + 1`.
const ROW_LANE: [usize; 4] = [0, 4, 2, 6];

/// `Σ u[i]·s[i]` for four weight rows (u unsigned, s signed bytes), reduced into one vector
/// (layout [`ROW_LANE`]): one vector for four rows replaces converting, scaling and
/// accumulating each row's vector separately.
///
/// The reduction pairs 128-bit halves, then 64-bit pairs within halves (blends, one shuffle
/// and an add per level). Adjacent-lane pairs are avoided on purpose: LLVM turns those into
/// `phaddd`, which issues at one per two cycles on Zen 4. With codes ≤ 31 (`small`) every
/// 8-product sum stays within i16 (|31·128·8| < 2^15), so the rows are reduced before
/// widening: one `pmaddwd` for four rows instead of one per row ([`dot_u8_i8`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_rows(u: [__m256i; 4], s: [__m256i; 4], small: bool) -> __m256i {
    if small {
        let p: [__m256i; 4] = std::array::from_fn(|i| _mm256_maddubs_epi16(u[i], s[i]));
        let add = |a, b| _mm256_add_epi16(a, b);
        let q = reduce_pairs(
            reduce_halves(p[0], p[1], add),
            reduce_halves(p[2], p[3], add),
            add,
        );
        _mm256_madd_epi16(q, _mm256_set1_epi16(1))
    } else {
        let p: [__m256i; 4] = std::array::from_fn(|i| dot_u8_i8(u[i], s[i]));
        let add = |a, b| _mm256_add_epi32(a, b);
        reduce_pairs(
            reduce_halves(p[0], p[1], add),
            reduce_halves(p[2], p[3], add),
            add,
        )
    }
}

/// Row `a`'s two 128-bit halves summed into lanes 0..4, row `b`'s into lanes 4..8. The lanes
/// are 32-bit: one i32, or two i16 that travel together.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce_halves(a: __m256i, b: __m256i, add: impl Fn(__m256i, __m256i) -> __m256i) -> __m256i {
    let kept = _mm256_blend_epi32::<0b1111_0000>(a, b);
    add(kept, _mm256_permute2x128_si256::<0x21>(a, b))
}

/// Within each 128-bit half: lanes 0, 1 of `a` summed with its lanes 2, 3 into lanes 0, 1,
/// and the same for `b` into lanes 2, 3.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce_pairs(a: __m256i, b: __m256i, add: impl Fn(__m256i, __m256i) -> __m256i) -> __m256i {
    let kept = _mm256_blend_epi32::<0b1100_1100>(a, b);
    let moved = _mm256_blend_epi32::<0b0011_0011>(a, b);
    add(kept, _mm256_shuffle_epi32::<0b01_00_11_10>(moved))
}

/// The f16 scales of up to four blocks `p` as f32, one `vcvtph2ps` for all: `d` (byte 0) in
/// lane i, or when `paired` (Q4_1/Q5_1 weights, Q8_1 activations), `d` in lane 2i and the
/// next field (`m` or `s`, byte 2) in lane 2i + 1, both read as one dword. Lanes past the
/// blocks are 0.
///
/// # Safety
/// Every pointer must be valid for reading 2 bytes (4 when `paired`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales(p: &[*const u8], paired: bool) -> __m256 {
    debug_assert!(!p.is_empty() && p.len() <= 4);
    // SAFETY (all reads): the caller guarantees the fields readable; unaligned reads.
    let field = |i: usize| unsafe {
        if paired {
            i32::from_le(p[i].cast::<i32>().read_unaligned())
        } else {
            i32::from(u16::from_le(p[i].cast::<u16>().read_unaligned()))
        }
    };
    let n = p.len();
    let mut v = _mm_cvtsi32_si128(field(0));
    if paired {
        if n > 1 {
            v = _mm_insert_epi32::<1>(v, field(1));
        }
        if n > 2 {
            v = _mm_insert_epi32::<2>(v, field(2));
        }
        if n > 3 {
            v = _mm_insert_epi32::<3>(v, field(3));
        }
    } else {
        if n > 1 {
            v = _mm_insert_epi16::<1>(v, field(1));
        }
        if n > 2 {
            v = _mm_insert_epi16::<2>(v, field(2));
        }
        if n > 3 {
            v = _mm_insert_epi16::<3>(v, field(3));
        }
    }
    _mm256_cvtph_ps(v)
}

/// Lane `i` of `v` in all 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lane(v: __m256, i: usize) -> __m256 {
    _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(i as i32))
}

/// Adds block step `b` of one group of up to four weight rows (`wp`, pointers to their
/// blocks) against every activation block to the group's accumulators.
///
/// # Safety
/// Each pointer of `wp` must address a whole weight block of type `T`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_step<const T: u8, const C: usize>(
    wp: &[*const u8],
    acts: &[ActCodes; C],
    x_scales: [__m256; 2],
    acc: &mut [__m256; C],
) {
    let rows = wp.len();
    // SAFETY: every weight block starts with d (and Q4_1/Q5_1 blocks with d, m).
    let w_scales = unsafe { scales(wp, has_min(T)) };
    // In the ROW_LANE layout: row i's d in both of its lanes, its m in the first only.
    let (w_d, w_m) = if has_min(T) {
        let m = _mm256_permutevar8x32_ps(w_scales, _mm256_setr_epi32(1, 1, 5, 5, 3, 3, 7, 7));
        (
            _mm256_permutevar8x32_ps(w_scales, _mm256_setr_epi32(0, 0, 4, 4, 2, 2, 6, 6)),
            _mm256_blend_ps::<0b1010_1010>(m, _mm256_setzero_ps()),
        )
    } else {
        let d = _mm256_permutevar8x32_ps(w_scales, _mm256_setr_epi32(0, 0, 2, 2, 1, 1, 3, 3));
        (d, _mm256_setzero_ps())
    };
    // Activation c's d and s (Q8_1) lanes.
    let x_d = |c: usize| {
        lane(
            x_scales[c / 4],
            if has_min(T) { 2 * (c % 4) } else { c % 4 },
        )
    };
    let x_s = |c: usize| lane(x_scales[c / 4], 2 * (c % 4) + 1);
    // Missing rows of a short group have zero codes.
    let codes: [__m256i; 4] = std::array::from_fn(|i| {
        if i < rows {
            // SAFETY: the caller guarantees whole blocks.
            unsafe { weight_codes::<T>(wp[i]) }
        } else {
            _mm256_setzero_si256()
        }
    });
    if rows == 1 {
        // A lone row needs no reduction: its 8 partial sums take the scale broadcast.
        let w_d = _mm256_permutevar8x32_ps(w_d, _mm256_setzero_si256());
        for c in 0..C {
            let (u, y) = operands::<T>(codes[0], acts[c].y);
            let mut sum = dot_u8_i8(u, y);
            if code_offset(T) != 0 {
                // This rare path (a lone row) keeps its 8 lanes: the offset term per lane.
                sum = _mm256_sub_epi32(sum, dot_u8_i8(_mm256_set1_epi8(code_offset(T)), y));
            }
            let scale = _mm256_mul_ps(w_d, x_d(c));
            acc[c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sum), acc[c]);
            if has_min(T) {
                acc[c] = _mm256_fmadd_ps(w_m, x_s(c), acc[c]);
            }
        }
        return;
    }
    for c in 0..C {
        let ops: [(__m256i, __m256i); 4] =
            std::array::from_fn(|i| operands::<T>(codes[i], acts[c].y));
        let mut sums = dot_rows(ops.map(|o| o.0), ops.map(|o| o.1), T != Q8_0);
        if code_offset(T) != 0 {
            sums = _mm256_sub_epi32(sums, acts[c].offset_sums);
        }
        let scale = _mm256_mul_ps(w_d, x_d(c));
        acc[c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums), acc[c]);
        if has_min(T) {
            acc[c] = _mm256_fmadd_ps(w_m, x_s(c), acc[c]);
        }
    }
}

/// Writes a group's results from its accumulators (layout [`ROW_LANE`]; all 8 lanes for a
/// group of one row).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store_group<const C: usize>(acc: &[__m256; C], rows: usize, out: &mut [f32], out_stride: usize) {
    for (c, &v) in acc.iter().enumerate() {
        if rows == 4 {
            // Each row's two lanes summed into the first, then those four lanes in row order.
            let sums = _mm256_add_ps(v, _mm256_movehdup_ps(v));
            let idx = _mm256_setr_epi32(
                ROW_LANE[0] as i32,
                ROW_LANE[1] as i32,
                ROW_LANE[2] as i32,
                ROW_LANE[3] as i32,
                0,
                0,
                0,
                0,
            );
            let rows = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(sums, idx));
            let out = &mut out[c * out_stride..][..4];
            // SAFETY: `out` holds the 4 floats written; the store is unaligned.
            unsafe { _mm_storeu_ps(out.as_mut_ptr(), rows) };
            continue;
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds the 8 floats written.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        let out = &mut out[c * out_stride..][..rows];
        if rows == 1 {
            out[0] = lanes.iter().sum();
        } else {
            for (o, &l) in out.iter_mut().zip(&ROW_LANE) {
                *o = lanes[l] + lanes[l + 1];
            }
        }
    }
}

/// One pass: weight rows `w` × activation rows `x` (each row exactly `nb` blocks); writes
/// `out[c * out_stride + r]`. The rows go in groups of four (one [`dot_rows`] each);
/// `ahead` (when not 0) is the distance in bytes from each row to a row to prefetch;
/// `offsets[c]` holds activation row c's [`offset_sums`] (empty for types without offset).
// `b` indexes blocks of several rows and their offset terms at once.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pass<const T: u8, const R: usize, const C: usize>(
    nb: usize,
    w: [&[u8]; R],
    ahead: usize,
    x: [&[u8]; C],
    offsets: [&[i64]; C],
    out: &mut [f32],
    out_stride: usize,
) {
    const { assert!(R >= 1 && R <= 8 && C >= 1 && C <= 8) };
    let wb = weight_block_bytes(T);
    let xb = act_block_bytes(T);
    assert!(w.iter().all(|row| row.len() == nb * wb));
    assert!(x.iter().all(|row| row.len() == nb * xb));
    let with_offset = code_offset(T) != 0;
    assert!(offsets
        .iter()
        .all(|o| o.len() == if with_offset { nb } else { 0 }));
    // Two named groups rather than a loop over them: LLVM would not unroll that loop (its body
    // is large) and would keep the accumulators in memory.
    let mut acc0 = [_mm256_setzero_ps(); C];
    let mut acc1 = [_mm256_setzero_ps(); C];
    for b in 0..nb {
        // SAFETY: b < nb and every row holds exactly nb blocks (asserted), so each pointer
        // addresses one whole block inside its slice.
        let wp: [*const u8; R] = std::array::from_fn(|r| unsafe { w[r].as_ptr().add(b * wb) });
        // SAFETY: as above, for the activation rows.
        let xp: [*const u8; C] = std::array::from_fn(|c| unsafe { x[c].as_ptr().add(b * xb) });
        if ahead != 0 {
            for row in w {
                // A prefetch is only a hint: it reads nothing and never faults.
                _mm_prefetch::<_MM_HINT_T1>(row.as_ptr().wrapping_add(ahead + b * wb).cast());
            }
        }
        // SAFETY: each pointer addresses a whole activation block.
        let acts: [ActCodes; C] = std::array::from_fn(|c| unsafe {
            act_codes::<T>(xp[c], if with_offset { offsets[c][b] } else { 0 })
        });
        // SAFETY: every activation block starts with d (Q8_1: d, s).
        let x_scales = unsafe {
            [
                scales(&xp[..C.min(4)], has_min(T)),
                if C > 4 {
                    scales(&xp[4..], has_min(T))
                } else {
                    _mm256_setzero_ps()
                },
            ]
        };
        let (lo, hi) = wp.split_at(R.min(4));
        // SAFETY: the pointers address whole weight blocks.
        unsafe { group_step::<T, C>(lo, &acts, x_scales, &mut acc0) };
        if R > 4 {
            // SAFETY: as above.
            unsafe { group_step::<T, C>(hi, &acts, x_scales, &mut acc1) };
        }
    }
    store_group(&acc0, R.min(4), out, out_stride);
    if R > 4 {
        store_group(&acc1, R - 4, &mut out[4..], out_stride);
    }
}

/// Weight rows `r0..r0+R` × activation rows `c0..c0+C` of the tile.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pass_at<const T: u8, const R: usize, const C: usize>(
    nb: usize,
    w: &[u8],
    w_stride: usize,
    r0: usize,
    nr: usize,
    x: &[u8],
    x_stride: usize,
    c0: usize,
    offsets: &[i64],
    out: &mut [f32],
    out_stride: usize,
) {
    let wb = nb * weight_block_bytes(T);
    let xb = nb * act_block_bytes(T);
    // Loops rather than `array::from_fn`: its closures would not be inlined into this
    // target-feature function, and these run once per pass.
    let mut w_rows: [&[u8]; R] = [&[]; R];
    for (r, row) in w_rows.iter_mut().enumerate() {
        *row = &w[(r0 + r) * w_stride..][..wb];
    }
    // Decode streams the weights from memory once: while a pass reads its rows, it prefetches
    // the same blocks of the next pass's rows (into L2), whose starts the hardware prefetchers
    // would only find after a few misses. One distance for all rows keeps one register.
    let ahead = if C == 1 && r0 + 2 * R <= nr {
        R * w_stride
    } else {
        0
    };
    let mut x_rows: [&[u8]; C] = [&[]; C];
    let mut row_offsets: [&[i64]; C] = [&[]; C];
    for c in 0..C {
        x_rows[c] = &x[(c0 + c) * x_stride..][..xb];
        if !offsets.is_empty() {
            row_offsets[c] = &offsets[(c0 + c) * nb..][..nb];
        }
    }
    pass::<T, R, C>(
        nb,
        w_rows,
        ahead,
        x_rows,
        row_offsets,
        &mut out[c0 * out_stride + r0..],
        out_stride,
    );
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<const T: u8>(
    k: usize,
    w: &[u8],
    w_stride: usize,
    nr: usize,
    x: &[u8],
    x_stride: usize,
    nc: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    assert!(
        k.is_multiple_of(QK),
        "k = {k} is not a whole number of blocks"
    );
    let nb = k / QK;
    let offsets = offset_sums::<T>(nb, x, x_stride, nc);
    let (max_r, max_c) = max_block(T, nc);
    let mut c0 = 0;
    while c0 < nc {
        let cn = max_c.min(nc - c0);
        let mut r0 = 0;
        while r0 < nr {
            // 5 to 7 rows go as 4 + the rest: fewer shapes to compile.
            let rn = match nr - r0 {
                n if n >= max_r => max_r,
                n if n >= 4 => 4,
                n => n,
            };
            macro_rules! call {
                ($r:literal, $c:literal) => {
                    pass_at::<T, $r, $c>(
                        nb, w, w_stride, r0, nr, x, x_stride, c0, &offsets, out, out_stride,
                    )
                };
            }
            macro_rules! by_cols {
                (8) => {
                    match cn {
                        1 => call!(8, 1),
                        2 => call!(8, 2),
                        3 => call!(8, 3),
                        4 => call!(8, 4),
                        _ => unreachable!(),
                    }
                };
                ($r:literal) => {
                    match cn {
                        1 => call!($r, 1),
                        2 => call!($r, 2),
                        3 => call!($r, 3),
                        4 => call!($r, 4),
                        5 => call!($r, 5),
                        6 => call!($r, 6),
                        7 => call!($r, 7),
                        8 => call!($r, 8),
                        _ => unreachable!(),
                    }
                };
            }
            match rn {
                1 => by_cols!(1),
                2 => by_cols!(2),
                3 => by_cols!(3),
                4 => by_cols!(4),
                8 => by_cols!(8),
                _ => unreachable!(),
            }
            r0 += rn;
        }
        c0 += cn;
    }
}

tile_fns! {
    tile_q4_0: Q4_0;
    tile_q4_1: Q4_1;
    tile_q5_0: Q5_0;
    tile_q5_1: Q5_1;
    tile_q8_0: Q8_0;
}
