//! Discovery, gatekeeping, loading and selection of plugins.
//!
//! For every candidate library, in priority order:
//!
//! 1. read its manifest from the file (never opening it); a file without one is no plugin;
//! 2. the first plugin of a name wins, later ones are shadowed;
//! 3. refuse, still without opening it, a plugin of an incompatible plugin-api version, of
//!    another ISA, or that needs a CPU feature this CPU lacks;
//! 4. open it (abi_stable checks the layouts of all ABI types), call `info()` and, for a kernel
//!    plugin, `score(&cpu)`; any failure here is reported and the plugin skipped.
//!
//! Nothing a plugin does at steps 1–4 can stop the host: each candidate ends with a
//! [`PluginReport`] whose `Display` is one line saying what happened and what to do.

use super::arch::ArchHandle;
use super::discovery::{find_candidates, PluginSources, SearchDir, SourceKind};
use super::kernels::Kernels;
use super::loader;
use super::manifest::{read_manifest, ManifestError, PluginKind, PluginManifest};
use plugin_api::{CpuFeatures, CpuInfo, Isa, PLUGIN_API_VERSION};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// What became of one candidate library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginStatus {
    /// A kernel plugin, loaded. A score of 0 means it cannot run on this CPU.
    LoadedKernel { score: u32 },
    /// An architecture plugin, loaded; the `general.architecture` values it handles.
    LoadedArch { architectures: Vec<String> },
    /// Not an llmhost plugin (not a shared library, or no manifest): ignored, never opened.
    NotAPlugin { reason: String },
    /// Refused before opening: unusable manifest, incompatible plugin-api, another ISA, or
    /// CPU features this CPU lacks.
    Skipped { reason: String },
    /// Opened, but unusable: layout mismatch, open error, or `info`/`score` failed.
    Failed { reason: String },
    /// Another plugin of the same name was found first.
    Shadowed { by: PathBuf },
}

/// One candidate library and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginReport {
    pub path: PathBuf,
    pub source: SourceKind,
    /// The plugin's name, when its manifest says it.
    pub name: Option<String>,
    /// The manifest, when it could be read and parsed.
    pub manifest: Option<PluginManifest>,
    pub status: PluginStatus,
}

impl PluginReport {
    /// Whether the plugin was loaded (whatever its score).
    pub fn is_loaded(&self) -> bool {
        matches!(
            self.status,
            PluginStatus::LoadedKernel { .. } | PluginStatus::LoadedArch { .. }
        )
    }

    /// Whether the file is an llmhost plugin at all (has a manifest section).
    pub fn is_plugin(&self) -> bool {
        !matches!(self.status, PluginStatus::NotAPlugin { .. })
    }

    fn kind(&self) -> Option<PluginKind> {
        self.manifest.as_ref().map(|m| m.kind)
    }

    /// A few words on the status, for lists: `score 10`, `skipped`, ...
    fn short_status(&self) -> String {
        match &self.status {
            PluginStatus::LoadedKernel { score: 0 } => "score 0: cannot run on this CPU".into(),
            PluginStatus::LoadedKernel { score } => format!("score {score}"),
            PluginStatus::LoadedArch { architectures } => architectures.join(", "),
            PluginStatus::NotAPlugin { .. } => "not a plugin".into(),
            PluginStatus::Skipped { .. } => "skipped".into(),
            PluginStatus::Failed { .. } => "failed to load".into(),
            PluginStatus::Shadowed { .. } => "shadowed".into(),
        }
    }
}

impl fmt::Display for PluginReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        let who = match &self.name {
            Some(name) => format!("plugin '{name}' ({path})"),
            None => format!("{path}"),
        };
        match &self.status {
            PluginStatus::LoadedKernel { score } => {
                let version = self.manifest.as_ref().map_or("", |m| m.version.as_str());
                write!(f, "{who}: kernel plugin {version} loaded, score {score}")?;
                if *score == 0 {
                    f.write_str(" (it cannot run on this CPU)")?;
                }
                Ok(())
            }
            PluginStatus::LoadedArch { architectures } => {
                let version = self.manifest.as_ref().map_or("", |m| m.version.as_str());
                write!(
                    f,
                    "{who}: architecture plugin {version} loaded, handles {}",
                    architectures.join(", ")
                )
            }
            PluginStatus::NotAPlugin { reason } => {
                write!(f, "{path}: not an llmhost plugin ({reason}); ignored, never opened")
            }
            PluginStatus::Skipped { reason } => write!(f, "{who} skipped: {reason}"),
            PluginStatus::Failed { reason } => write!(f, "{who} failed to load: {reason}"),
            PluginStatus::Shadowed { by } => write!(
                f,
                "{who} shadowed by {} (the first plugin of a name found wins): remove one of them to silence this",
                by.display()
            ),
        }
    }
}

