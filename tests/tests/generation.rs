//! Generation on a real model (SmolLM2-135M): reusing a cached prefix gives exactly what a
//! fresh run gives, the same seed gives the same text, stop strings and token limits stop
//! where they should, and a prompt that does not fit the context is one clear error.

use llmhost::generate::{generate, generate_reusing, GenerateOptions, StopReason};
use llmhost::sampler::SamplerConfig;
use llmhost_tests::models::ModelStack;

fn options(max_tokens: usize, sampler: SamplerConfig, stop: &[&str]) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampler,
        stop: stop.iter().map(|s| s.to_string()).collect(),
        n_batch: 512,
    }
}

#[test]
fn reusing_a_cached_prefix_equals_a_fresh_run() {
    let stack = ModelStack::open("smollm2-135m");
    let mut engine = stack.engine(256);
    let tok = &stack.tokenizer;
    let greedy = options(12, SamplerConfig::greedy(), &[]);

    let first = tok.encode("The capital of France is", true, false);
    let g1 = generate(&mut engine, &stack.pool, tok, &first, &greedy, 0, |_| {}).unwrap();
    // The cache now holds the prompt and all generated tokens but the last.
    let mut cached = first.clone();
    cached.extend(&g1.tokens[..g1.tokens.len() - 1]);

    // A follow-up prompt that extends the conversation: only its new tokens are evaluated.
    let follow_up_text = format!(
        "The capital of France is{} The capital of Italy is",
        g1.text
    );
    let follow_up = tok.encode(&follow_up_text, true, false);
    let reuse = cached
        .iter()
        .zip(&follow_up)
        .take_while(|(a, b)| a == b)
        .count();
    assert!(
        reuse > first.len(),
        "the follow-up shares the first turn ({reuse} tokens)"
    );
    let reused = generate_reusing(
        &mut engine,
        &stack.pool,
        tok,
        &follow_up,
        reuse,
        &greedy,
        0,
        |_| {},
    )
    .unwrap();
    assert_eq!(reused.prompt_tokens, follow_up.len() - reuse);

    let mut fresh_engine = stack.engine(256);
    let fresh = generate(
        &mut fresh_engine,
        &stack.pool,
        tok,
        &follow_up,
        &greedy,
        0,
        |_| {},
    )
    .unwrap();
    assert_eq!(
        reused.tokens, fresh.tokens,
        "{:?} vs {:?}",
        reused.text, fresh.text
    );
}

#[test]
fn same_seed_same_text_and_streaming_equals_result() {
    let stack = ModelStack::open("smollm2-135m");
    let mut engine = stack.engine(256);
    let tok = &stack.tokenizer;
    let prompt = tok.encode("Once upon a time", true, false);
    let sampled = |seed| SamplerConfig {
        seed,
        temperature: 1.0,
        ..SamplerConfig::default()
    };
    let mut streamed = String::new();
    let a = generate(
        &mut engine,
        &stack.pool,
        tok,
        &prompt,
        &options(24, sampled(7), &[]),
        0,
        |s| streamed.push_str(s),
    )
    .unwrap();
    let b = generate(
        &mut engine,
        &stack.pool,
        tok,
        &prompt,
        &options(24, sampled(7), &[]),
        0,
        |_| {},
    )
    .unwrap();
    let c = generate(
        &mut engine,
        &stack.pool,
        tok,
        &prompt,
        &options(24, sampled(8), &[]),
        0,
        |_| {},
    )
    .unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(streamed, a.text);
    assert_eq!(a.text, tok.decode(&a.tokens, false));
    assert_ne!(
        a.tokens, c.tokens,
        "another seed should sample another text"
    );
}

#[test]
fn stop_strings_token_limits_and_context_limits() {
    let stack = ModelStack::open("smollm2-135m");
    let mut engine = stack.engine(64);
    let tok = &stack.tokenizer;
    let prompt = tok.encode("The capital of France is", true, false);
    // Greedy continues " Paris.\n\nThe United States ..."
    let g = generate(
        &mut engine,
        &stack.pool,
        tok,
        &prompt,
        &options(40, SamplerConfig::greedy(), &["\n"]),
        0,
        |_| {},
    )
    .unwrap();
    assert_eq!(g.stop, StopReason::StopString("\n".into()));
    assert_eq!(g.text, " Paris.");

    let g = generate(
        &mut engine,
        &stack.pool,
        tok,
        &prompt,
        &options(3, SamplerConfig::greedy(), &[]),
        0,
        |_| {},
    )
    .unwrap();
    assert_eq!((g.stop, g.tokens.len()), (StopReason::MaxTokens, 3));

    let g = generate(
        &mut engine,
        &stack.pool,
        tok,
        &prompt,
        &options(500, SamplerConfig::greedy(), &[]),
        0,
        |_| {},
    )
    .unwrap();
    assert_eq!(g.stop, StopReason::ContextFull);
    assert_eq!(prompt.len() + g.tokens.len(), 64);

    let long = tok.encode(&"word ".repeat(100), true, false);
    let e = generate(
        &mut engine,
        &stack.pool,
        tok,
        &long,
        &options(5, SamplerConfig::greedy(), &[]),
        0,
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("context of 64 tokens") && !e.contains('\n'),
        "{e}"
    );
}
