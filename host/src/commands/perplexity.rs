//! `llmhost perplexity`: llama-perplexity's measure on a text file.

use super::args::ModelArgs;
use crate::generate::DEFAULT_BATCH;
use crate::perplexity::perplexity;
use crate::session::{model_path, Session};
use crate::settings::Settings;
use anyhow::Context;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to score.
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: PathBuf,
    /// Tokens per prefill step [default: 512].
    #[arg(short = 'b', long = "batch-size", value_name = "N")]
    pub batch: Option<usize>,
}

/// llama-perplexity's default chunk size.
pub const DEFAULT_PPL_CTX: usize = 512;

pub fn run(args: &PerplexityArgs, settings: &Settings) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let n_ctx = args.model.ctx_size.map_or(DEFAULT_PPL_CTX, |n| n as usize);
    let path = model_path(args.model.model.as_deref(), settings)?;
    let session = Session::open(&path, settings)?;
    let mut options = args.model.engine_options(settings);
    options.n_ctx = Some(n_ctx);
    let mut engine = session.engine(&options)?;
    let tok = &session.tokenizer;
    let tokens = tok.encode(&text, true, false);
    let bos = if tok.add_bos() { tok.bos() } else { None };
    eprintln!(
        "{}: {} tokens, {} chunks of {n_ctx}, kernels {}, {} threads",
        args.file.display(),
        tokens.len(),
        tokens.len() / n_ctx,
        session.kernel.kernels.name(),
        session.pool.n_threads()
    );
    let result = perplexity(
        &mut engine,
        &session.pool,
        &tokens,
        bos,
        n_ctx,
        args.batch.unwrap_or(DEFAULT_BATCH),
        |chunk, n, ppl| {
            eprint!("[{chunk}/{n}] {ppl:.4}  ");
            let _ = std::io::stderr().flush();
        },
    )?;
    eprintln!();
    println!(
        "Final estimate: PPL = {:.4} +/- {:.5}",
        result.ppl, result.error
    );
    eprintln!(
        "{} tokens scored in {:.1} s ({:.1} tok/s)",
        result.scored_tokens,
        result.seconds,
        (result.chunks * n_ctx) as f64 / result.seconds
    );
    Ok(())
}