/// The kernel plugin chosen to run, and why.
#[derive(Debug, Clone)]
pub struct SelectedKernel {
    pub kernels: Kernels,
    /// e.g. "highest score 10 of 2 runnable kernel plugins"
    pub reason: String,
}

/// Why no plugin could be chosen. Each `Display`s as one line saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginError {
    /// No kernel plugin can run here.
    NoKernel { searched: String, found: String },
    /// The forced kernel plugin was not found.
    KernelNotFound { requested: String, found: String },
    /// The forced kernel plugin was found but cannot run.
    KernelNotRunnable {
        requested: String,
        why: String,
        runnable: String,
    },
    /// No loaded architecture plugin handles the model's architecture.
    NoArch {
        architecture: String,
        loaded: String,
    },
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginError::NoKernel { searched, found } => write!(
                f,
                "no runnable kernel plugin found (searched {searched}; kernel plugins found: {found}): put a kernel plugin such as libkernels_scalar.{} into one of these directories, [plugins] dirs or {}",
                std::env::consts::DLL_EXTENSION,
                super::discovery::PLUGIN_PATH_VAR,
            ),
            PluginError::KernelNotFound { requested, found } => write!(
                f,
                "the forced kernel plugin '{requested}' was not found (kernel plugins found: {found}): set [plugins] kernel to one of those or to \"auto\""
            ),
            PluginError::KernelNotRunnable { requested, why, runnable } => write!(
                f,
                "the forced kernel plugin '{requested}' cannot run: {why}; runnable kernel plugins: {runnable}: set [plugins] kernel to one of those or to \"auto\""
            ),
            PluginError::NoArch { architecture, loaded } => write!(
                f,
                "no architecture plugin handles general.architecture = \"{architecture}\" (loaded: {loaded}): add a plugin for it to a plugin directory"
            ),
        }
    }
}

impl std::error::Error for PluginError {}

/// Every candidate library found, what became of it, and the plugins that loaded.
#[derive(Debug)]
pub struct PluginRegistry {
    cpu: CpuInfo,
    dirs: Vec<SearchDir>,
    reports: Vec<PluginReport>,
    kernels: Vec<Kernels>,
    archs: Vec<ArchHandle>,
}

impl PluginRegistry {
    /// Searches `sources`, then gates, loads and scores every plugin found (see the module
    /// documentation). Never fails: what went wrong is in [`reports`](Self::reports).
    pub fn discover(cpu: &CpuInfo, sources: &PluginSources) -> PluginRegistry {
        let mut dirs = sources.search_dirs();
        let candidates = find_candidates(&mut dirs);
        let mut registry = PluginRegistry {
            cpu: cpu.clone(),
            dirs,
            reports: Vec::new(),
            kernels: Vec::new(),
            archs: Vec::new(),
        };
        let mut first_of_name: HashMap<String, PathBuf> = HashMap::new();
        for candidate in candidates {
            let mut report = PluginReport {
                path: candidate.path,
                source: candidate.source,
                name: None,
                manifest: None,
                status: PluginStatus::NotAPlugin {
                    reason: String::new(),
                },
            };
            report.status = match read_manifest(&report.path) {
                Err(ManifestError::NotAPlugin(reason)) => PluginStatus::NotAPlugin { reason },
                Err(ManifestError::Unreadable(why)) => PluginStatus::Skipped {
                    reason: format!("the file cannot be read ({why}): check its permissions"),
                },
                Err(ManifestError::Invalid { name, reason }) => {
                    report.name = name;
                    match shadowing(&mut first_of_name, &report) {
                        Some(by) => PluginStatus::Shadowed { by },
                        None => PluginStatus::Skipped {
                            reason: format!("its manifest is unusable: {reason}"),
                        },
                    }
                }
                Ok(manifest) => {
                    report.name = Some(manifest.name.clone());
                    let status = match shadowing(&mut first_of_name, &report) {
                        Some(by) => PluginStatus::Shadowed { by },
                        None => match gate(&manifest, cpu) {
                            Err(reason) => PluginStatus::Skipped { reason },
                            Ok(()) => registry.load(&manifest, &report.path),
                        },
                    };
                    report.manifest = Some(manifest);
                    status
                }
            };
            match &report.status {
                PluginStatus::Failed { .. } => tracing::warn!("{report}"),
                PluginStatus::LoadedKernel { .. } | PluginStatus::LoadedArch { .. } => {
                    tracing::debug!("{report}")
                }
                _ => tracing::debug!("{report}"),
            }
            registry.reports.push(report);
        }
        registry
    }

