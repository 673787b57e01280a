//! `llmhost`: the command-line entry point. Parses flags, resolves settings, and runs one
//! command; every failure ends as one `error:` line on stderr and a non-zero exit code.

use clap::{Parser, Subcommand};
use llmhost::{
    commands::{bench::BenchArgs, perplexity::PerplexityArgs, run::RunArgs, serve::ServeArgs},
    cpu,
    plugins::{PluginKind, PluginRegistry, PluginStatus},
    report,
    settings::{CommonArgs, Settings},
};
use std::process::ExitCode;

/// llmhost: a CPU-first LLM inference engine with pluggable kernels.
///
/// At start-up llmhost detects this CPU's instruction-set features and topology, then loads
/// plugins from its plugin directories: kernel plugins (quantized matmul, attention and small
/// ops for one instruction set: kernels-scalar, kernels-avx2, ...) and architecture plugins
/// (the forward pass of a model family). Of the kernel plugins that can run on this CPU, the
/// one with the highest score is used unless --kernel or [plugins] kernel names one.
///
/// Plugin directories, searched in this order: --plugin-dir, [plugins] dirs of the config,
/// $LLMHOST_PLUGIN_PATH (separated like PATH), and the directory of the llmhost executable.
/// A plugin's manifest (which CPU features it needs, which plugin-api it speaks) is read from
/// the file before it is opened, so a plugin this CPU cannot run is never loaded.
#[derive(Debug, Parser)]
#[command(
    name = "llmhost",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show this CPU (features, cores, caches), every plugin found with its score, and which
    /// kernel plugin would run and why.
    Info,
    /// List the plugins found, one per line, with what became of each (loaded with its score,
    /// skipped and why, failed and why). `--all` also lists libraries that are not plugins.
    Plugins {
        /// Also list the libraries in the plugin directories that are not llmhost plugins.
        #[arg(long)]
        all: bool,
    },
    /// Generate text: complete --prompt (stdout carries only the generated text; logs and a
    /// summary go to stderr), or chat interactively on a terminal using the model's chat
    /// template. Flags override the config's [model] and [generation] keys.
    Run(RunArgs),
    /// Perplexity of a text file, computed as llama-perplexity does (chunks of -c tokens,
    /// default 512; the second half of each chunk scored), so the numbers compare.
    Perplexity(PerplexityArgs),
    /// Measure prompt processing (ppN) and generation (tgN) speed the way llama-bench does,
    /// with its flags, table and JSON fields, so the numbers compare; or, with
    /// --memory-bandwidth, this machine's sustained memory read bandwidth.
    Bench(BenchArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions,
    /// /v1/completions, /v1/models, /health, /metrics), batching concurrent requests.
    /// Flags override the config's [model] and [server] keys; `serve --help` lists the
    /// endpoints.
    Serve(ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the error and its causes, joined.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LLMHOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (cpu, topology) = cpu::detect_with_topology();
    let settings = Settings::resolve(&cli.common, &topology)?;
    init_logging(&settings.log_level);
    tracing::debug!(?settings, "settings resolved");
    match cli.command {
        Command::Info => {
            let registry = PluginRegistry::discover(&cpu, &settings.plugin_sources);
            Ok(info(&settings, &topology, &registry))
        }
        Command::Plugins { all } => {
            let registry = PluginRegistry::discover(&cpu, &settings.plugin_sources);
            Ok(plugins(&registry, all))
        }
        Command::Run(args) => {
            llmhost::commands::run::run(&args, &settings)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Perplexity(args) => {
            llmhost::commands::perplexity::run(&args, &settings)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            llmhost::commands::bench::run(&args, &settings)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            llmhost::commands::serve::run(&args, &settings)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `llmhost info`: exits 0 when a kernel plugin can be chosen, 1 when none can.
fn info(settings: &Settings, topology: &cpu::Topology, registry: &PluginRegistry) -> ExitCode {
    println!(
        "llmhost {} (plugin-api {})\n",
        env!("CARGO_PKG_VERSION"),
        plugin_api::PLUGIN_API_VERSION
    );
    print!(
        "{}",
        report::cpu_section(
            registry.cpu(),
            topology,
            settings.threads,
            settings.pin_threads
        )
    );
    if let Some(path) = &settings.config_path {
        println!("  config     {}", path.display());
    }

    println!("\nPlugin directories, in search order");
    for dir in registry.searched_dirs() {
        println!("  {dir}");
    }

    println!("\nPlugins");
    let plugins: Vec<_> = registry
        .reports()
        .iter()
        .filter(|r| r.is_plugin())
        .collect();
    if plugins.is_empty() {
        println!("  (none found)");
    }
    for r in &plugins {
        let kind = r.manifest.as_ref().map_or("?", |m| m.kind.as_str());
        println!("  {kind:<7} {r}");
    }
    let others = registry.reports().len() - plugins.len();
    if others > 0 {
        println!(
            "  ({others} other librar{} in these directories {} not llmhost plugins: `llmhost plugins --all` lists them)",
            if others == 1 { "y" } else { "ies" },
            if others == 1 { "is" } else { "are" }
        );
    }

    println!();
    let forced = settings.forced_kernel.as_deref();
    match registry.select_kernel(forced) {
        Ok(selected) => {
            let why = match forced {
                Some(name) => format!("forced by {} = {name:?}", settings.kernel_source),
                None => selected.reason.clone(),
            };
            println!(
                "Kernel plugin: {} {} (chosen: {why})",
                selected.kernels.name(),
                selected.kernels.info().version
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("Kernel plugin: none");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `llmhost plugins`: one line per plugin (and, with `--all`, per non-plugin library).
fn plugins(registry: &PluginRegistry, all: bool) -> ExitCode {
    let mut shown = 0;
    for r in registry.reports() {
        if !all && matches!(r.status, PluginStatus::NotAPlugin { .. }) {
            continue;
        }
        let kind = match r.manifest.as_ref().map(|m| m.kind) {
            Some(PluginKind::Kernel) => "kernel",
            Some(PluginKind::Arch) => "arch",
            None => "-",
        };
        println!("{kind:<7} {r}");
        shown += 1;
    }
    if shown == 0 {
        eprintln!(
            "no plugins found; searched: {}",
            registry
                .searched_dirs()
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    ExitCode::SUCCESS
}
