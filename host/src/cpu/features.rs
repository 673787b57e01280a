//! Run-time CPU feature detection: which instruction-set extensions this process may use.
//!
//! A feature lands in the returned [`CpuFeatures`] only when the CPU reports it *and* the OS has
//! enabled the register state it needs, so a kernel plugin may execute every instruction the
//! set names. No `unsafe` here: std's detection macros, the `raw-cpuid` crate and text files
//! under `/proc` do the work.
//!
//! # x86-64
//!
//! Everything except AMX comes from `std::is_x86_feature_detected!`, which already checks the OS
//! side. Its implementation (`library/std_detect/src/detect/os/x86.rs` in rust-lang/rust) reads
//! CPUID, then, only when CPUID.1:ECX reports both XSAVE (bit 26) and OSXSAVE (bit 27), runs
//! `XGETBV(0)` and requires
//! - `XCR0[2:1] == 0b11` (SSE + AVX state) before it reports `avx`, `avx2`, `fma`, `avxvnni`;
//! - additionally `XCR0[7:5] == 0b111` (opmask, ZMM_Hi256, Hi16_ZMM) and `f16c` + `fma` before
//!   it reports any `avx512*` feature (`avx512f/bw/vl/dq/cd/vnni/bf16`).
//!
//! std reports `sse4.2` and `f16c` from CPUID alone. SSE4.2 needs no state beyond SSE, which
//! every x86-64 OS saves. F16C instructions exist only in VEX encoding, which faults (#UD) unless
//! the OS enabled AVX state, so we report `f16c` only together with `avx`.
//!
//! AMX (`amx-tile`, `amx-int8`, `amx-bf16`) is still unstable in `is_x86_feature_detected!` on
//! Rust 1.95 (feature gate `x86_amx_intrinsics`, rust-lang/rust#126622), so it is detected by
//! hand; `x86::amx_features` below documents exactly what is checked.
//!
//! # aarch64
//!
//! `std::arch::is_aarch64_feature_detected!` reads the kernel's HWCAP/HWCAP2 auxiliary vector
//! (`getauxval`) on Linux and `sysctl` on macOS; HWCAP bits are only set when the kernel enables
//! the feature for user space (e.g. SVE), so no separate OS check is needed.

use plugin_api::CpuFeatures;

/// Detects the CPU features this process may use. Never panics; unknown architectures get
/// [`CpuFeatures::EMPTY`].
pub fn detect_features() -> CpuFeatures {
    #[allow(unused_mut)]
    let mut features = CpuFeatures::EMPTY;
    #[cfg(target_arch = "x86_64")]
    {
        features = features.union(x86::std_features());
        let cpuinfo = read_proc_cpuinfo();
        features = features.union(x86::amx_features(cpuinfo.as_deref()));
    }
    #[cfg(target_arch = "aarch64")]
    {
        features = features.union(arm::features());
    }
    features
}

/// The CPU's marketing name, e.g. `"AMD Ryzen 9 5950X 16-Core Processor"`; empty when unknown.
///
/// Linux x86-64: the first `model name` line of `/proc/cpuinfo`. Linux aarch64: `/proc/cpuinfo`
/// has no model name, so the name is built from the `CPU implementer` / `CPU part` lines (MIDR
/// fields) with a small table of common cores, e.g. `"ARM Neoverse-N1"`; heterogeneous systems
/// list each distinct core type once (`"ARM Cortex-A76 + ARM Cortex-A55"`). macOS: `sysctl -n
/// machdep.cpu.brand_string`.
pub fn model_name() -> String {
    if let Some(text) = read_proc_cpuinfo() {
        let name = model_name_from_cpuinfo(&text);
        if !name.is_empty() {
            return name;
        }
    }
    #[cfg(target_os = "macos")]
    {
        if let Ok(out) = std::process::Command::new("sysctl")
            .args(["-n", "machdep.cpu.brand_string"])
            .output()
        {
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
        }
    }
    String::new()
}

fn read_proc_cpuinfo() -> Option<String> {
    std::fs::read_to_string("/proc/cpuinfo").ok()
}

