//! What the K-quant kernels (`kquants`, `kdecode`, `x8`) share: the Q8_K activation block
//! layout and bounds-checked vector loads from byte slices.

use std::arch::x86_64::*;

/// Bytes of a Q8_K block: `d: f32`, `qs: [i8; 256]`, `bsums: [i16; 16]`.
pub(super) const Q8K_BYTES: usize = 292;
/// Offset of `qs` in a Q8_K block.
pub(super) const Q8K_QS: usize = 4;
/// Offset of `bsums` (the 16-element sums) in a Q8_K block.
pub(super) const Q8K_BSUMS: usize = 260;

/// 32 bytes at `bytes[off..]` as a vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load32(bytes: &[u8], off: usize) -> __m256i {
    let v = &bytes[off..][..32];
    // SAFETY: `v` is a bounds-checked 32-byte slice; the load is unaligned.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}

/// 16 bytes at `bytes[off..]` as a vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load16(bytes: &[u8], off: usize) -> __m128i {
    let v = &bytes[off..][..16];
    // SAFETY: `v` is a bounds-checked 16-byte slice; the load is unaligned.
    unsafe { _mm_loadu_si128(v.as_ptr().cast()) }
}
