//! Generating a continuation of one prompt: prefill in chunks, then sample one token at a
//! time until an end-of-generation token, a stop string, the token limit or the context limit.
//! Text is streamed through a callback as soon as it is final: whole UTF-8 characters only,
//! and never a prefix of a stop string that may still complete.

use crate::engine::{Engine, Step};
use crate::pool::ThreadPool;
use crate::sampler::{Sampler, SamplerConfig};
use crate::tokenizer::Tokenizer;
use anyhow::bail;
use std::time::{Duration, Instant};

/// Tokens per prefill step (llama.cpp's default `-b`).
pub const DEFAULT_BATCH: usize = 512;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Generation stops before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    /// Tokens per prefill step.
    pub n_batch: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-generation token (EOS, EOT, ...), not part of the output.
    EndOfGeneration(u32),
    MaxTokens,
    StopString(String),
    /// The sequence reached the context size.
    ContextFull,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    pub prompt_time: Duration,
    pub gen_time: Duration,
}

impl Generation {
    pub fn prompt_tok_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }

    pub fn gen_tok_per_s(&self) -> f64 {
        self.tokens.len() as f64 / self.gen_time.as_secs_f64().max(1e-9)
    }
}

/// Runs `tokens` (positions `start..`) of sequence `seq` through the model in chunks of
/// `n_batch`, returning the logits of the last token.
pub fn prefill(
    engine: &mut Engine<'_>,
    pool: &ThreadPool,
    seq: u32,
    start: usize,
    tokens: &[u32],
    n_batch: usize,
) -> anyhow::Result<Vec<f32>> {
    if tokens.is_empty() {
        bail!("nothing to evaluate: the prompt is empty");
    }
    let mut logits = vec![0f32; engine.n_vocab()];
    for (c, chunk) in tokens.chunks(n_batch.max(1)).enumerate() {
        let first = start + c * n_batch.max(1);
        let positions: Vec<i32> = (first..first + chunk.len()).map(|p| p as i32).collect();
        let seq_ids = vec![seq; chunk.len()];
        let is_last_chunk = first + chunk.len() == start + tokens.len();
        let mut want = vec![false; chunk.len()];
        if is_last_chunk {
            *want.last_mut().expect("chunk is not empty") = true;
        }
        engine.forward(
            pool,
            &Step {
                tokens: chunk,
                positions: &positions,
                seq_ids: &seq_ids,
                want_logits: &want,
            },
            &mut logits,
        )?;
    }
    Ok(logits)
}

/// Text that is final: everything but a tail that may still grow into a stop string.
pub(crate) struct StopFilter {
    stop: Vec<String>,
    pending: String,
}

impl StopFilter {
    pub(crate) fn new(stop: Vec<String>) -> StopFilter {
        StopFilter {
            stop,
            pending: String::new(),
        }
    }