/// Extracts a model name from the text of `/proc/cpuinfo` (x86 or arm64 layout); empty if the
/// text has none. Public so the parsing can be tested on captured files.
pub fn model_name_from_cpuinfo(text: &str) -> String {
    if let Some(name) = cpuinfo_value(text, "model name") {
        // Some 32-bit ARM kernels print "model name : ARMv7 Processor rev 3 (v7l)": still better
        // than nothing, but prefer the MIDR-based name below when there is one.
        if !name.starts_with("ARMv") {
            return name.to_string();
        }
    }
    // arm64: one "CPU implementer" / "CPU part" pair per logical CPU.
    let mut names: Vec<String> = Vec::new();
    let mut implementer: Option<u32> = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "CPU implementer" => implementer = parse_hex(value.trim()),
            "CPU part" => {
                if let (Some(imp), Some(part)) = (implementer, parse_hex(value.trim())) {
                    let name = arm_core_name(imp, part);
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
            _ => {}
        }
    }
    if !names.is_empty() {
        return names.join(" + ");
    }
    cpuinfo_value(text, "model name")
        .or_else(|| cpuinfo_value(text, "Hardware"))
        .unwrap_or("")
        .to_string()
}

/// The value of the first `key : value` line whose key is exactly `key`, trimmed; `None` when
/// absent or empty.
fn cpuinfo_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        let v = v.trim();
        (k.trim() == key && !v.is_empty()).then_some(v)
    })
}

/// The `flags` line of `/proc/cpuinfo` (x86) as a list of words; empty when absent.
pub fn cpuinfo_flags(text: &str) -> Vec<&str> {
    cpuinfo_value(text, "flags")
        .map(|v| v.split_whitespace().collect())
        .unwrap_or_default()
}

fn parse_hex(s: &str) -> Option<u32> {
    let s = s.trim();
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    u32::from_str_radix(digits, 16).ok()
}

