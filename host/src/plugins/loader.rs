//! Opening plugin libraries: the one place where the host runs a plugin's code for the first
//! time. By the time a library gets here, its manifest has said that it is an llmhost plugin of
//! a compatible plugin-api for this CPU (see `registry`).
//!
//! `abi_stable::library::lib_header_from_path` opens the library and leaks it on purpose:
//! plugins are never unloaded, so the function pointers and `'static` data the host keeps from
//! them stay valid for the life of the process. `init_root_module` then checks abi_stable's
//! version numbers and the layout of every type reachable from the root module against the
//! host's. (`RootModule::load_from_file` is not used: it caches one module per root-module
//! type for the whole process, and the host loads several kernel plugins.)
//!
//! Nothing here needs `unsafe`: both functions are safe, and no `libloading::Library` of ours
//! exists that could be dropped.

use super::one_line;
use abi_stable::library::{lib_header_from_path, LibraryError, RootModule, RootModuleError};
use plugin_api::{ArchPluginRef, KernelPluginRef, PLUGIN_API_VERSION};
use std::path::Path;

/// Opens the kernel plugin at `path` and checks its layout. The error is one line saying what
/// is wrong and what to do, without the plugin's name or path (the caller's report has them).
pub(crate) fn open_kernel_plugin(path: &Path) -> Result<KernelPluginRef, String> {
    open::<KernelPluginRef>(path)
}

/// Opens the architecture plugin at `path` and checks its layout; errors as for kernels.
pub(crate) fn open_arch_plugin(path: &Path) -> Result<ArchPluginRef, String> {
    open::<ArchPluginRef>(path)
}

fn open<M: RootModule>(path: &Path) -> Result<M, String> {
    let header = lib_header_from_path(path).map_err(|e| describe(&e))?;
    header.init_root_module::<M>().map_err(|e| describe(&e))
}

/// One line for a `LibraryError`: abi_stable's own `Display` spans many lines (whole layout
/// dumps for a layout mismatch).
pub(crate) fn describe(err: &LibraryError) -> String {
    let rebuild = format!("rebuild it against plugin-api {PLUGIN_API_VERSION}");
    match err {
        LibraryError::OpenError { err, .. } => format!(
            "could not be opened ({}): check that it is a plugin built for this OS and architecture and that the libraries it needs are installed",
            one_line(&err.to_string())
        ),
        LibraryError::GetSymbolError { symbol, .. } => format!(
            "is not an abi_stable plugin library (it exports no `{}` root module): rebuild it with plugin_api's export_kernel_plugin! or export_arch_plugin!",
            String::from_utf8_lossy(symbol).trim_end_matches('\0')
        ),
        LibraryError::InvalidAbiHeader(found) => format!(
            "was built with an incompatible abi_stable (its ABI {}.{}, this host's {}.{}): {rebuild}",
            found.abi_major,
            found.abi_minor,
            abi_stable::library::AbiHeader::VALUE.abi_major,
            abi_stable::library::AbiHeader::VALUE.abi_minor,
        ),
        LibraryError::ParseVersionError(e) => format!(
            "has an unreadable plugin-api version in its root module ({}): {rebuild}",
            one_line(&e.to_string())
        ),
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => format!(
            "its root module was built against plugin-api {actual_version}, this host speaks {expected_version} (its manifest said otherwise): {rebuild}"
        ),
        LibraryError::AbiInstability(e) => {
            let detail = layout_mismatch_summary(&e.to_string());
            format!(
                "its plugin-api types differ from this host's although both say plugin-api {PLUGIN_API_VERSION} (abi_stable layout check failed{detail}): rebuild it against the plugin-api this host was built with"
            )
        }
        LibraryError::RootModule { err, .. } => match err {
            RootModuleError::Unwound => {
                "panicked while building its root module: the plugin is broken, report it to its author".to_string()
            }
            RootModuleError::Returned(e) => format!(
                "failed to build its root module ({}): the plugin is broken, report it to its author",
                one_line(&e.to_string())
            ),
        },
        LibraryError::InvalidCAbi { .. } => {
            "was built with a compiler that passes C-ABI values differently: rebuild it with this host's Rust toolchain".to_string()
        }
        LibraryError::Many(errors) => {
            let all: Vec<String> = errors.iter().map(describe).collect();
            all.join("; ")
        }
    }
}

/// A short hint from abi_stable's layout-mismatch dump (hundreds of lines): the first error
/// and the type it is about, e.g. `: MatmulArgs<'a>: incompatible type size (expected 96,
/// found 104)`; nothing when the dump's shape is not recognised.
fn layout_mismatch_summary(dump: &str) -> String {
    let lines: Vec<&str> = dump.lines().map(str::trim).collect();
    let Some(at) = lines.iter().position(|l| l.starts_with("Error:")) else {
        return String::new();
    };
    let what = lines[at].trim_start_matches("Error:").trim();
    let ty = lines[..at]
        .iter()
        .rposition(|l| *l == "Layout of expected type:")
        .and_then(|i| lines[i..at].iter().find_map(|l| l.strip_prefix("type:")))
        .map(|t| format!("{}: ", t.trim()))
        .unwrap_or_default();
    let values = match lines.get(at + 1..at + 5) {
        Some([e, expected, f, found]) if *e == "Expected:" && *f == "Found:" => {
            format!(" (expected {expected}, found {found})")
        }
        _ => String::new(),
    };
    let summary = one_line(&format!("{ty}{what}{values}"));
    if summary.is_empty() || summary.len() > 160 {
        String::new()
    } else {
        format!(": {summary}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_dump_summary() {
        let dump = "\n8 error(s)inside:\n    <other>\nLayout of expected type:\n    --- Type Layout ---\n    type:MatmulArgs<'a>\n    size:96 align:8\n\n\nError:incompatible type size\nExpected:\n    96\nFound:\n    104\n\nError:too many fields\n";
        assert_eq!(
            layout_mismatch_summary(dump),
            ": MatmulArgs<'a>: incompatible type size (expected 96, found 104)"
        );
        assert_eq!(layout_mismatch_summary("something else"), "");
    }
}
