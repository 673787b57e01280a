//! Topology parsing on small fake sysfs trees (host/tests/data/sysfs/), plus a printout of what
//! detection finds on the machine running the tests.

use std::path::PathBuf;

use llmhost::cpu::{self, Core, Topology, TopologySource};

fn tree(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/sysfs")
        .join(name)
}

fn core(id: usize, package: usize, cpus: &[usize]) -> Core {
    Core {
        id,
        package,
        cpus: cpus.to_vec(),
    }
}

const K: u64 = 1024;

#[test]
fn two_cores_two_threads_each() {
    let t = Topology::from_sysfs(&tree("smt2x2"), None);
    assert_eq!(t.source, TopologySource::Sysfs);
    assert_eq!(t.logical_cpus, vec![0, 1, 2, 3]);
    assert_eq!(t.cores, vec![core(0, 0, &[0, 2]), core(1, 0, &[1, 3])]);
    assert_eq!(t.physical_cores(), 2);
    assert_eq!(t.one_cpu_per_core(), vec![0, 1]);
    assert_eq!(t.pin_plan(4), vec![0, 1, 2, 3]);
    assert_eq!(t.l1d_bytes, 32 * K);
    assert_eq!(t.l2_bytes, 512 * K);
    assert_eq!(t.l3_bytes, 32768 * K);
    assert_eq!(t.numa_nodes, 1);

    let info = cpu::cpu_info(Default::default(), "Test CPU".into(), &t);
    assert_eq!(info.logical_cpus, 4);
    assert_eq!(info.physical_cores, 2);
    assert_eq!(info.numa_nodes, 1);
    assert_eq!(info.l1d_bytes, 32 * K);
    assert_eq!(info.model_name.as_str(), "Test CPU");
}

#[test]
fn affinity_mask_restricts_cpus_and_cores() {
    let root = tree("smt2x2");
    // One thread of each core: still two physical cores.
    let t = Topology::from_sysfs(&root, Some(&[1, 0]));
    assert_eq!(t.logical_cpus, vec![0, 1]);
    assert_eq!(t.cores, vec![core(0, 0, &[0]), core(1, 0, &[1])]);
    // Both threads of one core: one physical core.
    let t = Topology::from_sysfs(&root, Some(&[0, 2]));
    assert_eq!(t.logical_cpus, vec![0, 2]);
    assert_eq!(t.cores, vec![core(0, 0, &[0, 2])]);
    assert_eq!(t.one_cpu_per_core(), vec![0]);
    // CPUs sysfs does not know are dropped; an empty mask means "all".
    let t = Topology::from_sysfs(&root, Some(&[3, 9]));
    assert_eq!(t.logical_cpus, vec![3]);
    assert_eq!(t.cores, vec![core(1, 0, &[3])]);
    assert_eq!(
        t.l1d_bytes,
        32 * K,
        "caches read from the first allowed CPU"
    );
    let t = Topology::from_sysfs(&root, Some(&[]));
    assert_eq!(t.logical_cpus, vec![0, 1, 2, 3]);
}

#[test]
fn no_topology_files() {
    let t = Topology::from_sysfs(&tree("no-topology"), None);
    // CPUs come from the cpuN directories (no `online` file); `cpufreq` is not a CPU.
    assert_eq!(t.source, TopologySource::Sysfs);
    assert_eq!(t.logical_cpus, vec![0, 1, 2, 3]);
    assert_eq!(
        t.physical_cores(),
        4,
        "without topology each CPU is its own core"
    );
    assert_eq!(t.one_cpu_per_core(), vec![0, 1, 2, 3]);
    assert_eq!((t.l1d_bytes, t.l2_bytes, t.l3_bytes), (0, 0, 0));
    assert_eq!(t.numa_nodes, 1);
}

#[test]
fn siblings_list_fallback_and_numa() {
    let t = Topology::from_sysfs(&tree("siblings-only"), None);
    // No core_id: cores from thread_siblings_list; physical_package_id "-1" reads as 0.
    assert_eq!(t.cores, vec![core(0, 0, &[0, 1]), core(2, 0, &[2, 3])]);
    assert_eq!(t.l1d_bytes, 64 * K, "L1 instruction cache must not count");
    assert_eq!(t.l2_bytes, 1024 * K);
    assert_eq!(t.l3_bytes, 0);
    assert_eq!(t.numa_nodes, 2, "node2 has no CPUs");
    let t = Topology::from_sysfs(&tree("siblings-only"), Some(&[0, 1]));
    assert_eq!(t.numa_nodes, 1, "only nodes with allowed CPUs count");
    assert_eq!(t.physical_cores(), 1);
}

#[test]
fn two_packages_repeat_core_ids() {
    let t = Topology::from_sysfs(&tree("two-packages"), None);
    assert_eq!(
        t.cores,
        vec![
            core(0, 0, &[0]),
            core(1, 0, &[1]),
            core(0, 1, &[2]),
            core(1, 1, &[3])
        ]
    );
    assert_eq!(t.numa_nodes, 2);
    assert_eq!(
        (t.l1d_bytes, t.l2_bytes, t.l3_bytes),
        (48 * K, 2048 * K, 30720 * K)
    );
}

#[test]
fn missing_sysfs_falls_back() {
    let t = Topology::from_sysfs(&tree("does-not-exist"), None);
    assert_eq!(t.source, TopologySource::Fallback);
    let n = std::thread::available_parallelism().unwrap().get();
    assert_eq!(t.logical_cpus, (0..n).collect::<Vec<_>>());
    assert_eq!(t.physical_cores(), n);
    assert_eq!((t.l1d_bytes, t.l2_bytes, t.l3_bytes), (0, 0, 0));
    assert_eq!(t.numa_nodes, 1);
}

/// Not an assertion on this machine's values: prints what detection reports
/// (`cargo test --test cpu_topology -- --nocapture`).
#[test]
fn print_this_machine() {
    let (info, topo) = cpu::detect_with_topology();
    println!("isa            {}", info.isa.name());
    println!("model          {:?}", info.model_name.as_str());
    println!("features       {}", info.features.names().join(" "));
    println!(
        "logical cpus   {} {:?}",
        info.logical_cpus, topo.logical_cpus
    );
    println!("physical cores {} {:?}", info.physical_cores, topo.cores);
    println!("pin one/core   {:?}", topo.one_cpu_per_core());
    println!("default thr.   {}", topo.default_threads());
    println!(
        "caches         L1d {} KiB, L2 {} KiB, L3 {} KiB",
        info.l1d_bytes / 1024,
        info.l2_bytes / 1024,
        info.l3_bytes / 1024
    );
    println!("numa nodes     {}", info.numa_nodes);
    println!("source         {:?}", topo.source);
    assert!(info.physical_cores >= 1);
}
