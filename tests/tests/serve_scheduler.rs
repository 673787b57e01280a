//! The serve scheduler on a real model (SmolLM2-135M), without HTTP: requests batched
//! together produce exactly what each produces alone, a shared prompt prefix is reused from
//! the KV cache, cancelled requests give their KV blocks back, requests that do not fit wait
//! for room, and shutdown finishes what is in flight.

use llmhost::engine::EngineOptions;
use llmhost::generate::{generate, GenerateOptions};
use llmhost::sampler::SamplerConfig;
use llmhost::serve::protocol::{Event, FinishReason, GenerationRequest, SubmitError, Usage};
use llmhost::serve::scheduler::{Scheduler, SchedulerHandle, SchedulerOptions};
use llmhost::session::Session;
use llmhost::settings::{CommonArgs, Settings};
use llmhost_tests::models::{model_path, plugin_dir, ModelStack};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

const MODEL: &str = "smollm2-135m";
const N_CTX: usize = 512;

fn start(parallel: usize, kv_tokens: Option<usize>) -> Scheduler {
    let args = CommonArgs {
        plugin_dirs: vec![plugin_dir()],
        kernel: std::env::var("LLMHOST_TEST_KERNEL").ok(),
        threads: Some(2),
        ..CommonArgs::default()
    };
    let settings = Settings::resolve(&args, &llmhost::cpu::detect_with_topology().1).unwrap();
    let session = Session::open(&model_path(MODEL), &settings).unwrap();
    let engine = EngineOptions {
        n_ctx: Some(N_CTX),
        ..EngineOptions::default()
    };
    let options = SchedulerOptions {
        max_seqs: parallel,
        max_batch_tokens: 64,
        kv_tokens,
        ..SchedulerOptions::default()
    };
    Scheduler::start(session, engine, options).unwrap()
}

/// What one request produced.
#[derive(Debug)]
struct Outcome {
    tokens: Vec<u32>,
    text: String,
    finish: Option<FinishReason>,
    usage: Usage,
    failed: Option<String>,
}

fn submit(h: &SchedulerHandle, prompt: Vec<u32>, max_tokens: usize) -> UnboundedReceiver<Event> {
    submit_with(h, prompt, max_tokens, false)
}

fn submit_with(
    h: &SchedulerHandle,
    prompt: Vec<u32>,
    max_tokens: usize,
    ignore_eos: bool,
) -> UnboundedReceiver<Event> {
    let (tx, rx) = unbounded_channel();
    h.submit(GenerationRequest {
        prompt,
        max_tokens,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        top_logprobs: None,
        ignore_eos,
        events: tx,
    })
    .unwrap();
    rx
}

fn collect(mut rx: UnboundedReceiver<Event>) -> Outcome {
    let mut out = Outcome {
        tokens: Vec::new(),
        text: String::new(),
        finish: None,
        usage: Usage::default(),
        failed: None,
    };
    while let Some(event) = rx.blocking_recv() {
        match event {
            Event::Token(t) => {
                out.tokens.push(t.id);
                out.text.push_str(&t.text);
            }
            Event::Done(c) => {
                out.text.push_str(&c.tail);
                out.finish = Some(c.finish);
                out.usage = c.usage;
                break;
            }
            Event::Failed(why) => {
                out.failed = Some(why);
                break;
            }
        }
    }
    out
}

/// Greedy tokens of `prompt` generated alone, the way `llmhost run` does it.
fn solo(stack: &ModelStack, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let mut engine = stack.engine(N_CTX);
    let options = GenerateOptions {
        max_tokens,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        n_batch: 512,
    };
    generate(
        &mut engine,
        &stack.pool,
        &stack.tokenizer,
        prompt,
        &options,
        0,
        |_| {},
    )
    .unwrap()
    .tokens
}

fn wait_until(h: &SchedulerHandle, what: &str, done: impl Fn(&SchedulerHandle) -> bool) {
    let t0 = Instant::now();
    while !done(h) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}: {:?}",
            h.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const PROMPTS: [&str; 4] = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "The three primary colors are",
];

#[test]
fn batched_requests_generate_what_each_generates_alone() {
    let stack = ModelStack::open(MODEL);
    let scheduler = start(4, None);
    let h = scheduler.handle();
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| stack.tokenizer.encode(p, true, false))
        .collect();
    // All four at once: their prompts share steps, then their decode tokens do.
    let receivers: Vec<_> = prompts.iter().map(|p| submit(&h, p.clone(), 24)).collect();
    let outcomes: Vec<Outcome> = receivers.into_iter().map(collect).collect();
    for (prompt, out) in prompts.iter().zip(&outcomes) {
        assert_eq!(out.failed, None);
        assert_eq!(out.tokens, solo(&stack, prompt, 24), "{:?}", out.text);
        assert_eq!(out.usage.prompt_tokens, prompt.len());
        assert_eq!(out.usage.completion_tokens, out.tokens.len());
        assert_eq!(out.text, stack.tokenizer.decode(&out.tokens, false));
    }
    assert!(h.stats().steps > 0);
    wait_until(&h, "all blocks back", |h| h.stats().kv_blocks_used == 0);
}

