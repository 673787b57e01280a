//! The real models of the end-to-end tests: fetched (once, into the cache) by the project's
//! own `scripts/fetch_models.py`, checked by sha256 there, and opened with the plugins this
//! build made.

use crate::fixtures::target_dir;
use llmhost::engine::{Engine, EngineOptions};
use llmhost::gguf::GgufFile;
use llmhost::plugins::{Kernels, PluginRegistry, PluginSources};
use llmhost::pool::ThreadPool;
use llmhost::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The path of model `name` (see `scripts/fetch_models.py --list`), fetching it if needed.
pub fn model_path(name: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch_models.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--path", name])
        .output()
        .expect("python3 runs scripts/fetch_models.py");
    assert!(
        out.status.success(),
        "fetching {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("a path").trim())
}

/// The directory cargo put this build's plugins in (`target/<profile>`).
pub fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| target_dir().join("debug"));
    assert!(
        dir.join(crate::fixtures::lib_file_name("arch_llama"))
            .exists(),
        "no plugins in {}: build them first (`cargo build --workspace`, as scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// A model file with the plugins, kernels, pool and tokenizer to run it.
pub struct ModelStack {
    pub file: GgufFile,
    pub registry: PluginRegistry,
    pub kernels: Kernels,
    pub pool: ThreadPool,
    pub tokenizer: Tokenizer,
}

impl ModelStack {
    /// Opens model `name` with the kernel plugin `LLMHOST_TEST_KERNEL` names, or the best one.
    pub fn open(name: &str) -> ModelStack {
        ModelStack::open_path(&model_path(name))
    }

    /// Opens the GGUF file at `path` (a synthetic model under `tests/data`, say) the way
    /// [`ModelStack::open`] opens a fetched one.
    pub fn open_path(path: &Path) -> ModelStack {
        let file = GgufFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let cpu = llmhost::cpu::detect();
        let registry = PluginRegistry::discover(&cpu, &PluginSources::only([plugin_dir()]));
        let forced = std::env::var("LLMHOST_TEST_KERNEL").ok();
        let kernels = registry
            .select_kernel(forced.as_deref())
            .unwrap_or_else(|e| panic!("{e}"))
            .kernels;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let pool = ThreadPool::new(threads, None).expect("thread pool");
        let tokenizer = Tokenizer::from_gguf(file.metadata()).unwrap_or_else(|e| panic!("{e}"));
        ModelStack {
            file,
            registry,
            kernels,
            pool,
            tokenizer,
        }
    }

    pub fn engine(&self, n_ctx: usize) -> Engine<'_> {
        Engine::load(
            &self.file,
            &self.registry,
            self.kernels.clone(),
            &EngineOptions {
                n_ctx: Some(n_ctx),
                kv_type: match std::env::var("LLMHOST_TEST_KV").as_deref() {
                    Ok("f32") => plugin_api::GgmlType::F32,
                    _ => plugin_api::GgmlType::F16,
                },
                ..EngineOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
    }
}
