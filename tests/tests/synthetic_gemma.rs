//! Gemma (1) and Gemma 2 against llama.cpp on tiny synthetic models (`tests/data/synthetic`,
//! made with F32 weights by `make_gemma_models.py` there, which also recorded llama.cpp's
//! top-16 log-probabilities of the next token at every position of a 32-token sequence, flash
//! attention off and on, and those of an exact float64 numpy forward pass). The Gemma 2 model
//! has soft-caps that bite (attention 5, final 5) and a sliding window of 8 on its even
//! layers; both have 4 heads of 32 with n_embd 64 (so `attention.key_length` matters). Dropping any of these, a window off by one, swapped post-norms or the wrong Q
//! scale moves the log-probabilities by 2 to 10 (the JSON files' `ablation_effects`), far
//! beyond the tolerances.
//!
//! Each model runs three ways: the whole sequence in one batch (logits of every token), one
//! token at a time (the decode path, the KV cache beyond the window) and in chunks of 5. At
//! every position our log-probabilities of the reference's top-16 tokens must be within
//! [`TOLERANCE_LLAMA_CPP`] of llama.cpp's (flash attention off, and on) and within
//! [`TOLERANCE_EXACT`] of the exact ones. The deviations are printed (`--nocapture`).

use llmhost::engine::Step;
use llmhost_tests::models::ModelStack;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Largest |ours − llama.cpp| allowed. llama.cpp (anchor build) disagrees with itself, flash
/// attention on vs off, by up to 0.013 (gemma) and 0.009 (gemma2) on these files, and with
/// the exact pass by up to 0.024 (its f16 roundings: Q, the attention weights or the V sums,
/// the GELU table); we land
/// within 0.017 (gemma) and 0.007 (gemma2) of it, 0.021 and 0.011 with an F32 KV cache.
const TOLERANCE_LLAMA_CPP: f64 = 0.04;

/// Largest |ours − exact| allowed: we land within 0.0095 (gemma) and 0.006 (gemma2) with the
/// F16 KV cache, 0.0045 and 0.0026 with F32 (what is left is ggml's f16 GELU table, which we
/// reproduce on purpose).
const TOLERANCE_EXACT: f64 = 0.02;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/synthetic")
}

/// Per position, a reference's top-k (token id, log-probability).
type TopK = Vec<Vec<(usize, f64)>>;

struct Expected {
    tokens: Vec<u32>,
    /// Per reference ("fa_off", "fa_on": llama.cpp; "exact_f64"): per position, its top-k
    /// (id, log-probability).
    modes: Vec<(&'static str, TopK)>,
    spread: f64,
}

fn load_expected(name: &str) -> Expected {
    let path = data_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    let tokens = v["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("token id") as u32)
        .collect::<Vec<_>>();
    let modes = ["fa_off", "fa_on", "exact_f64"]
        .into_iter()
        .map(|mode| {
            let rows = v[mode]
                .as_array()
                .unwrap_or_else(|| panic!("{mode} missing"))
                .iter()
                .map(|row| {
                    row.as_array()
                        .expect("top-k row")
                        .iter()
                        .map(|e| {
                            (
                                e[0].as_u64().expect("id") as usize,
                                e[1].as_f64().expect("logprob"),
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .collect::<TopK>();
            assert_eq!(rows.len(), tokens.len(), "{mode}: one row per position");
            (mode, rows)
        })
        .collect();
    Expected {
        tokens,
        modes,
        spread: v["fa_on_off_spread"].as_f64().expect("spread"),
    }
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits.iter().map(|&l| l as f64 - max - sum.ln()).collect()
}

/// Runs `tokens` through a fresh engine in chunks of `chunk`, returning the log-probabilities
/// of every position.
fn run(stack: &ModelStack, tokens: &[u32], chunk: usize) -> Vec<Vec<f64>> {
    let mut engine = stack.engine(64);
    let n_vocab = engine.n_vocab();
    let mut out = Vec::with_capacity(tokens.len());
    for (c, part) in tokens.chunks(chunk).enumerate() {
        let first = c * chunk;
        let positions: Vec<i32> = (first..first + part.len()).map(|p| p as i32).collect();
        let seq_ids = vec![0u32; part.len()];
        let want = vec![true; part.len()];
        let mut logits = vec![0f32; part.len() * n_vocab];
        engine
            .forward(
                &stack.pool,
                &Step {
                    tokens: part,
                    positions: &positions,
                    seq_ids: &seq_ids,
                    want_logits: &want,
                },
                &mut logits,
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
        out.extend(logits.chunks(n_vocab).map(log_softmax));
    }
    out
}

/// Largest deviation from one FA mode's rows, and where (position, token, ours, llama.cpp).
fn deviation(ours: &[Vec<f64>], rows: &[Vec<(usize, f64)>]) -> (f64, usize, usize, f64, f64) {
    let mut worst = (0.0, 0, 0, 0.0, 0.0);
    for (p, (lp, top)) in ours.iter().zip(rows).enumerate() {
        for &(id, want) in top {
            let dev = (lp[id] - want).abs();
            if dev > worst.0 {
                worst = (dev, p, id, lp[id], want);
            }
        }
    }
    worst
}

fn check(name: &str, arch: &str) {
    let stack = ModelStack::open_path(&data_dir().join(format!("{name}.gguf")));
    assert_eq!(
        stack.file.metadata().get_str("general.architecture"),
        Some(arch)
    );
    let exp = load_expected(name);
    println!(
        "{name}: kernel plugin {}, KV cache {}",
        stack.kernels.name(),
        std::env::var("LLMHOST_TEST_KV").unwrap_or_else(|_| "f16".into())
    );
    let mut failures = Vec::new();
    for (how, chunk) in [
        ("batch", exp.tokens.len()),
        ("token by token", 1),
        ("chunks of 5", 5),
    ] {
        let ours = run(&stack, &exp.tokens, chunk);
        for (mode, rows) in &exp.modes {
            let (dev, p, id, got, want) = deviation(&ours, rows);
            let tolerance = if *mode == "exact_f64" {
                TOLERANCE_EXACT
            } else {
                TOLERANCE_LLAMA_CPP
            };
            println!(
                "{name} {how}: max |ours - {mode}| = {dev:.5} (position {p}, token {id}: {got:.5} vs {want:.5}); llama.cpp FA on vs off {:.5}",
                exp.spread
            );
            if dev > tolerance {
                failures.push(format!(
                    "{name} {how} vs {mode}: position {p}, token {id}: ours {got:.5}, reference {want:.5} (|Δ| {dev:.5} > {tolerance})"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn gemma_tiny_matches_llama_cpp() {
    check("gemma-tiny", "gemma");
}

#[test]
fn gemma2_tiny_matches_llama_cpp() {
    check("gemma2-tiny", "gemma2");
}