    /// Opens a plugin that passed the gate and checks what it says about itself.
    fn load(&mut self, manifest: &PluginManifest, path: &Path) -> PluginStatus {
        let name = manifest.name.as_str();
        let failed = |reason: String| PluginStatus::Failed { reason };
        match manifest.kind {
            PluginKind::Kernel => {
                let root = match loader::open_kernel_plugin(path) {
                    Ok(root) => root,
                    Err(reason) => return failed(reason),
                };
                let kernels = match Kernels::init(root, name, path, &self.cpu) {
                    Ok(k) => k,
                    Err(e) => {
                        return failed(format!(
                            "its {}() failed ({}): the plugin is broken, report it to its author",
                            e.op, e.message
                        ))
                    }
                };
                let info = kernels.info();
                if info.name.as_str() != name {
                    return failed(format!(
                        "its manifest says '{name}' but its info() says '{}': the library is inconsistent, rebuild it",
                        info.name
                    ));
                }
                if info.isa != Isa::current() {
                    return failed(format!(
                        "its info() says isa {}, this host is {}: the library is inconsistent, rebuild it",
                        info.isa.name(),
                        Isa::current().name()
                    ));
                }
                let undeclared = info.required.difference(self.cpu.features);
                if !undeclared.is_empty() {
                    return failed(format!(
                        "its info() requires {}, which this CPU lacks, but its manifest does not declare {}: fix the requires list of the plugin's export_kernel_plugin!",
                        undeclared.names().join(", "),
                        if undeclared.names().len() == 1 { "it" } else { "them" }
                    ));
                }
                let score = kernels.score();
                self.kernels.push(kernels);
                PluginStatus::LoadedKernel { score }
            }
            PluginKind::Arch => {
                let root = match loader::open_arch_plugin(path) {
                    Ok(root) => root,
                    Err(reason) => return failed(reason),
                };
                let arch = match ArchHandle::init(root, name, path) {
                    Ok(a) => a,
                    Err(e) => {
                        return failed(format!(
                            "its {}() failed ({}): the plugin is broken, report it to its author",
                            e.op, e.message
                        ))
                    }
                };
                let architectures = arch
                    .info()
                    .architectures
                    .iter()
                    .map(|a| a.to_string())
                    .collect();
                self.archs.push(arch);
                PluginStatus::LoadedArch { architectures }
            }
        }
    }

    /// The CPU the plugins were scored on.
    pub fn cpu(&self) -> &CpuInfo {
        &self.cpu
    }

    /// The directories searched, in priority order.
    pub fn searched_dirs(&self) -> &[SearchDir] {
        &self.dirs
    }

    /// Every candidate library, in priority order.
    pub fn reports(&self) -> &[PluginReport] {
        &self.reports
    }

    /// The report of the plugin named `name` (the one that won, if several had that name).
    pub fn report(&self, name: &str) -> Option<&PluginReport> {
        self.reports.iter().find(|r| {
            r.name.as_deref() == Some(name) && !matches!(r.status, PluginStatus::Shadowed { .. })
        })
    }

    /// The loaded kernel plugins, in priority order, whatever their score.
    pub fn kernels(&self) -> &[Kernels] {
        &self.kernels
    }

