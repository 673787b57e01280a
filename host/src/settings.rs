//! The effective settings of one run: command-line flags override the config file, which
//! overrides the defaults.

use crate::config::{Config, ConfigError};
use crate::cpu::Topology;
use crate::plugins::PluginSources;
use std::path::PathBuf;

/// Flags shared by every command.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// Configuration file (TOML). Without it, built-in defaults apply.
    #[arg(long, value_name = "FILE", global = true, env = "LLMHOST_CONFIG")]
    pub config: Option<PathBuf>,

    /// Also search DIR for plugins, before the config's [plugins] dirs (repeatable).
    #[arg(long = "plugin-dir", value_name = "DIR", global = true)]
    pub plugin_dirs: Vec<PathBuf>,

    /// Use this kernel plugin instead of the best-scoring one ("scalar", "kernels-avx2", ...;
    /// "auto" to choose).
    #[arg(long, value_name = "NAME", global = true)]
    pub kernel: Option<String>,

    /// Compute threads [default: one per physical core].
    #[arg(short = 't', long, value_name = "N", global = true,
          value_parser = clap::value_parser!(u32).range(1..=crate::config::MAX_THREADS as i64))]
    pub threads: Option<u32>,

    /// Log level on stderr: error, warn, info, debug, trace [default: info, or [log] level].
    #[arg(long, value_name = "LEVEL", global = true,
          value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: Option<String>,
}

/// Everything a command needs to know, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub plugin_sources: PluginSources,
    pub forced_kernel: Option<String>,
    /// Where the forced kernel came from, for messages.
    pub kernel_source: &'static str,
    pub threads: usize,
    pub pin_threads: bool,
    pub log_level: String,
}

impl Settings {
    /// Reads the config (if any) and applies the flags over it.
    pub fn resolve(args: &CommonArgs, topology: &Topology) -> Result<Settings, ConfigError> {
        let config = match &args.config {
            Some(path) => {
                let config = Config::load(path)?;
                config.check_plugin_dirs(path)?;
                config
            }
            None => Config::default(),
        };
        let mut dirs = args.plugin_dirs.clone();
        dirs.extend(config.plugins.dirs.iter().cloned());
        let (forced_kernel, kernel_source) = match args.kernel.as_deref() {
            Some("auto") | Some("") => (None, "--kernel"),
            Some(name) => (Some(name.to_string()), "--kernel"),
            None => (
                config.plugins.forced_kernel().map(str::to_string),
                "[plugins] kernel",
            ),
        };
        let threads = match (args.threads, config.threads.count) {
            (Some(n), _) => n as usize,
            (None, 0) => topology.default_threads(),
            (None, n) => n,
        };
        Ok(Settings {
            plugin_sources: PluginSources::standard(dirs, config.plugins.search_exe_dir),
            forced_kernel,
            kernel_source,
            threads,
            pin_threads: config.threads.pin,
            log_level: args
                .log_level
                .clone()
                .unwrap_or_else(|| config.log.level.clone()),
            config_path: args.config.clone(),
            config,
        })
    }
}
