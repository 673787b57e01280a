//! What the host tells plugins about the CPU it runs on.

use abi_stable::{std_types::RString, StableAbi};

/// Instruction-set architecture of the running process.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    X86_64 = 0,
    Aarch64 = 1,
    Other = 2,
}

impl Isa {
    /// The ISA this binary was compiled for.
    pub const fn current() -> Isa {
        if cfg!(target_arch = "x86_64") {
            Isa::X86_64
        } else if cfg!(target_arch = "aarch64") {
            Isa::Aarch64
        } else {
            Isa::Other
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Isa::X86_64 => "x86_64",
            Isa::Aarch64 => "aarch64",
            Isa::Other => "other",
        }
    }
}

/// A set of CPU features, one bit each. A feature is only set when both the CPU reports it and
/// the OS has enabled the register state it needs (XCR0 on x86-64), so a plugin may use every
/// feature in the set.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct CpuFeatures(pub u64);

macro_rules! features {
    ($($(#[$doc:meta])* $name:ident = $bit:expr, $text:literal;)*) => {
        impl CpuFeatures {
            $($(#[$doc])* pub const $name: CpuFeatures = CpuFeatures(1 << $bit);)*

            /// Every known feature with its canonical lower-case name (as used in plugin
            /// manifests and by `llmhost info`).
            pub const ALL: &'static [(CpuFeatures, &'static str)] = &[$((CpuFeatures::$name, $text)),*];
        }
    };
}

features! {
    SSE42 = 0, "sse4.2";
    AVX = 1, "avx";
    AVX2 = 2, "avx2";
    FMA = 3, "fma";
    F16C = 4, "f16c";
    AVX512F = 5, "avx512f";
    AVX512BW = 6, "avx512bw";
    AVX512VL = 7, "avx512vl";
    AVX512VNNI = 8, "avx512vnni";
    AVX512BF16 = 9, "avx512bf16";
    AVXVNNI = 10, "avxvnni";
    AMX_TILE = 11, "amx-tile";
    AMX_INT8 = 12, "amx-int8";
    AMX_BF16 = 13, "amx-bf16";
    AVX512DQ = 14, "avx512dq";
    AVX512CD = 15, "avx512cd";
    NEON = 32, "neon";
    DOTPROD = 33, "dotprod";
    I8MM = 34, "i8mm";
    SVE = 35, "sve";
    FP16 = 36, "fp16";
    BF16 = 37, "bf16";
}

impl CpuFeatures {
    pub const EMPTY: CpuFeatures = CpuFeatures(0);

    pub const fn contains(self, other: CpuFeatures) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: CpuFeatures) -> CpuFeatures {
        CpuFeatures(self.0 | other.0)
    }

    pub const fn difference(self, other: CpuFeatures) -> CpuFeatures {
        CpuFeatures(self.0 & !other.0)
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn insert(&mut self, other: CpuFeatures) {
        self.0 |= other.0;
    }

    /// Whether `name` is a canonical feature name; usable in constants, so the export macros
    /// reject a misspelt feature when the plugin is compiled.
    pub const fn is_known_name(name: &str) -> bool {
        let mut i = 0;
        while i < CpuFeatures::ALL.len() {
            let known = CpuFeatures::ALL[i].1.as_bytes();
            let n = name.as_bytes();
            if known.len() == n.len() {
                let mut j = 0;
                while j < n.len() && known[j] == n[j] {
                    j += 1;
                }
                if j == n.len() {
                    return true;
                }
            }
            i += 1;
        }
        false
    }

    /// Looks a feature up by its canonical name (`"avx2"`, `"avx512f"`, `"dotprod"`, ...).
    pub fn from_name(name: &str) -> Option<CpuFeatures> {
        CpuFeatures::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(f, _)| *f)
    }

    /// The names of the features in this set, in canonical order.
    pub fn names(self) -> Vec<&'static str> {
        CpuFeatures::ALL
            .iter()
            .filter(|(f, _)| self.contains(*f))
            .map(|(_, n)| *n)
            .collect()
    }
}

/// The CPU as the host detected it at start-up. Plugins read it in `score`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct CpuInfo {
    pub isa: Isa,
    /// Features usable by this process (CPU support and OS support both checked).
    pub features: CpuFeatures,
    /// e.g. "AMD Ryzen 9 5950X 16-Core Processor"; empty when unknown.
    pub model_name: RString,
    /// Logical CPUs this process may run on.
    pub logical_cpus: u32,
    /// Physical cores (SMT siblings counted once).
    pub physical_cores: u32,
    pub numa_nodes: u32,
    /// Per-core L1 data cache, per-core (or per-cluster) L2, shared L3, in bytes; 0 when unknown.
    pub l1d_bytes: u64,
    pub l2_bytes: u64,
    pub l3_bytes: u64,
}