    /// The loaded architecture plugins, in priority order.
    pub fn arch_plugins(&self) -> &[ArchHandle] {
        &self.archs
    }

    /// Chooses the kernel plugin to run: `forced` (a plugin name, `kernels-` optional) if
    /// given, else the highest score above 0 (the first found wins a tie).
    pub fn select_kernel(&self, forced: Option<&str>) -> Result<SelectedKernel, PluginError> {
        let runnable: Vec<&Kernels> = self.kernels.iter().filter(|k| k.score() > 0).collect();
        if let Some(requested) = forced {
            return self.select_forced(requested, &runnable);
        }
        let mut best: Option<&Kernels> = None;
        for k in &runnable {
            match best {
                Some(b) if b.score() >= k.score() => {}
                _ => best = Some(k),
            }
        }
        let Some(best) = best else {
            return Err(PluginError::NoKernel {
                searched: self
                    .dirs
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                found: self.kernel_list(),
            });
        };
        let tied: Vec<&str> = runnable
            .iter()
            .filter(|k| k.score() == best.score() && k.name() != best.name())
            .map(|k| k.name())
            .collect();
        let reason = match (runnable.len(), tied.is_empty()) {
            (1, _) => format!("the only runnable kernel plugin (score {})", best.score()),
            (n, true) => format!("highest score {} of {n} runnable kernel plugins", best.score()),
            (n, false) => format!(
                "highest score {} of {n} runnable kernel plugins, tied with {} (the first found wins)",
                best.score(),
                tied.join(", ")
            ),
        };
        Ok(SelectedKernel {
            kernels: (*best).clone(),
            reason,
        })
    }

