//! The CPU the tests run on, for scoring and gatekeeping.

use plugin_api::{CpuFeatures, CpuInfo, Isa};

/// This machine's CPU, with the features std can detect. A feature std cannot detect counts
/// as absent, which only makes the host more careful.
pub fn detected() -> CpuInfo {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    CpuInfo {
        isa: Isa::current(),
        features: detected_features(),
        model_name: "".into(),
        logical_cpus: logical,
        physical_cores: logical,
        numa_nodes: 1,
        l1d_bytes: 0,
        l2_bytes: 0,
        l3_bytes: 0,
    }
}

#[cfg(target_arch = "x86_64")]
fn detected_features() -> CpuFeatures {
    let mut f = CpuFeatures::EMPTY;
    macro_rules! detect {
        ($($name:tt => $flag:ident),* $(,)?) => {
            $(if std::arch::is_x86_feature_detected!($name) {
                f.insert(CpuFeatures::$flag);
            })*
        };
    }
    detect! {
        "sse4.2" => SSE42,
        "avx" => AVX,
        "avx2" => AVX2,
        "fma" => FMA,
        "f16c" => F16C,
        "avx512f" => AVX512F,
        "avx512bw" => AVX512BW,
        "avx512vl" => AVX512VL,
        "avx512dq" => AVX512DQ,
        "avx512cd" => AVX512CD,
        "avx512vnni" => AVX512VNNI,
        "avx512bf16" => AVX512BF16,
        "avxvnni" => AVXVNNI,
    }
    f
}

#[cfg(target_arch = "aarch64")]
fn detected_features() -> CpuFeatures {
    let mut f = CpuFeatures::NEON;
    macro_rules! detect {
        ($($name:tt => $flag:ident),* $(,)?) => {
            $(if std::arch::is_aarch64_feature_detected!($name) {
                f.insert(CpuFeatures::$flag);
            })*
        };
    }
    detect! {
        "dotprod" => DOTPROD,
        "i8mm" => I8MM,
        "sve" => SVE,
        "fp16" => FP16,
        "bf16" => BF16,
    }
    f
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detected_features() -> CpuFeatures {
    CpuFeatures::EMPTY
}

/// A feature `cpu` lacks, by canonical name: the first of a list of rare ones, or one of the
/// other ISA (which no CPU of this ISA has).
pub fn absent_feature(cpu: &CpuInfo) -> &'static str {
    let preferred: &[&str] = if cfg!(target_arch = "aarch64") {
        &["sve", "i8mm", "bf16", "amx-tile"]
    } else {
        &["amx-tile", "avx512bf16", "avx512f", "avxvnni", "sve"]
    };
    preferred
        .iter()
        .copied()
        .find(|name| {
            let f = CpuFeatures::from_name(name).expect("a known feature name");
            !cpu.features.contains(f)
        })
        .expect("this CPU has every feature llmhost knows")
}