/// Names for MIDR implementer/part pairs (values from Linux `arch/arm64/include/asm/cputype.h`).
/// Unknown pairs get a generic `"implementer 0x.. part 0x..."` name.
fn arm_core_name(implementer: u32, part: u32) -> String {
    let vendor = match implementer {
        0x41 => "ARM",
        0x42 => "Broadcom",
        0x43 => "Cavium",
        0x46 => "Fujitsu",
        0x48 => "HiSilicon",
        0x4e => "NVIDIA",
        0x50 => "APM",
        0x51 => "Qualcomm",
        0x53 => "Samsung",
        0x61 => "Apple",
        0xc0 => "Ampere",
        _ => "",
    };
    let core = match (implementer, part) {
        (0x41, 0xd03) => "Cortex-A53",
        (0x41, 0xd04) => "Cortex-A35",
        (0x41, 0xd05) => "Cortex-A55",
        (0x41, 0xd07) => "Cortex-A57",
        (0x41, 0xd08) => "Cortex-A72",
        (0x41, 0xd09) => "Cortex-A73",
        (0x41, 0xd0a) => "Cortex-A75",
        (0x41, 0xd0b) => "Cortex-A76",
        (0x41, 0xd0c) => "Neoverse-N1",
        (0x41, 0xd0d) => "Cortex-A77",
        (0x41, 0xd40) => "Neoverse-V1",
        (0x41, 0xd41) => "Cortex-A78",
        (0x41, 0xd44) => "Cortex-X1",
        (0x41, 0xd46) => "Cortex-A510",
        (0x41, 0xd47) => "Cortex-A710",
        (0x41, 0xd48) => "Cortex-X2",
        (0x41, 0xd49) => "Neoverse-N2",
        (0x41, 0xd4d) => "Cortex-A715",
        (0x41, 0xd4e) => "Cortex-X3",
        (0x41, 0xd4f) => "Neoverse-V2",
        (0x41, 0xd80) => "Cortex-A520",
        (0x41, 0xd81) => "Cortex-A720",
        (0x41, 0xd82) => "Cortex-X4",
        (0x41, 0xd84) => "Neoverse-V3",
        (0x41, 0xd8e) => "Neoverse-N3",
        (0x46, 0x001) => "A64FX",
        (0x48, 0xd01) => "Kunpeng-920",
        (0xc0, 0xac3) => "Ampere-1",
        (0xc0, 0xac4) => "Ampere-1a",
        _ => "",
    };
    match (vendor, core) {
        ("", _) => format!("implementer {implementer:#04x} part {part:#05x}"),
        (v, "") => format!("{v} part {part:#05x}"),
        (v, c) => format!("{v} {c}"),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use plugin_api::CpuFeatures;

    /// Every feature std can detect on stable Rust (with its XCR0 checks, see the module docs).
    pub(super) fn std_features() -> CpuFeatures {
        let mut f = CpuFeatures::EMPTY;
        macro_rules! check {
            ($($name:tt => $flag:ident),* $(,)?) => {
                $(if std::arch::is_x86_feature_detected!($name) {
                    f.insert(CpuFeatures::$flag);
                })*
            };
        }
        check! {
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
        if !f.contains(CpuFeatures::AVX) {
            // VEX-encoded F16C needs the AVX state enabled in XCR0 (std checks CPUID only).
            f = f.difference(CpuFeatures::F16C);
        }
        f
    }

    /// AMX, detected by hand because std's detection of it is unstable. All three must hold:
    ///
    /// 1. **CPU**: CPUID.(EAX=7,ECX=0):EDX bits 24 (AMX-TILE), 25 (AMX-INT8), 22 (AMX-BF16), read
    ///    with the safe `raw-cpuid` crate.
    /// 2. **XCR0**: the OS enabled tile state, XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA), which
    ///    the architecture only allows set together, so checking bit 18 suffices. We
    ///    cannot run `XGETBV` without `unsafe`, but CPUID.(EAX=0DH,ECX=0):EBX is defined as the
    ///    XSAVE-area size "required by enabled features in XCR0", and CPUID.(EAX=0DH,ECX=18)
    ///    gives XTILEDATA's offset and size in that area (2816 + 8192 on Sapphire Rapids); it is
    ///    the component placed last, so EBX reaches its end exactly when XCR0 bit 18 is set.
    /// 3. **Linux**: when `/proc/cpuinfo` can be read, its `flags` must list `amx_tile` (and
    ///    `amx_int8` / `amx_bf16` for those): the kernel's own view, which it clears when told to
    ///    (`clearcpuid=`, `noxsave`) or when its XSAVE setup fails. Kernels older than 5.16 know
    ///    the flags but not the tile state, so they may print them without enabling it; check 2
    ///    catches that.
    ///
    /// What this does *not* check: on Linux a process must also ask for tile-data permission with
    /// `arch_prctl(ARCH_REQ_XCOMP_PERM, 18)` before its first tile instruction, or that
    /// instruction raises SIGILL. That call is a syscall (`unsafe`), so the AMX kernel plugin has
    /// to make it itself at load, and fall back if it fails.
    pub(super) fn amx_features(cpuinfo: Option<&str>) -> CpuFeatures {
        let cpuid = raw_cpuid::CpuId::new();
        let Some(ext) = cpuid.get_extended_feature_info() else {
            return CpuFeatures::EMPTY;
        };
        if !ext.has_amx_tile() {
            return CpuFeatures::EMPTY;
        }
        let Some(xsave) = cpuid.get_extended_state_info() else {
            return CpuFeatures::EMPTY;
        };
        let Some(tile_data) = xsave.iter().find(|s| s.subleaf == 18) else {
            return CpuFeatures::EMPTY;
        };
        let tile_end = tile_data.offset().saturating_add(tile_data.size());
        if tile_data.size() == 0 || xsave.xsave_area_size_enabled_features() < tile_end {
            return CpuFeatures::EMPTY;
        }
        let cpu = CpuFeatures::AMX_TILE
            .union(if ext.has_amx_int8() {
                CpuFeatures::AMX_INT8
            } else {
                CpuFeatures::EMPTY
            })
            .union(if ext.has_amx_bf16() {
                CpuFeatures::AMX_BF16
            } else {
                CpuFeatures::EMPTY
            });
        match cpuinfo {
            Some(text) if cfg!(target_os = "linux") => {
                CpuFeatures(cpu.0 & super::amx_from_linux_flags(text).0)
            }
            _ => cpu,
        }
    }
}

/// The AMX features whose Linux `/proc/cpuinfo` flags are present (`amx_tile`, `amx_int8`,
/// `amx_bf16`); the INT8/BF16 ones only together with `amx_tile`.
pub fn amx_from_linux_flags(cpuinfo: &str) -> CpuFeatures {
    let flags = cpuinfo_flags(cpuinfo);
    let mut f = CpuFeatures::EMPTY;
    if !flags.contains(&"amx_tile") {
        return f;
    }
    f.insert(CpuFeatures::AMX_TILE);
    if flags.contains(&"amx_int8") {
        f.insert(CpuFeatures::AMX_INT8);
    }
    if flags.contains(&"amx_bf16") {
        f.insert(CpuFeatures::AMX_BF16);
    }
    f
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use plugin_api::CpuFeatures;

    /// NEON, dotprod, i8mm, SVE, fp16, bf16 from HWCAP/HWCAP2 via std (see the module docs).
    pub(super) fn features() -> CpuFeatures {
        let mut f = CpuFeatures::EMPTY;
        macro_rules! check {
            ($($name:tt => $flag:ident),* $(,)?) => {
                $(if std::arch::is_aarch64_feature_detected!($name) {
                    f.insert(CpuFeatures::$flag);
                })*
            };
        }
        check! {
            "neon" => NEON,
            "dotprod" => DOTPROD,
            "i8mm" => I8MM,
            "sve" => SVE,
            "fp16" => FP16,
            "bf16" => BF16,
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86_CPUINFO: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\n\
        model name\t: Intel(R) Xeon(R) Platinum 8480+\n\
        flags\t\t: fpu sse4_2 avx2 amx_bf16 avx512_fp16 amx_tile amx_int8\n\n\
        processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n";

    const ARM_CPUINFO: &str = "processor\t: 0\nBogoMIPS\t: 50.00\n\
        Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm\n\
        CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\n\
        CPU revision\t: 1\n\nprocessor\t: 1\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n";

    const BIG_LITTLE_CPUINFO: &str =
        "processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd05\n\n\
        processor\t: 4\nCPU implementer\t: 0x41\nCPU part\t: 0xd0b\n\n\
        processor\t: 5\nCPU implementer\t: 0x41\nCPU part\t: 0xd0b\n";

    #[test]
    fn model_name_x86() {
        assert_eq!(
            model_name_from_cpuinfo(X86_CPUINFO),
            "Intel(R) Xeon(R) Platinum 8480+"
        );
    }

    #[test]
    fn model_name_arm64() {
        assert_eq!(model_name_from_cpuinfo(ARM_CPUINFO), "ARM Neoverse-N1");
        assert_eq!(
            model_name_from_cpuinfo(BIG_LITTLE_CPUINFO),
            "ARM Cortex-A55 + ARM Cortex-A76"
        );
        assert_eq!(
            model_name_from_cpuinfo("CPU implementer : 0x61\nCPU part : 0x022\n"),
            "Apple part 0x022"
        );
        assert_eq!(
            model_name_from_cpuinfo("CPU implementer : 0x99\nCPU part : 0x001\n"),
            "implementer 0x99 part 0x001"
        );
    }

    #[test]
    fn model_name_unknown_is_empty() {
        assert_eq!(model_name_from_cpuinfo(""), "");
        assert_eq!(model_name_from_cpuinfo("processor : 0\n"), "");
    }

    #[test]
    fn amx_flags() {
        let f = amx_from_linux_flags(X86_CPUINFO);
        assert_eq!(
            f,
            CpuFeatures::AMX_TILE
                .union(CpuFeatures::AMX_INT8)
                .union(CpuFeatures::AMX_BF16)
        );
        assert!(amx_from_linux_flags("flags : fpu amx_int8 amx_bf16\n").is_empty());
        assert!(amx_from_linux_flags(ARM_CPUINFO).is_empty());
    }

    #[test]
    fn detection_is_consistent() {
        let f = detect_features();
        // Implications every real CPU/OS combination satisfies (std checks the XCR0 side).
        if f.contains(CpuFeatures::AVX2) {
            assert!(f.contains(CpuFeatures::AVX));
        }
        if f.contains(CpuFeatures::AVX512F) {
            assert!(f.contains(CpuFeatures::AVX2) && f.contains(CpuFeatures::FMA));
        }
        if f.contains(CpuFeatures::AMX_INT8) || f.contains(CpuFeatures::AMX_BF16) {
            assert!(f.contains(CpuFeatures::AMX_TILE));
        }
        #[cfg(target_arch = "x86_64")]
        assert!(
            f.difference(CpuFeatures(0xffff)).is_empty(),
            "{:?}",
            f.names()
        );
        #[cfg(target_arch = "aarch64")]
        assert!(f.contains(CpuFeatures::NEON));
    }
}
