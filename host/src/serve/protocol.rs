//! What the HTTP side and the inference thread say to each other.
//!
//! The HTTP side turns an OpenAI request into a [`GenerationRequest`] (prompt already rendered
//! through the chat template and tokenized, sampling settings validated) and submits it through
//! a [`SchedulerHandle`](super::scheduler::SchedulerHandle). The inference thread answers on the request's own channel with one
//! [`Event::Token`] per generated token and then exactly one [`Event::Done`] or
//! [`Event::Failed`]. Dropping the receiving end cancels the request: the scheduler notices at
//! its next step, stops generating and frees the sequence's KV blocks.

use crate::chat::ChatTemplate;
use crate::sampler::SamplerConfig;
use crate::tokenizer::Tokenizer;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// The most alternatives a token event can carry (OpenAI's limit for `top_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One completion to generate.
#[derive(Debug)]
pub struct GenerationRequest {
    /// The prompt's token ids, BOS included when the model wants it. Not empty, and shorter
    /// than the context (the scheduler fails the request otherwise).
    pub prompt: Vec<u32>,
    /// At most this many tokens are generated (fewer when the context fills up first).
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Generation stops before the first occurrence of any of these strings; the text never
    /// contains it.
    pub stop: Vec<String>,
    /// `Some(n)`: every token event carries the token's log-probability and the `n`
    /// (≤ [`MAX_TOP_LOGPROBS`]) most likely tokens at that step.
    pub top_logprobs: Option<usize>,
    /// Keep generating past end-of-generation tokens (llama.cpp's `ignore_eos`; benchmarks
    /// use it for fixed lengths). They are still not part of the text.
    pub ignore_eos: bool,
    /// Where the events go. Dropping the receiver cancels the request.
    pub events: UnboundedSender<Event>,
}

/// What the inference thread reports about one request, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One generated token. The first one marks the end of prompt processing (time to first
    /// token).
    Token(TokenEvent),
    /// The request ended normally; nothing follows.
    Done(Completion),
    /// The request failed (one line saying why); nothing follows.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    pub id: u32,
    /// The text that became final with this token; may be empty (part of a UTF-8 character,
    /// or held back because it may be the start of a stop string). The concatenation of every
    /// token's `text` and [`Completion::tail`] is the completion's text.
    pub text: String,
    /// Present when the request asked for log-probabilities.
    pub logprobs: Option<TokenLogprobs>,
}

/// Log-probabilities under the model's distribution at one step (log-softmax of the raw
/// logits, before temperature and the other samplers).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The token that was picked.
    pub chosen: Candidate,
    /// The most likely tokens at this step, most likely first.
    pub top: Vec<Candidate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: u32,
    /// The token's bytes as text (invalid UTF-8 replaced).
    pub text: String,
    /// The token's exact bytes.
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub finish: FinishReason,
    /// Text released only at the end (a held-back tail that did not become a stop string).
    pub tail: String,
    pub usage: Usage,
}

/// Why generation ended, as OpenAI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens`, or the context is full.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Of `prompt_tokens`, how many came from the prefix cache instead of being computed.
    pub cached_prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What the HTTP side needs to know about the loaded model.
#[derive(Debug, Clone)]
pub struct ModelDesc {
    /// The id clients put in `model` (the file name without `.gguf`, or `[server] model_id`).
    pub id: String,
    pub architecture: String,
    /// Tokens of context per sequence.
    pub n_ctx: usize,
    pub n_vocab: usize,
    /// The kernel plugin in use and the threads it runs on.
    pub kernel: String,
    pub threads: usize,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Arc<ChatTemplate>,
    /// Unix seconds when the model was loaded (`created` in `/v1/models`).
    pub created: u64,
}

/// The scheduler's gauges and counters, read by `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Requests waiting to be admitted (not yet holding KV blocks).
    pub queued: usize,
    /// Sequences being prefilled or decoded.
    pub active: usize,
    pub kv_blocks_total: usize,
    /// Blocks referenced by at least one live sequence.
    pub kv_blocks_used: usize,
    /// Blocks held by no sequence but keeping a reusable prefix (allocatable when needed).
    pub kv_blocks_cached: usize,
    /// Blocks allocatable now: free plus cached.
    pub kv_blocks_free: usize,
    pub kv_block_tokens: usize,
    /// Totals since start.
    pub prompt_tokens: u64,
    pub prompt_tokens_cached: u64,
    pub generated_tokens: u64,
    pub steps: u64,
    pub requests_finished: u64,
    pub requests_cancelled: u64,
    pub requests_failed: u64,
}

/// Why a request could not be submitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the server is shutting down")]
    ShuttingDown,
    /// This many requests are already waiting.
    #[error("{0} requests are already waiting: retry later")]
    QueueFull(usize),
}
