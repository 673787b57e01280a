//! CPU topology from Linux sysfs: which logical CPUs this process may use, how they group into
//! physical cores, cache sizes and NUMA nodes.
//!
//! Everything is read as text from a sysfs root given as a parameter (the real one is
//! [`SYSFS_ROOT`]), so tests run on small fake trees. Missing or unreadable files never panic:
//! without sysfs (some containers, non-Linux systems) the topology falls back to
//! [`std::thread::available_parallelism`] logical CPUs, one core each, caches unknown (0).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Where Linux exposes CPU and NUMA topology.
pub const SYSFS_ROOT: &str = "/sys/devices/system";

/// One physical core: the logical CPUs (SMT siblings) on it that this process may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core {
    /// `topology/core_id` (unique within a package, not globally), or the lowest sibling's CPU
    /// number when sysfs has no `core_id`.
    pub id: usize,
    /// `topology/physical_package_id` (0 when unknown).
    pub package: usize,
    /// Allowed logical CPUs on this core, ascending. Never empty.
    pub cpus: Vec<usize>,
}

/// Where a [`Topology`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologySource {
    /// Parsed from sysfs.
    Sysfs,
    /// No usable sysfs: logical CPUs only, each its own core, caches unknown.
    Fallback,
}

/// The CPU topology visible to this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Logical CPU numbers this process may run on, ascending.
    pub logical_cpus: Vec<usize>,
    /// Physical cores with at least one allowed CPU, ordered by (package, lowest CPU).
    pub cores: Vec<Core>,
    /// L1 data cache per core, in bytes; 0 when unknown.
    pub l1d_bytes: u64,
    /// L2 cache (per core or per cluster), in bytes; 0 when unknown.
    pub l2_bytes: u64,
    /// L3 cache (one instance, shared by several cores), in bytes; 0 when unknown.
    pub l3_bytes: u64,
    /// NUMA nodes that hold at least one allowed CPU (1 when unknown).
    pub numa_nodes: usize,
    pub source: TopologySource,
}

impl Topology {
    /// The real topology of this process: [`SYSFS_ROOT`] restricted to the affinity mask that
    /// `core_affinity::get_core_ids()` reports (`sched_getaffinity` on Linux).
    pub fn detect() -> Topology {
        let allowed: Option<Vec<usize>> =
            core_affinity::get_core_ids().map(|ids| ids.into_iter().map(|c| c.id).collect());
        Topology::from_sysfs(Path::new(SYSFS_ROOT), allowed.as_deref())
    }

    /// Parses the topology under `root` (a directory laid out like `/sys/devices/system`, with
    /// `cpu/` and optionally `node/`). `allowed` restricts the result to those logical CPUs (the
    /// process affinity mask); `None` or an empty list means every online CPU.
    ///
    /// Per CPU it reads `cpu/cpuN/topology/{physical_package_id,die_id,core_id}`; CPUs with the
    /// same (package, die, core) are SMT siblings of one core. When `core_id` is missing it
    /// groups by `thread_siblings_list` (or the newer `core_cpus_list`), and failing that each CPU
    /// is its own core. Cache sizes come from the first allowed CPU that has
    /// `cache/index*/{level,type,size}`.
    pub fn from_sysfs(root: &Path, allowed: Option<&[usize]>) -> Topology {
        let allowed = allowed.filter(|a| !a.is_empty());
        let cpu_dir = root.join("cpu");
        let Some(present) = sysfs_cpus(&cpu_dir) else {
            return Topology::fallback(allowed);
        };
        let logical_cpus: Vec<usize> = match allowed {
            Some(a) => {
                let mut v: Vec<usize> = a
                    .iter()
                    .copied()
                    .filter(|c| present.binary_search(c).is_ok())
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            }
            None => present,
        };
        if logical_cpus.is_empty() {
            return Topology::fallback(allowed);
        }

        // Group CPUs into cores. Key: (package, die, core) or, without core_id, the sibling set.
        let mut groups: BTreeMap<(usize, usize, usize), Vec<usize>> = BTreeMap::new();
        for &cpu in &logical_cpus {
            let topo = cpu_dir.join(format!("cpu{cpu}")).join("topology");
            let package = read_id(&topo.join("physical_package_id")).unwrap_or(0);
            let die = read_id(&topo.join("die_id")).unwrap_or(0);
            let core = read_id(&topo.join("core_id"))
                .map(|id| (id, false))
                .or_else(|| {
                    ["thread_siblings_list", "core_cpus_list"]
                        .iter()
                        .find_map(|f| read_list(&topo.join(f)))
                        .and_then(|s| s.into_iter().min())
                        .map(|first| (first, true))
                });
            let key = match core {
                Some((id, false)) => (package, die, id),
                // Sibling-derived ids are global CPU numbers: keep them apart from core_ids.
                Some((first, true)) => (package, usize::MAX, first),
                None => (package, usize::MAX, cpu),
            };
            groups.entry(key).or_default().push(cpu);
        }
        let mut cores: Vec<Core> = groups
            .into_iter()
            .map(|((package, _, id), cpus)| Core { id, package, cpus })
            .collect();
        cores.sort_by_key(|c| (c.package, c.cpus[0]));

        let (l1d_bytes, l2_bytes, l3_bytes) = logical_cpus
            .iter()
            .map(|&cpu| read_caches(&cpu_dir.join(format!("cpu{cpu}")).join("cache")))
            .find(|c| *c != (0, 0, 0))
            .unwrap_or((0, 0, 0));

        let numa_nodes = count_numa_nodes(&root.join("node"), &logical_cpus);

        Topology {
            logical_cpus,
            cores,
            l1d_bytes,
            l2_bytes,
            l3_bytes,
            numa_nodes,
            source: TopologySource::Sysfs,
        }
    }

