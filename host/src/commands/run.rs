//! `llmhost run`: one completion of `--prompt` (stdout carries only the generated text), or an
//! interactive chat on a terminal, or a completion of stdin when it is not a terminal.

use super::args::{ModelArgs, SamplingArgs};
use crate::chat::{ChatTemplate, Message};
use crate::engine::Engine;
use crate::generate::{generate_reusing, GenerateOptions, Generation, StopReason, DEFAULT_BATCH};
use crate::session::{model_path, Session};
use crate::settings::Settings;
use anyhow::Context;
use std::io::{BufRead, IsTerminal, Read, Write};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Complete this text and exit. Without it: an interactive chat on a terminal, or a
    /// completion of standard input.
    #[arg(short = 'p', long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Send --prompt (or stdin) as a user message through the model's chat template instead
    /// of completing it as raw text.
    #[arg(long)]
    pub chat: bool,
    /// System prompt of the chat [default: [generation] system].
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
}

fn summary(g: &Generation, session: &Session, engine: &Engine<'_>) -> String {
    let stop = match &g.stop {
        StopReason::EndOfGeneration(_) => "end of generation".to_string(),
        StopReason::MaxTokens => "token limit".to_string(),
        StopReason::StopString(s) => format!("stop string {s:?}"),
        StopReason::ContextFull => format!("context full ({} tokens)", engine.n_ctx()),
    };
    format!(
        "prompt: {} tokens, {:.1} tok/s | generated: {} tokens, {:.1} tok/s | stopped: {stop} | kernels: {} | threads: {}",
        g.prompt_tokens,
        g.prompt_tok_per_s(),
        g.tokens.len(),
        g.gen_tok_per_s(),
        session.kernel.kernels.name(),
        session.pool.n_threads()
    )
}

pub fn run(args: &RunArgs, settings: &Settings) -> anyhow::Result<()> {
    let (sampler, max_tokens, stop) = args.sampling.resolve(&settings.config.generation);
    sampler.validate().map_err(anyhow::Error::msg)?;
    let options = GenerateOptions {
        max_tokens,
        sampler,
        stop,
        n_batch: DEFAULT_BATCH,
    };
    let path = model_path(args.model.model.as_deref(), settings)?;
    let session = Session::open(&path, settings)?;
    let mut engine = session.engine(&args.model.engine_options(settings))?;
    tracing::info!(
        "{} ({}) loaded in {:.2} s on {} with {} threads, context {} tokens",
        path.display(),
        engine.info().architecture,
        session.load_time.as_secs_f64(),
        session.kernel.kernels.name(),
        session.pool.n_threads(),
        engine.n_ctx()
    );
    let system = args
        .system
        .clone()
        .unwrap_or_else(|| settings.config.generation.system.clone());
    let template = session.chat_template(&engine.info().architecture);

    let prompt = match &args.prompt {
        Some(p) => Some(p.clone()),
        None if !std::io::stdin().is_terminal() => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the prompt from standard input")?;
            Some(text)
        }
        None => None,
    };
    match prompt {
        Some(text) => {
            let text = if args.chat {
                let mut messages = Vec::new();
                if !system.is_empty() {
                    messages.push(Message::new("system", &system));
                }
                messages.push(Message::new("user", &text));
                template.render_prompt(
                    &messages,
                    true,
                    session.tokenizer.add_bos(),
                    session.tokenizer.add_eos(),
                )?
            } else {
                text
            };
            // Raw completion: BOS as the model wants it; special-token text in a templated
            // prompt is parsed as the special tokens it names.
            let ids = session.tokenizer.encode(&text, true, args.chat);
            let mut out = std::io::stdout().lock();
            let g = generate_reusing(
                &mut engine,
                &session.pool,
                &session.tokenizer,
                &ids,
                0,
                &options,
                0,
                |piece| {
                    let _ = out.write_all(piece.as_bytes());
                    let _ = out.flush();
                },
            )?;
            let _ = writeln!(out);
            eprintln!("{}", summary(&g, &session, &engine));
        }
        None => chat_loop(&session, &mut engine, &template, &system, &options)?,
    }
    Ok(())
}

/// The interactive chat: each turn renders the whole conversation with the chat template and
/// evaluates only the tokens after the longest prefix already in the cache.
fn chat_loop(
    session: &Session,
    engine: &mut Engine<'_>,
    template: &ChatTemplate,
    system: &str,
    options: &GenerateOptions,
) -> anyhow::Result<()> {
    eprintln!("Chat with the model. Type /reset to start over, /exit or Ctrl-D to leave.");
    let mut messages: Vec<Message> = Vec::new();
    if !system.is_empty() {
        messages.push(Message::new("system", system));
    }
    let first_len = messages.len();
    let mut cached: Vec<u32> = Vec::new();
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                messages.truncate(first_len);
                cached.clear();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", line));
        // The tokenizer adds BOS/EOS itself when the model asks: strip the template's copies.
        let tok = &session.tokenizer;
        let text = template.render_prompt(&messages, true, tok.add_bos(), tok.add_eos())?;
        let ids = session.tokenizer.encode(&text, true, true);
        let reuse = cached.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        let mut out = std::io::stdout().lock();
        let g = match generate_reusing(
            engine,
            &session.pool,
            &session.tokenizer,
            &ids,
            reuse,
            options,
            0,
            |piece| {
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            },
        ) {
            Ok(g) => g,
            Err(e) => {
                // The conversation outgrew the context: say so and start over.
                eprintln!("\nerror: {e:#}");
                messages.truncate(first_len);
                cached.clear();
                continue;
            }
        };
        let _ = writeln!(out);
        eprintln!("[{}]", summary(&g, session, engine));
        cached = ids;
        cached.extend(&g.tokens);
        // The last sampled token was never evaluated.
        cached.pop();
        messages.push(Message::new("assistant", &g.text));
    }
}
