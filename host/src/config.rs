//! `llmhost.toml`: the configuration file. Every key is optional; unknown keys and bad values
//! are errors that name the key and its place in the file, so a typo never silently falls back
//! to a default.
//!
//! ```toml
//! [plugins]
//! dirs = ["plugins"]      # searched first; relative to this file's directory
//! kernel = "auto"         # or a kernel plugin's name: "scalar", "kernels-avx2", ...
//! search_exe_dir = true   # also search the directory of the llmhost executable
//!
//! [threads]
//! count = 0               # 0: one per physical core
//! pin = true              # pin each pool thread to its own physical core
//!
//! [log]
//! level = "info"          # error, warn, info, debug, trace
//!
//! [model]
//! path = "model.gguf"     # relative to this file
//! ctx_size = 0            # tokens of context; 0: the model's, at most 4096
//! kv_type = "f16"         # KV cache elements: f16 or f32
//! repack = true           # repack weights at load for the kernel plugin; false: all zero-copy
//!
//! [generation]
//! max_tokens = 256
//! temperature = 0.8       # 0: greedy
//! top_k = 40              # 0: off
//! top_p = 0.95            # 1: off
//! min_p = 0.05            # 0: off
//! repeat_penalty = 1.0    # 1: off
//! repeat_last_n = 64
//! presence_penalty = 0.0
//! frequency_penalty = 0.0
//! seed = 42               # absent: a random seed each run
//! stop = ["\nUser:"]      # stop before any of these strings
//! system = ""             # system prompt of interactive chat
//!
//! [server]                # llmhost serve
//! host = "127.0.0.1"      # address to listen on
//! port = 8080             # 0: any free port
//! parallel = 4            # sequences decoded together at most
//! max_batch_tokens = 512  # tokens per forward step at most (decode tokens + prompt chunks)
//! kv_cache_tokens = 0     # tokens the KV cache holds in all; 0: parallel × context
//! api_key = ""            # required as `Authorization: Bearer KEY`; also $LLMHOST_API_KEY
//! max_body_bytes = 1048576
//! model_id = ""           # the `model` clients send; empty: the file name without .gguf
//! max_queue = 256         # requests waiting beyond `parallel` before 429
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub plugins: PluginsConfig,
    pub threads: ThreadsConfig,
    pub log: LogConfig,
    pub model: ModelConfig,
    pub generation: GenerationConfig,
    pub server: ServerConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub path: Option<PathBuf>,
    pub ctx_size: usize,
    pub kv_type: String,
    /// Repack weights at load into the kernel plugin's preferred layout (`--no-repack` turns
    /// it off).
    pub repack: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            path: None,
            ctx_size: 0,
            kv_type: "f16".into(),
            repack: true,
        }
    }
}

/// Sampling and stopping; the defaults are llama.cpp's.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationConfig {
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub system: String,
}

impl Default for GenerationConfig {
    /// The sampling defaults are the sampler's (llama.cpp's), stated once there.
    fn default() -> Self {
        let s = crate::sampler::SamplerConfig::default();
        GenerationConfig {
            max_tokens: 256,
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            repeat_last_n: s.repeat_last_n,
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            seed: None,
            stop: Vec::new(),
            system: String::new(),
        }
    }
}

/// `llmhost serve`: where it listens, how much it runs at once, who may use it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    /// 0: any free port (the one bound is printed).
    pub port: u16,
    /// Sequences decoded together at most.
    pub parallel: usize,
    /// Tokens per forward step at most.
    pub max_batch_tokens: usize,
    /// Tokens the KV cache holds in all; 0: `parallel` × the context.
    pub kv_cache_tokens: usize,
    /// Empty: no authentication.
    pub api_key: String,
    pub max_body_bytes: usize,
    /// Empty: the model file's name without `.gguf`.
    pub model_id: String,
    /// Requests that may wait for a free sequence; beyond that the server answers 429.
    pub max_queue: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            parallel: 4,
            max_batch_tokens: 512,
            kv_cache_tokens: 0,
            api_key: String::new(),
            max_body_bytes: 1 << 20,
            model_id: String::new(),
            max_queue: 256,
        }
    }
}

/// Most sequences `[server] parallel` may ask for: far above what a CPU decodes usefully,
/// low enough to catch typos.
pub const MAX_PARALLEL: usize = 1024;
/// The smallest request body limit that still fits an ordinary request.
pub const MIN_BODY_BYTES: usize = 1024;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    pub dirs: Vec<PathBuf>,
    pub kernel: String,
    pub search_exe_dir: bool,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dirs: Vec::new(),
            kernel: "auto".into(),
            search_exe_dir: true,
        }
    }
}

