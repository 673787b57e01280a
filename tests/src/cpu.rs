//! The CPU the tests run on, for scoring and gatekeeping.

use plugin_api::{CpuFeatures, CpuInfo};

/// This machine's CPU, as the host detects it.
pub fn detected() -> CpuInfo {
    llmhost::cpu::detect()
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