    /// Adds `text`; returns the text now safe to emit, and whether a stop string was found
    /// (then the returned text ends right before it).
    pub(crate) fn push(&mut self, text: &str) -> (String, Option<String>) {
        self.pending.push_str(text);
        let first_hit = self
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.pending.find(s.as_str()).map(|at| (at, s.clone())))
            .min_by_key(|(at, _)| *at);
        if let Some((at, s)) = first_hit {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, Some(s));
        }
        // Hold back the longest tail that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stop {
            for (i, _) in s.char_indices().skip(1) {
                if self.pending.ends_with(&s[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, None)
    }

    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Generates a continuation of `prompt` in sequence `seq`, whose cache is cleared first.
/// `on_text` receives the text as it becomes final.
pub fn generate(
    engine: &mut Engine<'_>,
    pool: &ThreadPool,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    seq: u32,
    on_text: impl FnMut(&str),
) -> anyhow::Result<Generation> {
    generate_reusing(engine, pool, tokenizer, prompt, 0, options, seq, on_text)
}

/// [`generate`], keeping the first `cached` tokens of `prompt` that sequence `seq` already
/// holds in the cache (a chat's earlier turns) and evaluating only the rest.
#[allow(clippy::too_many_arguments)]
pub fn generate_reusing(
    engine: &mut Engine<'_>,
    pool: &ThreadPool,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    cached: usize,
    options: &GenerateOptions,
    seq: u32,
    mut on_text: impl FnMut(&str),
) -> anyhow::Result<Generation> {
    let n_ctx = engine.n_ctx();
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    if prompt.len() >= n_ctx {
        bail!(
            "the prompt has {} tokens, which leaves no room in the context of {n_ctx} tokens: raise -c/--ctx-size or shorten the prompt",
            prompt.len()
        );
    }
    // The last prompt token is always evaluated: its logits pick the first new token.
    let cached = cached.min(prompt.len() - 1);
    if cached == 0 {
        engine.kv_cache().clear_seq(seq);
    } else {
        engine.kv_cache().truncate(seq, cached);
    }
    let t0 = Instant::now();
    let mut logits = prefill(
        engine,
        pool,
        seq,
        cached,
        &prompt[cached..],
        options.n_batch,
    )?;
    let prompt_time = t0.elapsed();

    let mut sampler = Sampler::new(options.sampler.clone());
    let mut history: Vec<u32> = prompt.to_vec();
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut detok = tokenizer.detokenizer();
    let mut filter = StopFilter::new(options.stop.clone());
    let t1 = Instant::now();
    let mut stop = StopReason::MaxTokens;
    let mut emit = |s: &str, text: &mut String| {
        if !s.is_empty() {
            text.push_str(s);
            on_text(s);
        }
    };
    while tokens.len() < options.max_tokens {
        let token = sampler.sample(&logits, &history);
        sampler.accept(token);
        if tokenizer.is_end_of_generation(token) {
            stop = StopReason::EndOfGeneration(token);
            break;
        }
        tokens.push(token);
        history.push(token);
        let (out, hit) = filter.push(&detok.push(token));
        emit(&out, &mut text);
        if let Some(s) = hit {
            stop = StopReason::StopString(s);
            break;
        }
        if tokens.len() == options.max_tokens {
            break;
        }
        let pos = prompt.len() + tokens.len() - 1;
        if pos + 1 >= n_ctx {
            stop = StopReason::ContextFull;
            break;
        }
        let want = [true];
        engine.forward(
            pool,
            &Step {
                tokens: &[token],
                positions: &[pos as i32],
                seq_ids: &[seq],
                want_logits: &want,
            },
            &mut logits,
        )?;
    }
    if !matches!(stop, StopReason::StopString(_)) {
        let (out, hit) = filter.push(&detok.finish());
        emit(&out, &mut text);
        if let Some(s) = hit {
            stop = StopReason::StopString(s);
        } else {
            let rest = filter.finish();
            emit(&rest, &mut text);
        }
    }
    Ok(Generation {
        tokens,
        text,
        stop,
        prompt_tokens: prompt.len() - cached,
        prompt_time,
        gen_time: t1.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(stop: &[&str]) -> StopFilter {
        StopFilter::new(stop.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn stop_strings_are_held_back_until_decided() {
        let mut f = filter(&["\nUser:"]);
        assert_eq!(f.push("Hello"), ("Hello".into(), None));
        assert_eq!(f.push(" world\nUs"), (" world".into(), None));
        assert_eq!(f.push("ually"), ("\nUsually".into(), None));
        assert_eq!(f.push("\nUser: hi"), ("".into(), Some("\nUser:".into())));
    }

    #[test]
    fn earliest_stop_string_wins_and_text_before_it_is_kept() {
        let mut f = filter(&["b", "ab"]);
        assert_eq!(f.push("xxabyy"), ("xx".into(), Some("ab".into())));
        let mut f = filter(&[]);
        assert_eq!(f.push("anything"), ("anything".into(), None));
        assert_eq!(f.finish(), "");
    }

    #[test]
    fn multibyte_stop_prefixes_do_not_split_characters() {
        let mut f = filter(&["é!"]);
        assert_eq!(f.push("café"), ("caf".into(), None));
        assert_eq!(f.push("?"), ("é?".into(), None));
    }
}
