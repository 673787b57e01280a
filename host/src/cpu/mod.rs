//! CPU detection at start-up: instruction-set features ([`features`]) and topology
//! ([`topology`]), combined into the [`CpuInfo`] that plugins read in `score`.
//!
//! Thread-count default: one compute thread per physical core ([`Topology::default_threads`]),
//! pinned to [`Topology::one_cpu_per_core`].

#![forbid(unsafe_code)]

pub mod features;
pub mod topology;

use plugin_api::{CpuFeatures, CpuInfo, Isa};

pub use features::{detect_features, model_name};
pub use topology::{Core, Topology, TopologySource};

/// Detects the CPU this process runs on. Never panics; unknown parts are 0 / empty.
pub fn detect() -> CpuInfo {
    detect_with_topology().0
}

/// [`detect`], also returning the detailed topology (cores and their CPUs, for pinning).
pub fn detect_with_topology() -> (CpuInfo, Topology) {
    let topology = Topology::detect();
    let info = cpu_info(detect_features(), model_name(), &topology);
    (info, topology)
}

/// Builds the ABI struct from its parts (the ISA is the one this binary was compiled for).
pub fn cpu_info(features: CpuFeatures, model_name: String, topology: &Topology) -> CpuInfo {
    let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    CpuInfo {
        isa: Isa::current(),
        features,
        model_name: model_name.into(),
        logical_cpus: clamp(topology.logical_cpus.len()),
        physical_cores: clamp(topology.physical_cores()),
        numa_nodes: clamp(topology.numa_nodes),
        l1d_bytes: topology.l1d_bytes,
        l2_bytes: topology.l2_bytes,
        l3_bytes: topology.l3_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_is_sane() {
        let (info, topo) = detect_with_topology();
        assert_eq!(info.isa, Isa::current());
        assert!(info.logical_cpus >= 1);
        assert!(info.physical_cores >= 1 && info.physical_cores <= info.logical_cpus);
        assert!(info.numa_nodes >= 1);
        assert_eq!(info.logical_cpus as usize, topo.logical_cpus.len());
        assert_eq!(topo.one_cpu_per_core().len(), topo.physical_cores());
        assert!(topo.default_threads() >= 1);
    }
}