    /// The topology without sysfs: the allowed CPUs if known, else
    /// `0..available_parallelism()`; each CPU counted as its own core; caches unknown.
    pub fn fallback(allowed: Option<&[usize]>) -> Topology {
        let logical_cpus: Vec<usize> = match allowed.filter(|a| !a.is_empty()) {
            Some(a) => {
                let mut v = a.to_vec();
                v.sort_unstable();
                v.dedup();
                v
            }
            None => {
                let n = std::thread::available_parallelism().map_or(1, |n| n.get());
                (0..n).collect()
            }
        };
        let cores = logical_cpus
            .iter()
            .map(|&cpu| Core {
                id: cpu,
                package: 0,
                cpus: vec![cpu],
            })
            .collect();
        Topology {
            logical_cpus,
            cores,
            l1d_bytes: 0,
            l2_bytes: 0,
            l3_bytes: 0,
            numa_nodes: 1,
            source: TopologySource::Fallback,
        }
    }

    /// Number of physical cores this process may use (SMT siblings counted once).
    pub fn physical_cores(&self) -> usize {
        self.cores.len()
    }

    /// One logical CPU per physical core (the lowest allowed sibling), in core order: where to
    /// pin one thread per core.
    pub fn one_cpu_per_core(&self) -> Vec<usize> {
        self.cores.iter().map(|c| c.cpus[0]).collect()
    }

    /// CPUs to pin `n_threads` threads to: first one per core, then second SMT siblings, and so
    /// on; wraps around (more threads than logical CPUs share CPUs). Empty for `n_threads == 0`.
    pub fn pin_plan(&self, n_threads: usize) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.logical_cpus.len());
        let max_smt = self.cores.iter().map(|c| c.cpus.len()).max().unwrap_or(0);
        for level in 0..max_smt {
            order.extend(self.cores.iter().filter_map(|c| c.cpus.get(level)));
        }
        if order.is_empty() {
            return Vec::new();
        }
        (0..n_threads).map(|i| order[i % order.len()]).collect()
    }

    /// Default number of compute threads: one per physical core, but no more than
    /// `available_parallelism()` (which also honours cgroup CPU quotas in containers).
    pub fn default_threads(&self) -> usize {
        let avail = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.physical_cores().clamp(1, avail.max(1))
    }
}

/// Parses a kernel CPU list such as `"0-3,8-11"`, `"5"` or `""` (empty set). Returns `None` on
/// malformed input. Accepts the `a-b:stride` form too.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.trim().split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (range, stride) = match part.split_once(':') {
            Some((r, s)) => (r, s.trim().parse::<usize>().ok().filter(|&s| s > 0)?),
            None => (part, 1),
        };
        match range.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().ok()?;
                let b: usize = b.trim().parse().ok()?;
                if b < a || b - a > 1 << 20 {
                    return None;
                }
                out.extend((a..=b).step_by(stride));
            }
            None => out.push(range.parse().ok()?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// Parses a sysfs cache size: `"32K"`, `"512K"`, `"32768K"`, `"1M"`, `"1 MiB"`, or plain bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let value: u64 = t[..digits_end].parse().ok()?;
    let unit = t[digits_end..].trim().to_ascii_uppercase();
    let mult: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return None,
    };
    value.checked_mul(mult)
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// A non-negative integer id; `-1` (seen for `physical_package_id` on some arm64 boards) and
/// garbage read as `None`.
fn read_id(path: &Path) -> Option<usize> {
    read_trimmed(path)?.parse::<i64>().ok()?.try_into().ok()
}

fn read_list(path: &Path) -> Option<Vec<usize>> {
    parse_cpu_list(&read_trimmed(path)?).filter(|l| !l.is_empty())
}

