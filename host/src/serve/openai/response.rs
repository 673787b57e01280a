//! The JSON of responses, stream chunks, usage, log-probabilities and the model list.

use super::request::Endpoint;
use crate::serve::protocol::{Completion, FinishReason, ModelDesc, TokenLogprobs, Usage};
use serde_json::{json, Map, Value};

/// What a log-probability of minus infinity is sent as (JSON has no infinities; OpenAI uses
/// this value).
const LOGPROB_FLOOR: f32 = -9999.0;

/// What every response and chunk of one request shares.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ResponseMeta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    /// The whole answer of a request that did not stream. `logprobs`: one entry per
    /// generated token when the request asked for them.
    pub fn response(
        &self,
        text: &str,
        completion: &Completion,
        logprobs: Option<&[TokenLogprobs]>,
    ) -> Value {
        let finish = completion.finish.as_str();
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": logprobs.map(chat_logprobs),
                "finish_reason": finish,
            }),
            Endpoint::Completions => json!({
                "index": 0,
                "text": text,
                "logprobs": logprobs.map(|l| completion_logprobs(l, 0)),
                "finish_reason": finish,
            }),
        };
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage(&completion.usage),
        })
    }

    /// The first chunk of a streamed chat: the assistant's role, no text yet.
    pub fn role_chunk(&self, include_usage: bool) -> Value {
        let choice = json!({
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": null,
            "finish_reason": null,
        });
        self.chunk(choice, include_usage)
    }

    /// A chunk carrying text (and, when asked for, the log-probabilities of the tokens that
    /// made it; `text_offset` is where they start in the completion's text).
    pub fn text_chunk(
        &self,
        text: &str,
        logprobs: Option<&[TokenLogprobs]>,
        text_offset: usize,
        include_usage: bool,
    ) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "delta": {"content": text},
                "logprobs": logprobs.map(chat_logprobs),
                "finish_reason": null,
            }),
            Endpoint::Completions => json!({
                "index": 0,
                "text": text,
                "logprobs": logprobs.map(|l| completion_logprobs(l, text_offset)),
                "finish_reason": null,
            }),
        };
        self.chunk(choice, include_usage)
    }

    /// The chunk that says why generation ended.
    pub fn finish_chunk(&self, finish: FinishReason, include_usage: bool) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "delta": {},
                "logprobs": null,
                "finish_reason": finish.as_str(),
            }),
            Endpoint::Completions => json!({
                "index": 0,
                "text": "",
                "logprobs": null,
                "finish_reason": finish.as_str(),
            }),
        };
        self.chunk(choice, include_usage)
    }

    /// The last chunk before `[DONE]` when `stream_options.include_usage` is set.
    pub fn usage_chunk(&self, u: &Usage) -> Value {
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage(u),
        })
    }

    fn chunk(&self, choice: Value, include_usage: bool) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        // With include_usage, OpenAI sends `"usage": null` on every chunk but the last.
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }
}

pub fn usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
    })
}

fn logprob(x: f32) -> f32 {
    if x.is_finite() {
        x
    } else {
        LOGPROB_FLOOR
    }
}

/// Chat's shape: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}`.
pub fn chat_logprobs(tokens: &[TokenLogprobs]) -> Value {
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let top: Vec<Value> = t
                .top
                .iter()
                .map(|c| json!({"token": c.text, "logprob": logprob(c.logprob), "bytes": c.bytes}))
                .collect();
            json!({
                "token": t.chosen.text,
                "logprob": logprob(t.chosen.logprob),
                "bytes": t.chosen.bytes,
                "top_logprobs": top,
            })
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// Completions' shape: parallel arrays `tokens`, `token_logprobs`, `top_logprobs` (one
/// `{token: logprob}` map per token) and `text_offset` (character offsets in the completion,
/// starting at `offset`).
pub fn completion_logprobs(tokens: &[TokenLogprobs], offset: usize) -> Value {
    let mut offsets = Vec::with_capacity(tokens.len());
    let mut at = offset;
    for t in tokens {
        offsets.push(at);
        at += t.chosen.text.chars().count();
    }
    let top: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let map: Map<String, Value> = t
                .top
                .iter()
                .map(|c| (c.text.clone(), json!(logprob(c.logprob))))
                .collect();
            Value::Object(map)
        })
        .collect();
    json!({
        "tokens": tokens.iter().map(|t| t.chosen.text.as_str()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| logprob(t.chosen.logprob)).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

/// Characters the tokens' texts take, to continue `text_offset` across stream chunks.
pub fn logprobs_text_chars(tokens: &[TokenLogprobs]) -> usize {
    tokens.iter().map(|t| t.chosen.text.chars().count()).sum()
}

/// `GET /v1/models/{id}`'s body, one entry of `/v1/models`.
pub fn model_object(model: &ModelDesc) -> Value {
    json!({
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": "llmhost",
        "meta": {
            "architecture": model.architecture,
            "n_ctx": model.n_ctx,
            "n_vocab": model.n_vocab,
        },
    })
}

/// `GET /v1/models`'s body.
pub fn model_list(model: &ModelDesc) -> Value {
    json!({"object": "list", "data": [model_object(model)]})
}
