//! Plugins: finding them, deciding whether they can run here, loading them, and choosing.
//!
//! - [`manifest`]: reads a plugin's manifest out of the library file, without opening it;
//! - [`discovery`]: the directories searched and the candidate libraries in them;
//! - [`registry`]: gatekeeping, loading, one-line reports, kernel selection, architecture
//!   look-up;
//! - `loader`: the only code that opens libraries;
//! - [`kernels`] and [`arch`]: safe handles on loaded plugins that turn the ABI's `RResult`s
//!   into Rust `Result`s naming the plugin and the function.
//!
//! ```no_run
//! # use llmhost::plugins::{PluginRegistry, PluginSources};
//! # fn run(cpu: &plugin_api::CpuInfo) -> Result<(), Box<dyn std::error::Error>> {
//! let registry = PluginRegistry::discover(cpu, &PluginSources::standard(vec![], true));
//! for report in registry.reports() {
//!     println!("{report}");
//! }
//! let selected = registry.select_kernel(None)?;
//! println!("kernels: {} ({})", selected.kernels.name(), selected.reason);
//! # Ok(()) }
//! ```

pub mod arch;
pub mod discovery;
pub mod kernels;
mod loader;
pub mod manifest;
pub mod registry;

pub use arch::ArchHandle;
pub use discovery::{Candidate, PluginSources, SearchDir, SourceKind, PLUGIN_PATH_VAR};
pub use kernels::{Kernels, PluginCallError};
pub use manifest::{read_manifest, ManifestError, PluginKind, PluginManifest};
pub use registry::{
    api_compatible, PluginError, PluginRegistry, PluginReport, PluginStatus, SelectedKernel,
};

/// Collapses a message that may span lines (toml's, abi_stable's, a plugin's) into one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
