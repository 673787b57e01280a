//! Proof that the CPU can run this plugin's instructions.
//!
//! Every SIMD function of this crate is a `#[target_feature(enable = "avx2,fma,f16c")]`
//! function; calling one is only sound on a CPU that has those features. The safe entry points
//! take an [`Avx2`] token, which can only be made by [`Avx2::detect`], so holding one *is* the
//! proof, and each `unsafe` call site cites it.

/// Zero-sized proof that AVX2, FMA and F16C are available on this CPU.
#[derive(Debug, Clone, Copy)]
pub struct Avx2(());

impl Avx2 {
    /// `Some` when the CPU (and the OS, via XCR0) supports AVX2, FMA and F16C.
    #[inline]
    pub fn detect() -> Option<Avx2> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Some(Avx2(()));
            }
        }
        None
    }

    /// The token for code that runs only behind an op entry point, which has already checked
    /// (the host never opens this plugin on a CPU without the features, and every op entry
    /// point re-checks): an error instead of undefined behaviour if that ever changes.
    pub fn get() -> Result<Avx2, String> {
        Avx2::detect().ok_or_else(|| {
            "kernels-avx2 needs avx2, fma and f16c, which this CPU lacks: select another \
             kernel plugin"
                .to_string()
        })
    }
}
