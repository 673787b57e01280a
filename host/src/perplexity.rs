//! Perplexity exactly as `llama-perplexity` computes it, so the two numbers compare: the text
//! is tokenized once (with BOS when the model adds one), cut into chunks of `n_ctx` tokens
//! (the tail that does not fill a chunk is dropped), each chunk evaluated from an empty cache
//! with its first token replaced by BOS, and only the second half of each chunk scored: the
//! logits at position `p` (for `p` from `n_ctx/2` to `n_ctx - 2`) predict the token at `p + 1`.
//! The estimate is `exp(mean NLL)`, its error `ppl · sqrt(var(NLL) / (count - 1))`.

use crate::engine::{Engine, Step};
use crate::pool::ThreadPool;
use anyhow::bail;
use std::time::Instant;

#[derive(Debug, Clone, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    /// Standard error of the estimate, as llama-perplexity reports it after `+/-`.
    pub error: f64,
    pub chunks: usize,
    pub scored_tokens: usize,
    pub seconds: f64,
}

/// `-log p(token)` under the softmax of `logits`, computed like llama-perplexity's
/// `log_softmax` (max subtracted in f32, the sum of `expf` in f64).
pub fn negative_log_likelihood(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max).exp()) as f64).sum();
    -((logits[token as usize] - max) as f64 - sum.ln())
}

/// Evaluates `tokens` in chunks of `n_ctx`. `bos` replaces the first token of every chunk
/// (llama-perplexity does so when the model adds BOS). `progress(chunk, n_chunks, ppl)` is
/// called after each chunk.
pub fn perplexity(
    engine: &mut Engine<'_>,
    pool: &ThreadPool,
    tokens: &[u32],
    bos: Option<u32>,
    n_ctx: usize,
    n_batch: usize,
    mut progress: impl FnMut(usize, usize, f64),
) -> anyhow::Result<Perplexity> {
    if n_ctx < 4 {
        bail!("the perplexity context must be at least 4 tokens, got {n_ctx}");
    }
    if tokens.len() < 2 * n_ctx {
        bail!(
            "the text tokenizes to {} tokens; perplexity with a context of {n_ctx} needs at least {}",
            tokens.len(),
            2 * n_ctx
        );
    }
    if engine.n_ctx() < n_ctx {
        bail!(
            "the engine's context of {} tokens is smaller than the perplexity context {n_ctx}",
            engine.n_ctx()
        );
    }
    let n_vocab = engine.n_vocab();
    let n_chunks = tokens.len() / n_ctx;
    let first = n_ctx / 2;
    let n_batch = n_batch.clamp(1, n_ctx);
    let t0 = Instant::now();
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut logits = Vec::new();
    for chunk in 0..n_chunks {
        let mut chunk_tokens = tokens[chunk * n_ctx..][..n_ctx].to_vec();
        if let Some(bos) = bos {
            chunk_tokens[0] = bos;
        }
        engine.kv_cache().clear_seq(0);
        // Logits of positions first..n_ctx, gathered over the batches of this chunk.
        logits.clear();
        for start in (0..n_ctx).step_by(n_batch) {
            let end = (start + n_batch).min(n_ctx);
            let positions: Vec<i32> = (start as i32..end as i32).collect();
            let want: Vec<bool> = (start..end).map(|p| p >= first).collect();
            let n_out = want.iter().filter(|&&w| w).count();
            let at = logits.len();
            logits.resize(at + n_out * n_vocab, 0.0);
            engine.forward(
                pool,
                &Step {
                    tokens: &chunk_tokens[start..end],
                    positions: &positions,
                    seq_ids: &vec![0; end - start],
                    want_logits: &want,
                },
                &mut logits[at..],
            )?;
        }
        // Score with the chunk's original tokens (the BOS replacement is input only).
        let original = &tokens[chunk * n_ctx..][..n_ctx];
        for (i, row) in logits
            .chunks_exact(n_vocab)
            .take(n_ctx - 1 - first)
            .enumerate()
        {
            let v = negative_log_likelihood(row, original[first + i + 1]);
            nll += v;
            nll2 += v * v;
            count += 1;
        }
        progress(chunk + 1, n_chunks, (nll / count as f64).exp());
    }
    let mean = nll / count as f64;
    let var = nll2 / count as f64 - mean * mean;
    let ppl = mean.exp();
    let error = if var > 0.0 && count > 1 {
        (var / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    Ok(Perplexity {
        ppl,
        error,
        chunks: n_chunks,
        scored_tokens: count,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_of_uniform_logits_is_log_vocab() {
        let logits = vec![0.5f32; 8];
        assert!((negative_log_likelihood(&logits, 3) - 8f64.ln()).abs() < 1e-6);
        let mut peaked = vec![-100f32; 8];
        peaked[2] = 100.0;
        assert!(negative_log_likelihood(&peaked, 2) < 1e-6);
    }
}