#[test]
fn a_shared_prefix_is_reused_and_changes_nothing() {
    let stack = ModelStack::open(MODEL);
    let scheduler = start(2, None);
    let h = scheduler.handle();
    let system = "You are a helpful assistant who answers questions about geography, \
        history and science briefly and precisely, in one sentence, without preamble. "
        .repeat(3);
    let first = stack.tokenizer.encode(
        &format!("{system}Q: What is the capital of Spain?\nA:"),
        true,
        false,
    );
    let second =
        stack
            .tokenizer
            .encode(&format!("{system}Q: Name a large ocean.\nA:"), true, false);
    let shared = first
        .iter()
        .zip(&second)
        .take_while(|(a, b)| a == b)
        .count();
    assert!(shared > 64, "the prompts share {shared} tokens");

    let a = collect(submit(&h, first.clone(), 8));
    assert_eq!(a.usage.cached_prompt_tokens, 0);
    let b = collect(submit(&h, second.clone(), 8));
    let block = h.stats().kv_block_tokens;
    assert_eq!(
        b.usage.cached_prompt_tokens,
        shared / block * block,
        "every full block of the shared prefix is reused"
    );
    assert_eq!(b.tokens, solo(&stack, &second, 8));
    let stats = h.stats();
    assert!(stats.kv_blocks_cached > 0, "{stats:?}");
    assert_eq!(stats.kv_blocks_used, 0, "{stats:?}");
    assert_eq!(
        stats.prompt_tokens_cached,
        b.usage.cached_prompt_tokens as u64
    );
}

#[test]
fn cancelled_requests_give_their_blocks_back() {
    let scheduler = start(4, None);
    let h = scheduler.handle();
    let tok = h.model().tokenizer.clone();
    let mut receivers: Vec<_> = PROMPTS
        .iter()
        .map(|p| submit(&h, tok.encode(p, true, false), 400))
        .collect();
    // Wait for a first token from each, then hang up.
    for rx in &mut receivers {
        assert!(matches!(rx.blocking_recv(), Some(Event::Token(_))));
    }
    // (Stats are published after each step, a moment after the tokens are sent.)
    wait_until(&h, "blocks in use", |h| h.stats().kv_blocks_used > 0);
    drop(receivers);
    wait_until(&h, "cancelled sequences to be freed", |h| {
        let s = h.stats();
        s.active == 0 && s.kv_blocks_used == 0
    });
    assert_eq!(h.stats().requests_cancelled, 4);
    // And it keeps serving.
    let out = collect(submit(&h, tok.encode("Hello", true, false), 4));
    assert_eq!(out.tokens.len(), 4);
}

#[test]
fn requests_wait_for_room_in_a_small_pool() {
    let stack = ModelStack::open(MODEL);
    // Room for about one request at a time, with four parallel sequences allowed.
    let scheduler = start(4, Some(96));
    let h = scheduler.handle();
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| stack.tokenizer.encode(p, true, false))
        .collect();
    let receivers: Vec<_> = prompts.iter().map(|p| submit(&h, p.clone(), 40)).collect();
    for (prompt, rx) in prompts.iter().zip(receivers) {
        let out = collect(rx);
        assert_eq!(out.failed, None);
        assert_eq!(out.tokens, solo(&stack, prompt, 40));
    }
    // One that can never fit fails with a reason instead of waiting forever.
    let out = collect(submit(&h, prompts[0].clone(), 400));
    let why = out.failed.expect("too big for the pool");
    assert!(why.contains("KV blocks"), "{why}");
}

#[test]
fn shutdown_finishes_requests_in_flight_and_refuses_new_ones() {
    let scheduler = start(2, None);
    let h = scheduler.handle();
    let tok = h.model().tokenizer.clone();
    let a = submit(&h, tok.encode(PROMPTS[0], true, false), 16);
    let b = submit(&h, tok.encode(PROMPTS[1], true, false), 16);
    scheduler.shutdown();
    for rx in [a, b] {
        let out = collect(rx);
        assert_eq!(out.failed, None);
        assert_eq!(out.finish, Some(FinishReason::Length));
        assert_eq!(out.tokens.len(), 16);
    }
    let (tx, _rx) = unbounded_channel();
    let refused = h.submit(GenerationRequest {
        prompt: vec![1],
        max_tokens: 1,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        top_logprobs: None,
        ignore_eos: false,
        events: tx,
    });
    assert_eq!(refused.unwrap_err(), SubmitError::ShuttingDown);
}

#[test]
fn bad_requests_fail_with_a_reason() {
    let scheduler = start(1, None);
    let h = scheduler.handle();
    let out = collect(submit(&h, Vec::new(), 4));
    assert!(out.failed.unwrap().contains("empty"));
    let out = collect(submit(&h, vec![1; N_CTX], 4));
    assert!(out.failed.unwrap().contains("context"));
    let out = collect(submit(&h, vec![u32::MAX], 4));
    assert!(out.failed.unwrap().contains("vocabulary"));
    // The context ends generation with "length" (unless the model ends it first).
    let out = collect(submit(&h, vec![1; N_CTX - 3], 100));
    assert_eq!(out.failed, None);
    assert!(out.tokens.len() <= 3, "{out:?}");
    if out.tokens.len() == 3 {
        assert_eq!(out.finish, Some(FinishReason::Length));
    }
}

#[test]
fn ignore_eos_generates_max_tokens_past_the_end_of_the_answer() {
    let scheduler = start(1, None);
    let h = scheduler.handle();
    let model = h.model().clone();
    let tok = &model.tokenizer;
    let text = model
        .template
        .render_prompt(
            &[llmhost::chat::Message::user("What is 2 + 2?")],
            true,
            tok.add_bos(),
            tok.add_eos(),
        )
        .unwrap();
    let prompt = tok.encode(&text, true, true);
    let short = collect(submit(&h, prompt.clone(), 64));
    assert_eq!(short.finish, Some(FinishReason::Stop), "{short:?}");
    assert!(short.tokens.len() < 64);
    let long = collect(submit_with(&h, prompt, 64, true));
    assert_eq!(long.finish, Some(FinishReason::Length));
    assert_eq!(long.tokens.len(), 64);
    assert_eq!(long.tokens[..short.tokens.len()], short.tokens[..]);
    assert!(long.tokens.iter().any(|&t| tok.is_end_of_generation(t)));
}
