//! Everything a command needs to run a model, set up once: the mapped GGUF file, the plugins,
//! the chosen kernels, the thread pool, the tokenizer. `run`, `perplexity` (and later `serve`
//! and `bench`) start from here.

use crate::chat::ChatTemplate;
use crate::cpu::{self, Topology};
use crate::engine::{Engine, EngineOptions};
use crate::gguf::GgufFile;
use crate::plugins::{PluginRegistry, SelectedKernel};
use crate::pool::ThreadPool;
use crate::settings::Settings;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context};
use plugin_api::CpuInfo;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The loaded file, plugins, pool and tokenizer; [`Session::engine`] builds the model on top.
pub struct Session {
    pub file: GgufFile,
    pub registry: PluginRegistry,
    pub kernel: SelectedKernel,
    pub pool: ThreadPool,
    /// Shared: `serve` tokenizes on the HTTP side and detokenizes on the inference thread.
    pub tokenizer: Arc<Tokenizer>,
    pub cpu: CpuInfo,
    pub topology: Topology,
    pub load_time: Duration,
}

/// Where the model is: `-m` over `[model] path`.
pub fn model_path(flag: Option<&Path>, settings: &Settings) -> anyhow::Result<PathBuf> {
    match flag
        .map(Path::to_path_buf)
        .or_else(|| settings.config.model.path.clone())
    {
        Some(p) if p.is_file() => Ok(p),
        Some(p) => bail!(
            "model file {} does not exist: give the path of a .gguf file with -m/--model or [model] path (scripts/fetch_models.py --list shows the test models)",
            p.display()
        ),
        None => bail!(
            "no model given: pass -m/--model FILE.gguf or set [model] path in the config (scripts/fetch_models.py fetches the test models)"
        ),
    }
}

/// Touches every page of the tensor data once, so the first token does not pay for page
/// faults; shows a progress bar when stderr is a terminal.
fn warm_up(file: &GgufFile) {
    let total: u64 = file.tensors().iter().map(|t| t.size).sum();
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "loading {msg} [{bar:30}] {bytes}/{total_bytes} ({eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let name = Path::new(file.name()).file_name();
        bar.set_message(
            name.map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        Some(bar)
    } else {
        None
    };
    let mut checksum = 0u8;
    for t in file.tensors() {
        let data = file.tensor_data(t);
        for page in data.chunks(4096) {
            checksum ^= page[0];
        }
        if let Some(bar) = &bar {
            bar.inc(t.size);
        }
    }
    std::hint::black_box(checksum);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

impl Session {
    pub fn open(model: &Path, settings: &Settings) -> anyhow::Result<Session> {
        let t0 = Instant::now();
        let (cpu, topology) = cpu::detect_with_topology();
        let registry = PluginRegistry::discover(&cpu, &settings.plugin_sources);
        let kernel = registry.select_kernel(settings.forced_kernel.as_deref())?;
        let file = GgufFile::open(model)?;
        warm_up(&file);
        let tokenizer = Arc::new(
            Tokenizer::from_gguf(file.metadata())
                .with_context(|| format!("reading the tokenizer of {}", model.display()))?,
        );
        let pin = settings
            .pin_threads
            .then(|| topology.pin_plan(settings.threads));
        let pool = ThreadPool::new(settings.threads, pin).context("starting the thread pool")?;
        Ok(Session {
            file,
            registry,
            kernel,
            pool,
            tokenizer,
            cpu,
            topology,
            load_time: t0.elapsed(),
        })
    }

    /// The model's chat template (from the GGUF, else the architecture's family default).
    pub fn chat_template(&self, architecture: &str) -> ChatTemplate {
        let text = |id: Option<u32>| {
            id.and_then(|id| self.tokenizer.token_text(id))
                .unwrap_or("")
                .to_string()
        };
        ChatTemplate::from_gguf_str(
            self.file.metadata().get_str("tokenizer.chat_template"),
            architecture,
            &text(self.tokenizer.bos()),
            &text(self.tokenizer.eos()),
        )
    }

    /// Builds the model on the chosen kernels.
    pub fn engine(&self, options: &EngineOptions) -> anyhow::Result<Engine<'_>> {
        Engine::load(
            &self.file,
            &self.registry,
            self.kernel.kernels.clone(),
            options,
        )
    }
}
