//! `llmhost serve`: load one model, start the inference thread, and answer the OpenAI API
//! over HTTP until Ctrl-C or SIGTERM, then finish what is in flight and exit.

use super::args::ModelArgs;
use crate::config::MAX_PARALLEL;
use crate::serve::http::{self, App, ServerOptions};
use crate::serve::scheduler::{Scheduler, SchedulerOptions};
use crate::session::{model_path, Session};
use crate::settings::Settings;
use anyhow::Context;
use std::io::Write;
use std::sync::Arc;

/// The environment variable that sets the API key (over `[server] api_key`).
pub const API_KEY_ENV: &str = "LLMHOST_API_KEY";

#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = ENDPOINTS)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on [default: [server] host, else 127.0.0.1].
    #[arg(long, value_name = "ADDR")]
    pub host: Option<String>,
    /// Port to listen on; 0 picks any free port (the one bound is printed) [default: [server]
    /// port, else 8080].
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Sequences decoded together at most [default: [server] parallel, else 4].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=MAX_PARALLEL as i64))]
    pub parallel: Option<u32>,
}

const ENDPOINTS: &str = "\
Endpoints (OpenAI-compatible; errors are OpenAI error objects):
  POST /v1/chat/completions  chat through the model's template; \"stream\": true for SSE
  POST /v1/completions       complete a prompt (text or token ids); \"stream\": true for SSE
  GET  /v1/models            the loaded model (its id is what `model` must say)
  GET  /health               {\"status\":\"ok\"}; never needs the key
  GET  /metrics              Prometheus text: requests, tokens, latencies, queue, KV cache

With [server] api_key or $LLMHOST_API_KEY set, every endpoint but /health needs the header
`Authorization: Bearer KEY`. Sampling fields a request leaves out take the [generation]
defaults. Ctrl-C or SIGTERM stops accepting, finishes the requests in flight, and exits.

Example:
  llmhost serve -m SmolLM2-135M-Instruct.Q4_1.gguf --port 8080
  curl localhost:8080/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Hi!\"}]}'";

pub fn run(args: &ServeArgs, settings: &Settings) -> anyhow::Result<()> {
    let server = &settings.config.server;
    let host = args.host.clone().unwrap_or_else(|| server.host.clone());
    let port = args.port.unwrap_or(server.port);
    let parallel = args.parallel.map_or(server.parallel, |n| n as usize);
    let api_key = std::env::var(API_KEY_ENV)
        .ok()
        .filter(|k| !k.is_empty())
        .or_else(|| Some(server.api_key.clone()).filter(|k| !k.is_empty()));

    // Bind before the (slow) model load, so that a port in use fails at once.
    let listener = std::net::TcpListener::bind((host.as_str(), port))
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .with_context(|| {
            format!(
                "cannot listen on {host}:{port}; pick another --port or --host ([server] port, host; port 0: any free port)"
            )
        })?;
    let address = listener.local_addr().context("reading the bound address")?;

    let path = model_path(args.model.model.as_deref(), settings)?;
    let session = Session::open(&path, settings)?;
    let scheduler = Scheduler::start(
        session,
        args.model.engine_options(settings),
        SchedulerOptions {
            max_seqs: parallel,
            max_batch_tokens: server.max_batch_tokens,
            kv_tokens: (server.kv_cache_tokens != 0).then_some(server.kv_cache_tokens),
            max_queue: server.max_queue,
            model_id: (!server.model_id.is_empty()).then(|| server.model_id.clone()),
        },
    )
    .with_context(|| format!("starting the inference thread for {}", path.display()))?;
    let handle = scheduler.handle();
    let model = handle.model().clone();
    let app = App::new(
        Arc::new(handle),
        ServerOptions {
            api_key,
            max_body_bytes: server.max_body_bytes,
            max_in_flight: parallel.saturating_add(server.max_queue),
            generation: settings.config.generation.clone(),
        },
    );

    // The HTTP side only parses, tokenizes and copies bytes: two workers keep it off the
    // cores the inference pool computes on.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .thread_name("llmhost-http")
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    let drained = runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)
            .context("handing the socket to the HTTP runtime")?;
        println!(
            "llmhost serve: listening on http://{address} (model {}, kernel {}, {} threads, {parallel} parallel sequences)",
            model.id, model.kernel, model.threads
        );
        let _ = std::io::stdout().flush();
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
        let signal_app = app.clone();
        let shutdown = async move {
            shutdown_signal().await;
            let in_flight = signal_app.in_flight();
            eprintln!(
                "llmhost serve: shutting down: finishing {in_flight} request{} in flight (Ctrl-C again to quit at once)",
                if in_flight == 1 { "" } else { "s" }
            );
            let _ = drained_tx.send(in_flight);
            tokio::spawn(async {
                shutdown_signal().await;
                eprintln!("llmhost serve: second signal, quitting without finishing");
                std::process::exit(130);
            });
        };
        http::serve(listener, app.router(), shutdown)
            .await
            .context("serving HTTP")?;
        anyhow::Ok(drained_rx.await.unwrap_or(0))
    })?;
    runtime.shutdown_background();
    scheduler.shutdown();
    eprintln!(
        "llmhost serve: stopped; {drained} request{} drained",
        if drained == 1 { " was" } else { "s were" }
    );
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM. When a handler cannot be installed, that signal simply
/// never arrives (the other still works).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
