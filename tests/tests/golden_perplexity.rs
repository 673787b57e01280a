//! Perplexity on `ppl-text.txt`, computed as llama-perplexity does (context 512, second half
//! of each chunk scored), against llama.cpp's figure in the golden files.
//!
//! The bound asserted is llama.cpp's own spread rather than the 0.5 % of the issue: the golden
//! figures were made on a Zen 3 AVX2 machine, and the same llama.cpp built on this project's
//! Zen 4 machine gives, for SmolLM2, 18.4942 with flash attention (its default; +0.62 %) and
//! 18.3875 without (+0.04 %), against the golden 18.3800. Gemma 3 (14.9296, -0.14 %) and
//! Qwen2.5 (5.8847, -0.29 %) are within the 0.5 %, which their tests assert. They run
//! on the best kernel plugin of the machine (`LLMHOST_TEST_KERNEL` forces one): a minute each
//! with kernels-avx2, 10–20 minutes on the scalar kernels.

use llmhost::perplexity::perplexity;
use llmhost_tests::golden;
use llmhost_tests::models::ModelStack;

fn check(model: &str, golden_file: &str, bound: f64) {
    let reference = golden::load(golden_file).perplexity;
    let stack = ModelStack::open(model);
    let mut engine = stack.engine(reference.ctx);
    let tokens = stack.tokenizer.encode(&golden::ppl_text(), true, false);
    let bos = if stack.tokenizer.add_bos() {
        stack.tokenizer.bos()
    } else {
        None
    };
    let r = perplexity(
        &mut engine,
        &stack.pool,
        &tokens,
        bos,
        reference.ctx,
        512,
        |_, _, _| {},
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let want = reference.ppl();
    let rel = (r.ppl - want).abs() / want;
    eprintln!(
        "{model} [{}]: PPL {:.4} +/- {:.5}, llama.cpp {want:.4}: {:+.3} % ({} chunks, {:.0} s)",
        stack.kernels.name(),
        r.ppl,
        r.error,
        (r.ppl / want - 1.0) * 100.0,
        r.chunks,
        r.seconds
    );
    assert!(
        rel <= bound,
        "{model}: PPL {:.4} is {:.3} % from llama.cpp's {want:.4} (bound {:.2} %)",
        r.ppl,
        rel * 100.0,
        bound * 100.0
    );
}

#[test]
fn smollm2_135m_perplexity_matches_llama_cpp() {
    check("smollm2-135m", "smollm2-135m-q4_1", 0.0065);
}

#[test]
fn gemma3_270m_perplexity_matches_llama_cpp() {
    check("gemma3-270m", "gemma3-270m-q4_k_m", 0.005);
}

#[test]
fn qwen25_coder_05b_perplexity_matches_llama_cpp() {
    check("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-q4_k_m", 0.005);
}
