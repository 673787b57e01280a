//! Human-readable reports for `llmhost info`: the CPU as detected, sizes in binary units.

use crate::cpu::{Topology, TopologySource};
use plugin_api::CpuInfo;
use std::fmt::Write;

/// `32 KiB`, `1.5 MiB`, `unknown` for 0.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    if n == 0 {
        return "unknown".into();
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v.fract() == 0.0 {
        format!("{v} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The CPU section of `llmhost info`.
pub fn cpu_section(cpu: &CpuInfo, topology: &Topology, threads: usize, pinned: bool) -> String {
    let mut s = String::new();
    let model = if cpu.model_name.is_empty() {
        "unknown"
    } else {
        cpu.model_name.as_str()
    };
    let features = cpu.features.names();
    let smt = if cpu.logical_cpus > cpu.physical_cores {
        "SMT on"
    } else {
        "no SMT"
    };
    let _ = writeln!(s, "CPU");
    let _ = writeln!(s, "  model      {model}");
    let _ = writeln!(s, "  isa        {}", cpu.isa.name());
    let _ = writeln!(
        s,
        "  features   {}",
        if features.is_empty() {
            "(none of the SIMD extensions llmhost knows)".to_string()
        } else {
            features.join(" ")
        }
    );
    let _ = writeln!(
        s,
        "  cores      {} physical, {} logical ({smt}), {} NUMA node{}",
        cpu.physical_cores,
        cpu.logical_cpus,
        cpu.numa_nodes,
        if cpu.numa_nodes == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        s,
        "  caches     L1d {}, L2 {}, L3 {}",
        bytes(cpu.l1d_bytes),
        bytes(cpu.l2_bytes),
        bytes(cpu.l3_bytes)
    );
    if topology.source == TopologySource::Fallback {
        let _ = writeln!(
            s,
            "  topology   not readable from /sys: each logical CPU counted as a core"
        );
    }
    let _ = writeln!(
        s,
        "  threads    {threads}{}{}",
        if threads == topology.default_threads() {
            " (one per physical core)"
        } else {
            ""
        },
        if pinned {
            format!(", pinned to CPUs {:?}", topology.pin_plan(threads))
        } else {
            ", not pinned".to_string()
        }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_readable() {
        assert_eq!(bytes(0), "unknown");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(32 * 1024), "32 KiB");
        assert_eq!(bytes(1536 * 1024), "1.5 MiB");
        assert_eq!(bytes(32 << 20), "32 MiB");
    }
}
