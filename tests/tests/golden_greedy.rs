//! Greedy decoding of the real models against llama.cpp on the same GGUF files
//! (`tests/data/golden`): for every golden prompt, the prompt must tokenize to llama.cpp's
//! ids, and the first 64 generated ids must equal llama.cpp's, except that after a step where
//! llama.cpp's top-2 log-probabilities are within the tolerance of each other the rest may
//! differ; up to the first such step, our log-probabilities of llama.cpp's top-5 tokens must
//! be within the tolerance of its own. The largest deviation, and how many top-5 entries
//! exceed the golden files' own tie tolerance T, are printed (`--nocapture`).
//!
//! The tolerance asserted is not the goldens' T but the spread of llama.cpp itself around
//! them when built on another machine (`LLMHOST_GOLDEN_TOLERANCE` overrides it): the goldens
//! were made on a Zen 3 AVX2 machine, and the same llama.cpp (anchor build, flash attention
//! on as by default) built natively on this project's Zen 4 / AVX-512 machine lands up to
//! 0.64 (SmolLM2), 1.49 (Gemma 3) and 0.45 (Qwen2.5) away from them under exactly this
//! metric (`scripts/llamacpp_golden_spread.py`). An engine that agrees with the goldens
//! within that spread agrees with llama.cpp as well as llama.cpp agrees with itself.

use llmhost::engine::Step;
use llmhost::generate::prefill;
use llmhost_tests::golden::{self, GreedyCase};
use llmhost_tests::models::ModelStack;

/// llama.cpp's own largest deviation from the goldens when built on this project's machine,
/// rounded up (measured with `scripts/llamacpp_golden_spread.py`, flash attention on).
const LLAMA_CPP_SPREAD: [(&str, f64); 3] = [
    ("smollm2-135m", 0.65),
    ("gemma3-270m", 1.5),
    ("qwen2.5-coder-0.5b", 0.46),
];

fn tolerance(model: &str, golden_t: f64) -> f64 {
    let spread = LLAMA_CPP_SPREAD
        .iter()
        .find(|(m, _)| *m == model)
        .map_or(golden_t, |(_, s)| *s);
    std::env::var("LLMHOST_GOLDEN_TOLERANCE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(spread)
        .max(golden_t)
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits.iter().map(|&l| l as f64 - max - sum.ln()).collect()
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// What one prompt showed.
struct Outcome {
    /// Largest |ours − llama.cpp| over the top-5 log-probabilities of the checked steps.
    max_dev: f64,
    /// Steps whose ids matched.
    matched: usize,
    /// Step where we took the other side of a near tie, if any.
    diverged_at: Option<usize>,
    /// Checked top-5 entries, and those beyond the golden file's own tie tolerance T.
    checked: usize,
    beyond_t: usize,
}

fn run_case(
    model: &str,
    stack: &ModelStack,
    case: &GreedyCase,
    n_ctx: usize,
) -> Result<Outcome, String> {
    let mut engine = stack.engine(n_ctx);
    let ours = stack.tokenizer.encode(&case.prompt, true, false);
    if ours != case.prompt_ids {
        return Err(format!(
            "prompt {:?} tokenizes to {ours:?}, llama.cpp to {:?}",
            case.prompt, case.prompt_ids
        ));
    }
    let t = tolerance(model, case.tie_tolerance);
    let mut logits = prefill(&mut engine, &stack.pool, 0, 0, &case.prompt_ids, 512)
        .map_err(|e| format!("{e:#}"))?;
    let mut out = Outcome {
        max_dev: 0.0,
        matched: 0,
        diverged_at: None,
        checked: 0,
        beyond_t: 0,
    };
    let mut near_tie_seen = false;
    for (step, golden) in case.steps.iter().enumerate() {
        let lp = log_softmax(&logits);
        let check_logprobs = !near_tie_seen;
        for &(id, want) in &golden.top {
            let dev = (lp[id as usize] - want).abs();
            if check_logprobs {
                out.max_dev = out.max_dev.max(dev);
                out.checked += 1;
                out.beyond_t += (dev > case.tie_tolerance) as usize;
                if dev > t {
                    let ours: Vec<(u32, String)> = golden
                        .top
                        .iter()
                        .map(|&(id, _)| (id, format!("{:.4}", lp[id as usize])))
                        .collect();
                    return Err(format!(
                        "step {step}: logprob of token {id} is {:.4}, llama.cpp {want:.4} (tolerance {t}); llama.cpp's top-5 {:?}, ours for them {ours:?}",
                        lp[id as usize], golden.top
                    ));
                }
            }
        }
        let near_tie = golden.top.len() > 1 && (golden.top[0].1 - golden.top[1].1).abs() <= t;
        let id = argmax(&logits);
        if id != golden.id {
            if near_tie || near_tie_seen {
                out.diverged_at = Some(step);
                return Ok(out);
            }
            return Err(format!(
                "step {step}: we chose {id} ({}), llama.cpp {} ({}) with no near tie (top-2 {:.4} vs {:.4})",
                lp[id as usize],
                golden.id,
                golden.logprob,
                golden.top[0].1,
                golden.top[1].1
            ));
        }
        near_tie_seen |= near_tie;
        out.matched += 1;
        if step + 1 == case.steps.len() {
            break;
        }
        let pos = (case.prompt_ids.len() + step) as i32;
        engine
            .forward(
                &stack.pool,
                &Step {
                    tokens: &[id],
                    positions: &[pos],
                    seq_ids: &[0],
                    want_logits: &[true],
                },
                &mut logits,
            )
            .map_err(|e| format!("{e:#}"))?;
    }
    Ok(out)
}

fn check_model(model: &str, golden_file: &str) {
    let golden = golden::load(golden_file);
    let stack = ModelStack::open(model);
    let mut failures = Vec::new();
    let mut worst: f64 = 0.0;
    let (mut checked, mut beyond_t) = (0, 0);
    for case in &golden.greedy {
        match run_case(model, &stack, case, 512) {
            Ok(o) => {
                worst = worst.max(o.max_dev);
                checked += o.checked;
                beyond_t += o.beyond_t;
                eprintln!(
                    "{model} [{}]: {} ids match{}, max logprob deviation {:.4} (stable steps {})",
                    stack.kernels.name(),
                    o.matched,
                    o.diverged_at
                        .map(|s| format!(", took the other side of a near tie at step {s}"))
                        .unwrap_or_default(),
                    o.max_dev,
                    case.stable_steps
                );
            }
            Err(e) => failures.push(format!("{:?}: {e}", case.prompt)),
        }
    }
    eprintln!(
        "{model}: largest logprob deviation from llama.cpp {worst:.4}; {beyond_t} of {checked} checked top-5 log-probabilities differ by more than the goldens' T = {}",
        golden.greedy[0].tie_tolerance
    );
    assert!(failures.is_empty(), "{model}:\n{}", failures.join("\n"));
}

#[test]
fn smollm2_135m_greedy_matches_llama_cpp() {
    check_model("smollm2-135m", "smollm2-135m-q4_1");
}

#[test]
fn gemma3_270m_greedy_matches_llama_cpp() {
    check_model("gemma3-270m", "gemma3-270m-q4_k_m");
}

#[test]
fn qwen25_coder_05b_greedy_matches_llama_cpp() {
    check_model("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-q4_k_m");
}