    fn select_forced(
        &self,
        requested: &str,
        runnable: &[&Kernels],
    ) -> Result<SelectedKernel, PluginError> {
        let matches =
            |name: &str| name == requested || name.strip_prefix("kernels-") == Some(requested);
        if let Some(k) = runnable.iter().find(|k| matches(k.name())) {
            return Ok(SelectedKernel {
                kernels: (*k).clone(),
                reason: format!("forced by configuration (score {})", k.score()),
            });
        }
        let report = self.reports.iter().find(|r| {
            r.name.as_deref().is_some_and(matches)
                && r.kind() != Some(PluginKind::Arch)
                && !matches!(r.status, PluginStatus::Shadowed { .. })
        });
        let runnable_list = if runnable.is_empty() {
            "none".to_string()
        } else {
            runnable
                .iter()
                .map(|k| format!("{} (score {})", k.name(), k.score()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match report {
            None => Err(PluginError::KernelNotFound {
                requested: requested.to_owned(),
                found: self.kernel_list(),
            }),
            Some(report) => Err(PluginError::KernelNotRunnable {
                requested: requested.to_owned(),
                why: report.to_string(),
                runnable: runnable_list,
            }),
        }
    }

    /// `name (short status), ...` of the (non-shadowed) kernel plugins found, or `none`.
    fn kernel_list(&self) -> String {
        let list: Vec<String> = self
            .reports
            .iter()
            .filter(|r| {
                r.is_plugin()
                    && r.kind() != Some(PluginKind::Arch)
                    && !matches!(r.status, PluginStatus::Shadowed { .. })
            })
            .map(|r| {
                let name = r
                    .name
                    .clone()
                    .unwrap_or_else(|| r.path.display().to_string());
                format!("{name} ({})", r.short_status())
            })
            .collect();
        if list.is_empty() {
            "none".into()
        } else {
            list.join(", ")
        }
    }

    /// The loaded architecture plugin handling `general.architecture = architecture` (the
    /// first found, if several do).
    pub fn arch_for(&self, architecture: &str) -> Result<&ArchHandle, PluginError> {
        self.archs
            .iter()
            .find(|a| a.handles(architecture))
            .ok_or_else(|| PluginError::NoArch {
                architecture: architecture.to_owned(),
                loaded: if self.archs.is_empty() {
                    "none".into()
                } else {
                    self.archs
                        .iter()
                        .map(|a| {
                            let handled: Vec<&str> =
                                a.info().architectures.iter().map(|s| s.as_str()).collect();
                            format!("{} for {}", a.name(), handled.join(", "))
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                },
            })
    }
}

/// The path of the first plugin called like `report`, or `None` when it is the first (then it
/// becomes the one later plugins of that name are shadowed by).
fn shadowing(first: &mut HashMap<String, PathBuf>, report: &PluginReport) -> Option<PathBuf> {
    let name = report.name.as_ref()?;
    match first.get(name) {
        Some(by) => Some(by.clone()),
        None => {
            first.insert(name.clone(), report.path.clone());
            None
        }
    }
}

/// `(major, minor, patch)` of `"0.1.0"` (a pre-release or build suffix is ignored).
fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

/// Whether a plugin built against plugin-api `plugin` can be loaded by a host speaking `host`:
/// same major, and same minor while the major is 0.
pub fn api_compatible(plugin: &str, host: &str) -> bool {
    match (parse_version(plugin), parse_version(host)) {
        (Some(p), Some(h)) => p.0 == h.0 && (h.0 != 0 || p.1 == h.1),
        _ => false,
    }
}

/// The checks made before a plugin is opened. `Err` is the one-line reason.
fn gate(m: &PluginManifest, cpu: &CpuInfo) -> Result<(), String> {
    if parse_version(&m.plugin_api).is_none() {
        return Err(format!(
            "its manifest has an unreadable plugin_api version \"{}\": rebuild it against plugin-api {PLUGIN_API_VERSION}",
            m.plugin_api
        ));
    }
    if !api_compatible(&m.plugin_api, PLUGIN_API_VERSION) {
        return Err(format!(
            "was built against plugin-api {}, this host speaks {PLUGIN_API_VERSION}: rebuild it against plugin-api {PLUGIN_API_VERSION}",
            m.plugin_api
        ));
    }
    let host_isa = Isa::current().name();
    if m.isa != host_isa {
        return Err(format!(
            "was built for {}, this host is {host_isa}: use a build of it for {host_isa}",
            m.isa
        ));
    }
    let missing: CpuFeatures = m.requires.difference(cpu.features);
    if !missing.is_empty() {
        return Err(format!(
            "needs {}, which this CPU lacks; not opened",
            missing.names().join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        assert!(api_compatible("0.1.0", "0.1.0"));
        assert!(api_compatible("0.1.7", "0.1.0"));
        assert!(!api_compatible("0.2.0", "0.1.0"));
        assert!(!api_compatible("1.0.0", "0.1.0"));
        assert!(api_compatible("1.4.0", "1.2.3"));
        assert!(!api_compatible("2.0.0", "1.2.3"));
        assert!(!api_compatible("0.1", "0.1.0"));
        assert!(api_compatible("0.1.0-dev", "0.1.0"));
    }

    fn manifest(requires: CpuFeatures, api: &str) -> PluginManifest {
        PluginManifest {
            kind: PluginKind::Kernel,
            name: "kernels-foo".into(),
            version: "0.1.0".into(),
            plugin_api: api.into(),
            isa: Isa::current().name().into(),
            requires,
        }
    }

    fn cpu(features: CpuFeatures) -> CpuInfo {
        CpuInfo {
            isa: Isa::current(),
            features,
            model_name: "".into(),
            logical_cpus: 1,
            physical_cores: 1,
            numa_nodes: 1,
            l1d_bytes: 0,
            l2_bytes: 0,
            l3_bytes: 0,
        }
    }

    #[test]
    fn gate_names_missing_features_and_versions() {
        let needs = CpuFeatures::AVX512F.union(CpuFeatures::AVX512BW);
        let err = gate(
            &manifest(needs, PLUGIN_API_VERSION),
            &cpu(CpuFeatures::AVX2),
        )
        .unwrap_err();
        assert_eq!(
            err,
            "needs avx512f, avx512bw, which this CPU lacks; not opened"
        );
        assert!(gate(&manifest(needs, PLUGIN_API_VERSION), &cpu(needs)).is_ok());
        let err = gate(&manifest(CpuFeatures::EMPTY, "0.3.0"), &cpu(needs)).unwrap_err();
        assert_eq!(
            err,
            format!("was built against plugin-api 0.3.0, this host speaks {PLUGIN_API_VERSION}: rebuild it against plugin-api {PLUGIN_API_VERSION}")
        );
    }
}