impl PluginsConfig {
    /// The forced kernel plugin, or `None` for automatic selection.
    pub fn forced_kernel(&self) -> Option<&str> {
        match self.kernel.as_str() {
            "" | "auto" => None,
            name => Some(name),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ThreadsConfig {
    pub count: usize,
    pub pin: bool,
}

impl Default for ThreadsConfig {
    fn default() -> Self {
        ThreadsConfig {
            count: 0,
            pin: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// Most threads a pool may have: far above any CPU we run on, low enough to catch typos.
pub const MAX_THREADS: usize = 4096;
const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("config {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

impl Config {
    /// Reads and validates a config file. Relative plugin directories are resolved against
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for dir in &mut config.plugins.dirs {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
        if let Some(model) = &mut config.model.path {
            // `~/` means the home directory, as in a shell, so shipped configs can point
            // into the model cache.
            if let (Ok(rest), Some(home)) = (model.strip_prefix("~"), std::env::var_os("HOME")) {
                *model = PathBuf::from(home).join(rest);
            } else if model.is_relative() {
                *model = base.join(&*model);
            }
        }
        Ok(config)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| line_column(text, s.start))
                .unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                // toml's message can span lines; one line is what the user reads.
                message: e.message().trim().replace('\n', " "),
            }
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.into(),
            message,
        };
        if self.threads.count > MAX_THREADS {
            return Err(invalid(
                "threads.count",
                format!(
                    "{} is more than {MAX_THREADS}; use 0 for one thread per physical core",
                    self.threads.count
                ),
            ));
        }
        if !LOG_LEVELS.contains(&self.log.level.as_str()) {
            return Err(invalid(
                "log.level",
                format!(
                    "unknown level {:?}; expected one of {}",
                    self.log.level,
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        if !["f16", "f32"].contains(&self.model.kv_type.as_str()) {
            return Err(invalid(
                "model.kv_type",
                format!("{:?} is not f16 or f32", self.model.kv_type),
            ));
        }
        let g = &self.generation;
        for (key, value, ok) in [
            (
                "generation.temperature",
                g.temperature,
                g.temperature >= 0.0,
            ),
            ("generation.top_p", g.top_p, (0.0..=1.0).contains(&g.top_p)),
            ("generation.min_p", g.min_p, (0.0..=1.0).contains(&g.min_p)),
            (
                "generation.repeat_penalty",
                g.repeat_penalty,
                g.repeat_penalty > 0.0,
            ),
            (
                "generation.presence_penalty",
                g.presence_penalty,
                g.presence_penalty.is_finite(),
            ),
            (
                "generation.frequency_penalty",
                g.frequency_penalty,
                g.frequency_penalty.is_finite(),
            ),
        ] {
            if !ok || !value.is_finite() {
                return Err(invalid(key, format!("{value} is out of range")));
            }
        }
        self.validate_server(&invalid)?;
        if self.plugins.kernel.trim() != self.plugins.kernel {
            return Err(invalid(
                "plugins.kernel",
                format!("{:?} has surrounding spaces", self.plugins.kernel),
            ));
        }
        Ok(())
    }

    fn validate_server(
        &self,
        invalid: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.host.trim().is_empty() || s.host.contains(char::is_whitespace) {
            return Err(invalid(
                "server.host",
                format!(
                    "{:?} is not an address; use e.g. \"127.0.0.1\" or \"0.0.0.0\"",
                    s.host
                ),
            ));
        }
        if !(1..=MAX_PARALLEL).contains(&s.parallel) {
            return Err(invalid(
                "server.parallel",
                format!("{} is not between 1 and {MAX_PARALLEL}", s.parallel),
            ));
        }
        if s.max_batch_tokens == 0 {
            return Err(invalid(
                "server.max_batch_tokens",
                "must be at least 1".into(),
            ));
        }
        if s.max_body_bytes < MIN_BODY_BYTES {
            return Err(invalid(
                "server.max_body_bytes",
                format!("{} is less than {MIN_BODY_BYTES}", s.max_body_bytes),
            ));
        }
        if s.model_id.trim() != s.model_id {
            return Err(invalid(
                "server.model_id",
                format!("{:?} has surrounding spaces", s.model_id),
            ));
        }
        if s.api_key.trim() != s.api_key {
            return Err(invalid(
                "server.api_key",
                "has surrounding spaces (clients would never match it)".into(),
            ));
        }
        Ok(())
    }

    /// Checks that every configured plugin directory exists (after `load` resolved them).
    pub fn check_plugin_dirs(&self, path: &Path) -> Result<(), ConfigError> {
        for (i, dir) in self.plugins.dirs.iter().enumerate() {
            if !dir.is_dir() {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    key: format!("plugins.dirs[{i}]"),
                    message: format!("{} is not a directory", dir.display()),
                });
            }
        }
        Ok(())
    }
}

/// 1-based line and column of byte offset `at` in `text`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("llmhost.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(Config::default().plugins.forced_kernel(), None);
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            "[plugins]\ndirs = [\"p\"]\nkernel = \"avx2\"\nsearch_exe_dir = false\n\
             [threads]\ncount = 2\npin = false\n[log]\nlevel = \"debug\"\n",
        )
        .unwrap();
        assert_eq!(c.plugins.dirs, vec![PathBuf::from("p")]);
        assert_eq!(c.plugins.forced_kernel(), Some("avx2"));
        assert!(!c.plugins.search_exe_dir);
        assert_eq!(c.threads.count, 2);
        assert!(!c.threads.pin);
        assert_eq!(c.log.level, "debug");
    }

    #[test]
    fn unknown_key_names_key_and_place() {
        let e = parse("[plugins]\nkernal = \"avx2\"\n").unwrap_err();
        assert!(e.contains("llmhost.toml:2:1"), "{e}");
        assert!(e.contains("kernal"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = parse("[plugin]\n").unwrap_err();
        assert!(e.contains("plugin"), "{e}");
    }

    #[test]
    fn wrong_type_names_key() {
        let e = parse("[threads]\ncount = \"two\"\n").unwrap_err();
        assert!(e.contains("llmhost.toml:2:"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = parse("[threads]\ncount = -1\n").unwrap_err();
        assert!(e.contains("llmhost.toml:2:"), "{e}");
    }

    #[test]
    fn bad_values_name_key() {
        let e = parse("[threads]\ncount = 100000\n").unwrap_err();
        assert!(e.contains("threads.count"), "{e}");
        let e = parse("[log]\nlevel = \"loud\"\n").unwrap_err();
        assert!(e.contains("log.level") && e.contains("loud"), "{e}");
    }

    #[test]
    fn relative_plugin_dirs_resolve_against_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plug")).unwrap();
        let path = dir.path().join("llmhost.toml");
        std::fs::write(&path, "[plugins]\ndirs = [\"plug\", \"missing\"]\n").unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.plugins.dirs[0], dir.path().join("plug"));
        let e = c.check_plugin_dirs(&path).unwrap_err().to_string();
        assert!(
            e.contains("plugins.dirs[1]") && e.contains("missing"),
            "{e}"
        );
    }

    #[test]
    fn generation_values_are_checked() {
        let e = parse("[generation]\ntop_p = 1.5\n").unwrap_err();
        assert!(e.contains("generation.top_p"), "{e}");
        let e = parse("[model]\nkv_type = \"q8\"\n").unwrap_err();
        assert!(e.contains("model.kv_type"), "{e}");
        let c =
            parse("[generation]\nseed = 7\nstop = [\"x\"]\n[model]\npath = \"m.gguf\"\n").unwrap();
        assert_eq!(c.generation.seed, Some(7));
        assert_eq!(c.model.path, Some(PathBuf::from("m.gguf")));
        assert!(c.model.repack);
        assert!(!parse("[model]\nrepack = false\n").unwrap().model.repack);
        let e = parse("[model]\nrepack = \"no\"\n").unwrap_err();
        assert!(e.contains("llmhost.toml:2:"), "{e}");
    }

    #[test]
    fn model_path_expands_home_and_resolves_relative() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, "[model]\npath = \"~/m/x.gguf\"\n").unwrap();
        let home = std::env::var_os("HOME").unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.model.path.unwrap(), PathBuf::from(home).join("m/x.gguf"));
        std::fs::write(&path, "[model]\npath = \"x.gguf\"\n").unwrap();
        assert_eq!(
            Config::load(&path).unwrap().model.path.unwrap(),
            dir.path().join("x.gguf")
        );
    }

    #[test]
    fn shipped_example_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(c.model.path.is_some(), "{} names no model", path.display());
                n += 1;
            }
        }
        assert!(
            n >= 4,
            "expected an example config per model in {}",
            dir.display()
        );
    }

    #[test]
    fn server_section_parses_and_is_checked() {
        let c = parse(
            "[server]\nhost = \"0.0.0.0\"\nport = 0\nparallel = 8\napi_key = \"k\"\n\
             max_queue = 0\nmodel_id = \"smol\"\n",
        )
        .unwrap();
        assert_eq!(c.server.host, "0.0.0.0");
        assert_eq!(c.server.port, 0);
        assert_eq!(c.server.parallel, 8);
        assert_eq!(c.server.max_queue, 0);
        assert_eq!(c.server.max_body_bytes, 1 << 20);
        for (text, key) in [
            ("[server]\nparallel = 0\n", "server.parallel"),
            ("[server]\nhost = \"\"\n", "server.host"),
            (
                "[server]\nmax_batch_tokens = 0\n",
                "server.max_batch_tokens",
            ),
            ("[server]\nmax_body_bytes = 10\n", "server.max_body_bytes"),
            ("[server]\napi_key = \" k\"\n", "server.api_key"),
            ("[server]\nmodel_id = \"m \"\n", "server.model_id"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key) && !e.contains('\n'), "{text}: {e}");
        }
        let e = parse("[server]\nport = 70000\n").unwrap_err();
        assert!(e.contains("llmhost.toml:2:"), "{e}");
        let e = parse("[server]\nprot = 1\n").unwrap_err();
        assert!(e.contains("prot"), "{e}");
    }

    #[test]
    fn missing_file_is_clear() {
        let e = Config::load(Path::new("/nonexistent/llmhost.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/llmhost.toml"), "{e}");
    }
}
