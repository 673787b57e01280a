//! Where plugins are looked for, and which files there are candidates.
//!
//! Directories are searched in priority order: the configuration's `[plugins] dirs`, then
//! `LLMHOST_PLUGIN_PATH` (a path list, separated like `PATH`), then the directory of the
//! running executable. Every file with this OS's shared-library extension (`.so`, `.dylib`,
//! `.dll`) is a candidate; within a directory, candidates come in file-name order.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// The environment variable holding extra plugin directories.
pub const PLUGIN_PATH_VAR: &str = "LLMHOST_PLUGIN_PATH";

/// Where a search directory came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// `[plugins] dirs` of the configuration.
    Config,
    /// The `LLMHOST_PLUGIN_PATH` environment variable.
    EnvPath,
    /// The directory of the running executable.
    ExeDir,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Config => "[plugins] dirs",
            SourceKind::EnvPath => PLUGIN_PATH_VAR,
            SourceKind::ExeDir => "executable's directory",
        })
    }
}

/// The places to search, each switchable: tests search only the directories they give.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginSources {
    /// `[plugins] dirs`, searched first, in order.
    pub config_dirs: Vec<PathBuf>,
    /// The value of `LLMHOST_PLUGIN_PATH`, or `None` not to use it.
    pub plugin_path: Option<OsString>,
    /// The executable's directory, or `None` not to search it.
    pub exe_dir: Option<PathBuf>,
}

impl PluginSources {
    /// The standard sources: `config_dirs`, `LLMHOST_PLUGIN_PATH` from the environment, and,
    /// when `search_exe_dir`, the directory of the running executable.
    pub fn standard(config_dirs: Vec<PathBuf>, search_exe_dir: bool) -> PluginSources {
        let exe_dir = if search_exe_dir {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(Path::to_path_buf))
        } else {
            None
        };
        PluginSources {
            config_dirs,
            plugin_path: std::env::var_os(PLUGIN_PATH_VAR),
            exe_dir,
        }
    }

    /// Only the given directories, in order (no environment, no executable directory).
    pub fn only(dirs: impl IntoIterator<Item = PathBuf>) -> PluginSources {
        PluginSources {
            config_dirs: dirs.into_iter().collect(),
            plugin_path: None,
            exe_dir: None,
        }
    }

    /// The directories to search, in priority order. Empty entries of the path list are
    /// ignored; a directory listed twice is searched once, at its first place.
    pub fn search_dirs(&self) -> Vec<SearchDir> {
        let mut dirs = Vec::new();
        for dir in &self.config_dirs {
            dirs.push(SearchDir::new(dir.clone(), SourceKind::Config));
        }
        if let Some(list) = &self.plugin_path {
            for dir in std::env::split_paths(list) {
                if !dir.as_os_str().is_empty() {
                    dirs.push(SearchDir::new(dir, SourceKind::EnvPath));
                }
            }
        }
        if let Some(dir) = &self.exe_dir {
            dirs.push(SearchDir::new(dir.clone(), SourceKind::ExeDir));
        }
        let mut seen = HashSet::new();
        dirs.retain(|d| seen.insert(std::fs::canonicalize(&d.path).unwrap_or(d.path.clone())));
        dirs
    }
}

/// One directory searched for plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchDir {
    pub path: PathBuf,
    pub source: SourceKind,
    /// Why it could not be listed (missing, not a directory, unreadable), if so.
    pub problem: Option<String>,
    /// How many candidate libraries it held.
    pub candidates: usize,
}

impl SearchDir {
    fn new(path: PathBuf, source: SourceKind) -> SearchDir {
        SearchDir {
            path,
            source,
            problem: None,
            candidates: 0,
        }
    }
}

impl fmt::Display for SearchDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (from {})", self.path.display(), self.source)?;
        match &self.problem {
            Some(problem) => write!(f, ": {problem}"),
            None => write!(
                f,
                ": {} candidate librar{}",
                self.candidates,
                if self.candidates == 1 { "y" } else { "ies" }
            ),
        }
    }
}

/// A library file that may be a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    pub source: SourceKind,
}

/// Whether `path` has this OS's shared-library extension.
pub fn is_library_name(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext == std::env::consts::DLL_EXTENSION)
}

/// Lists the candidate libraries of every directory, in priority order, recording in each
/// `SearchDir` what was found. The same file reached twice (a symlink, a directory listed
/// under two names) is a candidate once.
pub fn find_candidates(dirs: &mut [SearchDir]) -> Vec<Candidate> {
    let mut candidates = Vec::new();
    let mut seen = HashSet::new();
    for dir in dirs.iter_mut() {
        let entries = match std::fs::read_dir(&dir.path) {
            Ok(entries) => entries,
            Err(e) => {
                dir.problem = Some(match e.kind() {
                    std::io::ErrorKind::NotFound => "does not exist".to_string(),
                    _ if !dir.path.is_dir() => "is not a directory".to_string(),
                    _ => format!("cannot be listed: {e}"),
                });
                continue;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| is_library_name(p) && p.is_file())
            .collect();
        files.sort();
        for path in files {
            let key = std::fs::canonicalize(&path).unwrap_or(path.clone());
            if seen.insert(key) {
                dir.candidates += 1;
                candidates.push(Candidate {
                    path,
                    source: dir.source,
                });
            }
        }
    }
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_order_and_empty_path_entries() {
        let sources = PluginSources {
            config_dirs: vec!["/nonexistent/a".into()],
            plugin_path: Some(
                std::env::join_paths(["/nonexistent/b", "", "/nonexistent/a"]).unwrap(),
            ),
            exe_dir: Some("/nonexistent/exe".into()),
        };
        let dirs: Vec<_> = sources
            .search_dirs()
            .into_iter()
            .map(|d| (d.path, d.source))
            .collect();
        assert_eq!(
            dirs,
            vec![
                ("/nonexistent/a".into(), SourceKind::Config),
                ("/nonexistent/b".into(), SourceKind::EnvPath),
                ("/nonexistent/exe".into(), SourceKind::ExeDir),
            ]
        );
    }

    #[test]
    fn missing_directories_are_reported_not_fatal() {
        let mut dirs = PluginSources::only(["/nonexistent/llmhost-plugins".into()]).search_dirs();
        assert!(find_candidates(&mut dirs).is_empty());
        assert_eq!(dirs[0].problem.as_deref(), Some("does not exist"));
    }
}