/// The CPUs sysfs knows: `cpu/online` when present, else the `cpu/cpuN` directories. `None`
/// when the directory is missing or lists no CPU.
fn sysfs_cpus(cpu_dir: &Path) -> Option<Vec<usize>> {
    if let Some(list) = read_list(&cpu_dir.join("online")) {
        return Some(list);
    }
    let mut cpus: Vec<usize> = fs::read_dir(cpu_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix("cpu")?;
            n.parse::<usize>().ok()
        })
        .collect();
    cpus.sort_unstable();
    (!cpus.is_empty()).then_some(cpus)
}

/// (L1 data, L2, L3) in bytes from one CPU's `cache/index*` directories; 0 for a level not
/// found. Instruction caches are skipped; a unified L1 counts as L1 data.
fn read_caches(cache_dir: &Path) -> (u64, u64, u64) {
    let (mut l1d, mut l1u, mut l2, mut l3) = (0u64, 0u64, 0u64, 0u64);
    let Ok(entries) = fs::read_dir(cache_dir) else {
        return (0, 0, 0);
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.starts_with("index")) {
            continue;
        }
        let dir = entry.path();
        let (Some(level), Some(kind), Some(size)) = (
            read_trimmed(&dir.join("level")),
            read_trimmed(&dir.join("type")),
            read_trimmed(&dir.join("size")).and_then(|s| parse_size(&s)),
        ) else {
            continue;
        };
        if kind.eq_ignore_ascii_case("Instruction") {
            continue;
        }
        let slot = match (level.as_str(), kind.eq_ignore_ascii_case("Data")) {
            ("1", true) => &mut l1d,
            ("1", false) => &mut l1u,
            ("2", _) => &mut l2,
            ("3", _) => &mut l3,
            _ => continue,
        };
        *slot = (*slot).max(size);
    }
    (if l1d > 0 { l1d } else { l1u }, l2, l3)
}

/// NUMA nodes (`node/nodeN`) whose `cpulist` contains an allowed CPU; nodes without a readable
/// `cpulist` count as holding one. At least 1.
fn count_numa_nodes(node_dir: &Path, cpus: &[usize]) -> usize {
    let Ok(entries) = fs::read_dir(node_dir) else {
        return 1;
    };
    let count = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("node"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| match read_trimmed(&e.path().join("cpulist")) {
            Some(text) => parse_cpu_list(&text)
                .is_some_and(|list| list.iter().any(|c| cpus.binary_search(c).is_ok())),
            None => true,
        })
        .count();
    count.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8-9\n"), Some(vec![0, 1, 2, 3, 8, 9]));
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3,1,1-2"), Some(vec![1, 2, 3]));
        assert_eq!(parse_cpu_list("0-7:2"), Some(vec![0, 2, 4, 6]));
        assert_eq!(parse_cpu_list("a-b"), None);
        assert_eq!(parse_cpu_list("4-2"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32K"), Some(32 * 1024));
        assert_eq!(parse_size("512K\n"), Some(512 * 1024));
        assert_eq!(parse_size("32768K"), Some(32 << 20));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("1 MiB"), Some(1 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn fallback_without_sysfs() {
        let t = Topology::from_sysfs(Path::new("/nonexistent/sysfs"), None);
        assert_eq!(t.source, TopologySource::Fallback);
        assert!(!t.logical_cpus.is_empty());
        assert_eq!(t.physical_cores(), t.logical_cpus.len());
        assert_eq!((t.l1d_bytes, t.l2_bytes, t.l3_bytes), (0, 0, 0));
        assert_eq!(t.numa_nodes, 1);

        let t = Topology::from_sysfs(Path::new("/nonexistent/sysfs"), Some(&[3, 1]));
        assert_eq!(t.logical_cpus, vec![1, 3]);
        assert_eq!(t.one_cpu_per_core(), vec![1, 3]);
    }

    #[test]
    fn pin_plan_order() {
        let t = Topology {
            logical_cpus: vec![0, 1, 2, 3],
            cores: vec![
                Core {
                    id: 0,
                    package: 0,
                    cpus: vec![0, 2],
                },
                Core {
                    id: 1,
                    package: 0,
                    cpus: vec![1, 3],
                },
            ],
            l1d_bytes: 0,
            l2_bytes: 0,
            l3_bytes: 0,
            numa_nodes: 1,
            source: TopologySource::Sysfs,
        };
        assert_eq!(t.pin_plan(2), vec![0, 1]);
        assert_eq!(t.pin_plan(4), vec![0, 1, 2, 3]);
        assert_eq!(t.pin_plan(5), vec![0, 1, 2, 3, 0]);
        assert!(t.pin_plan(0).is_empty());
    }
}
