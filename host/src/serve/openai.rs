//! The OpenAI API as llmhost speaks it: request bodies parsed and validated into what the
//! scheduler needs, and the JSON of responses, stream chunks and errors. No HTTP here:
//! [`super::http`] moves the bytes, this module decides what they mean.
//!
//! Requests are read field by field from a JSON object rather than through derived types, so
//! that every error names the field at fault ("'temperature' must be a number, got a string")
//! and unknown fields, which clients send freely, are ignored.

use super::protocol::{Completion, FinishReason, ModelDesc, TokenLogprobs, Usage};
use super::protocol::{SubmitError, MAX_TOP_LOGPROBS};
use crate::chat::{ChatTemplate, Message};
use crate::config::GenerationConfig;
use crate::sampler::SamplerConfig;
use crate::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};

/// Completions without `max_tokens` generate this many at most (OpenAI's default).
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;
/// The most alternatives `/v1/completions` gives per token (OpenAI's limit for `logprobs`).
pub const MAX_COMPLETION_LOGPROBS: usize = 5;
/// The most stop strings one request may give.
pub const MAX_STOP_STRINGS: usize = 16;
/// What a log-probability of minus infinity is sent as (JSON has no infinities; OpenAI uses
/// this value).
const LOGPROB_FLOOR: f32 = -9999.0;

/// An error as an OpenAI client expects it: an HTTP status and
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `server_error`, ...
    pub kind: &'static str,
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, code: &'static str, message: String) -> Self {
        ApiError {
            status,
            kind,
            message,
            param: None,
            code: Some(code),
        }
    }

    /// A 400 `invalid_request_error`.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", code, message.into())
    }

    /// A 400 about one request field.
    pub fn field(param: &str, code: &'static str, message: impl Into<String>) -> Self {
        Self::invalid(code, message).with_param(param)
    }

    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(404, "invalid_request_error", code, message.into())
    }

    pub fn method_not_allowed(method: &str, path: &str, allowed: &str) -> Self {
        Self::new(
            405,
            "invalid_request_error",
            "method_not_allowed",
            format!("method {method} is not allowed on {path}; use {allowed}"),
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!(
                "the request body is larger than {limit} bytes; send a smaller request \
                 (the limit is [server] max_body_bytes)"
            ),
        )
    }

    pub fn unsupported_media_type(got: Option<&str>) -> Self {
        let got = match got {
            Some(t) => format!("got Content-Type {t:?}"),
            None => "the request has no Content-Type".to_string(),
        };
        Self::new(
            415,
            "invalid_request_error",
            "unsupported_media_type",
            format!("{got}; send the body as JSON with Content-Type: application/json"),
        )
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(401, "authentication_error", code, message.into())
    }

    /// The queue is full: the client should retry later.
    pub fn overloaded(limit: usize) -> Self {
        Self::new(
            429,
            "rate_limit_error",
            "queue_full",
            format!(
                "the server is busy: {limit} requests are already running or queued; retry later \
                 (the limit is [server] parallel + max_queue)"
            ),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "server_error", "unavailable", message.into())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "server_error", "internal_error", message.into())
    }

    /// Whatever else answered `status` (the safety net for responses not built here).
    pub fn from_status(status: u16, detail: &str) -> Self {
        let (kind, code) = match status {
            401 => ("authentication_error", "unauthorized"),
            404 => ("invalid_request_error", "not_found"),
            405 => ("invalid_request_error", "method_not_allowed"),
            413 => ("invalid_request_error", "request_too_large"),
            415 => ("invalid_request_error", "unsupported_media_type"),
            429 => ("rate_limit_error", "rate_limited"),
            400..=499 => ("invalid_request_error", "invalid_request"),
            _ => ("server_error", "internal_error"),
        };
        let detail = detail.split_whitespace().collect::<Vec<_>>().join(" ");
        let message = if detail.is_empty() {
            format!("the request failed with HTTP status {status}")
        } else {
            detail
        };
        Self::new(status, kind, code, message)
    }

    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::ShuttingDown => Self::new(
                503,
                "server_error",
                "shutting_down",
                format!("{e}; retry later"),
            ),
            SubmitError::QueueFull(_) => Self::new(
                429,
                "rate_limit_error",
                "queue_full",
                format!("the server is busy: {e}"),
            ),
        }
    }
}

/// Which endpoint a request came to: the fields and response shapes differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `/v1/chat/completions`: rendered through the model's chat template.
    Messages(Vec<Message>),
    /// `/v1/completions` with text: tokenized as `llmhost run --prompt` does.
    Text(String),
    /// `/v1/completions` with token ids: used as they are.
    Tokens(Vec<u32>),
}

/// Sampling fields as the request gave them; absent ones take the `[generation]` defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<u64>,
}

/// A parsed, syntactically valid generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub endpoint: Endpoint,
    /// `None`: the loaded model.
    pub model: Option<String>,
    pub input: Input,
    pub max_tokens: Option<usize>,
    /// Which field gave `max_tokens` (chat has two), for messages.
    pub max_tokens_field: &'static str,
    pub sampling: SamplingFields,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// `Some(n)`: log-probabilities with the `n` most likely alternatives per token.
    pub top_logprobs: Option<usize>,
    /// llama.cpp's extension: generate `max_tokens` whatever the model says.
    pub ignore_eos: bool,
}

/// Parses a request body (bytes as received) for `endpoint`.
pub fn parse_request(endpoint: Endpoint, body: &[u8]) -> Result<GenerationParams, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::invalid(
            "invalid_encoding",
            format!(
                "the request body is not valid UTF-8 (bad byte at offset {}); send JSON encoded as UTF-8",
                e.valid_up_to()
            ),
        )
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ApiError::invalid(
            "invalid_json",
            format!("the request body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(object) = value else {
        return Err(ApiError::invalid(
            "invalid_json",
            format!(
                "the request body must be a JSON object, got {}",
                type_name(&value)
            ),
        ));
    };
    let f = Fields(&object);
    let input = match endpoint {
        Endpoint::Chat => Input::Messages(parse_messages(f.required("messages")?)?),
        Endpoint::Completions => parse_prompt(f.required("prompt")?)?,
    };
    if let Some(n) = f.uint("n")? {
        if n != 1 {
            return Err(ApiError::field(
                "n",
                "invalid_value",
                format!("'n' must be 1 (one choice per request), got {n}"),
            ));
        }
    }
    reject_unsupported(&f, endpoint)?;
    let max_tokens = match endpoint {
        Endpoint::Chat => match f.uint("max_completion_tokens")? {
            Some(n) => Some(("max_completion_tokens", n)),
            None => f.uint("max_tokens")?.map(|n| ("max_tokens", n)),
        },
        Endpoint::Completions => f.uint("max_tokens")?.map(|n| ("max_tokens", n)),
    };
    let max_tokens_field = max_tokens.map_or("max_tokens", |(name, _)| name);
    let max_tokens = match max_tokens {
        Some((name, 0)) => {
            return Err(ApiError::field(
                name,
                "invalid_value",
                format!("'{name}' must be at least 1"),
            ))
        }
        Some((_, n)) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        None => None,
    };
    let top_logprobs = match endpoint {
        Endpoint::Chat => {
            let wanted = f.bool("logprobs")?.unwrap_or(false);
            let top = f.uint("top_logprobs")?;
            match (wanted, top) {
                (false, Some(_)) => {
                    return Err(ApiError::field(
                        "top_logprobs",
                        "invalid_value",
                        "'top_logprobs' needs 'logprobs': true",
                    ))
                }
                (false, None) => None,
                (true, top) => Some(bounded("top_logprobs", top.unwrap_or(0), MAX_TOP_LOGPROBS)?),
            }
        }
        Endpoint::Completions => match f.uint("logprobs")? {
            None => None,
            Some(n) => Some(bounded("logprobs", n, MAX_COMPLETION_LOGPROBS)?),
        },
    };
    let stream = f.bool("stream")?.unwrap_or(false);
    let ignore_eos = f.bool("ignore_eos")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => Fields(o)
            .bool("include_usage")
            .map_err(|e| rename_param(e, "stream_options.include_usage"))?
            .unwrap_or(false),
        Some(v) => return Err(wrong_type("stream_options", "an object", v)),
    };
    let model = f.string("model")?.map(str::to_string);
    Ok(GenerationParams {
        endpoint,
        model,
        input,
        max_tokens,
        max_tokens_field,
        sampling: parse_sampling(&f)?,
        stop: parse_stop(f.get("stop"))?,
        stream,
        include_usage,
        top_logprobs,
        ignore_eos,
    })
}

/// Fields that would change the answer in ways llmhost does not implement: refusing them is
/// better than silently answering something else.
fn reject_unsupported(f: &Fields<'_>, endpoint: Endpoint) -> Result<(), ApiError> {
    let unsupported = |param: &str, what: &str| {
        Err(ApiError::field(
            param,
            "unsupported_parameter",
            format!("{what} is not supported by this server; leave '{param}' out"),
        ))
    };
    if f.bool("echo")? == Some(true) {
        return unsupported("echo", "echoing the prompt");
    }
    if f.uint("best_of")?.is_some_and(|n| n > 1) {
        return unsupported("best_of", "best_of above 1");
    }
    if let Some(Value::Object(bias)) = f.get("logit_bias") {
        if !bias.is_empty() {
            return unsupported("logit_bias", "logit_bias");
        }
    }
    if let Some(Value::String(s)) = f.get("suffix") {
        if !s.is_empty() {
            return unsupported("suffix", "suffix (fill-in-the-middle)");
        }
    }
    if endpoint == Endpoint::Chat {
        if let Some(Value::Array(tools)) = f.get("tools") {
            if !tools.is_empty() {
                return unsupported("tools", "tool calling");
            }
        }
        if let Some(Value::Object(format)) = f.get("response_format") {
            if format.get("type").and_then(Value::as_str) != Some("text") {
                return unsupported("response_format", "a response_format other than text");
            }
        }
    }
    Ok(())
}

fn bounded(param: &str, n: u64, max: usize) -> Result<usize, ApiError> {
    match usize::try_from(n) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(ApiError::field(
            param,
            "invalid_value",
            format!("'{param}' must be between 0 and {max}, got {n}"),
        )),
    }
}

fn parse_sampling(f: &Fields<'_>) -> Result<SamplingFields, ApiError> {
    // -1 is llama.cpp's "random seed"; any other negative seed is a mistake.
    let seed = match f.get("seed") {
        Some(v) if v.as_i64() == Some(-1) => None,
        _ => f.uint("seed")?,
    };
    Ok(SamplingFields {
        temperature: f.float("temperature")?,
        top_p: f.float("top_p")?,
        top_k: f
            .uint("top_k")?
            .map(|k| usize::try_from(k).unwrap_or(usize::MAX)),
        min_p: f.float("min_p")?,
        presence_penalty: f.float("presence_penalty")?,
        frequency_penalty: f.float("frequency_penalty")?,
        repeat_penalty: f.float("repeat_penalty")?,
        seed,
    })
}

fn parse_stop(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let stops: Vec<String> = match value {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                v => Err(wrong_type(&format!("stop[{i}]"), "a string", v)),
            })
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(wrong_type("stop", "a string or an array of strings", v)),
    };
    if stops.len() > MAX_STOP_STRINGS {
        return Err(ApiError::field(
            "stop",
            "invalid_value",
            format!(
                "'stop' has {} strings; at most {MAX_STOP_STRINGS} are allowed",
                stops.len()
            ),
        ));
    }
    if let Some(i) = stops.iter().position(String::is_empty) {
        return Err(ApiError::field(
            &format!("stop[{i}]"),
            "invalid_value",
            "stop strings must not be empty",
        ));
    }
    Ok(stops)
}

fn parse_messages(value: &Value) -> Result<Vec<Message>, ApiError> {
    let Value::Array(items) = value else {
        return Err(wrong_type("messages", "an array of messages", value));
    };
    if items.is_empty() {
        return Err(ApiError::field(
            "messages",
            "invalid_value",
            "'messages' is empty; send at least one message",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_message(i, item))
        .collect()
}

/// Roles the chat templates know; "developer" is OpenAI's newer name for "system".
const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

fn parse_message(i: usize, value: &Value) -> Result<Message, ApiError> {
    let at = format!("messages[{i}]");
    let Value::Object(object) = value else {
        return Err(wrong_type(
            &at,
            "an object with 'role' and 'content'",
            value,
        ));
    };
    let f = Fields(object);
    let role = f
        .required("role")
        .map_err(|e| rename_param(e, &format!("{at}.role")))?;
    let role = match role {
        Value::String(r) if ROLES.contains(&r.as_str()) => r.as_str(),
        Value::String(r) => {
            return Err(ApiError::field(
                &format!("{at}.role"),
                "invalid_value",
                format!("'{at}.role' is {r:?}; expected one of {}", ROLES.join(", ")),
            ))
        }
        v => return Err(wrong_type(&format!("{at}.role"), "a string", v)),
    };
    let role = if role == "developer" { "system" } else { role };
    let content = match f.get("content") {
        // An assistant turn that only called tools has no content.
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                text.push_str(content_part(&format!("{at}.content[{j}]"), part)?);
            }
            text
        }
        Some(v) => {
            return Err(wrong_type(
                &format!("{at}.content"),
                "a string or an array of text parts",
                v,
            ))
        }
    };
    Ok(Message::new(role, content))
}

/// The text of one `{"type": "text", "text": ...}` part.
fn content_part<'a>(at: &str, part: &'a Value) -> Result<&'a str, ApiError> {
    let Value::Object(object) = part else {
        return Err(wrong_type(
            at,
            "an object {\"type\": \"text\", \"text\": ...}",
            part,
        ));
    };
    match object.get("type") {
        Some(Value::String(t)) if t == "text" => {}
        Some(Value::String(t)) => {
            return Err(ApiError::field(
                &format!("{at}.type"),
                "unsupported_content",
                format!("content parts of type {t:?} are not supported; send only \"text\" parts"),
            ))
        }
        Some(v) => return Err(wrong_type(&format!("{at}.type"), "a string", v)),
        None => {
            return Err(ApiError::field(
                &format!("{at}.type"),
                "missing_required_parameter",
                format!("'{at}' has no 'type'; send {{\"type\": \"text\", \"text\": ...}}"),
            ))
        }
    }
    match object.get("text") {
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(wrong_type(&format!("{at}.text"), "a string", v)),
        None => Err(ApiError::field(
            &format!("{at}.text"),
            "missing_required_parameter",
            format!("'{at}' has no 'text'"),
        )),
    }
}

fn parse_prompt(value: &Value) -> Result<Input, ApiError> {
    const WANT: &str = "a string, an array of one string, or an array of token ids";
    match value {
        Value::String(s) => Ok(Input::Text(s.clone())),
        Value::Array(items) => match items.as_slice() {
            [] => Err(ApiError::field(
                "prompt",
                "invalid_value",
                "'prompt' is an empty array",
            )),
            [Value::String(s)] => Ok(Input::Text(s.clone())),
            [Value::String(_), ..] => Err(ApiError::field(
                "prompt",
                "invalid_value",
                format!(
                    "'prompt' has {} strings; this server answers one prompt per request",
                    items.len()
                ),
            )),
            [Value::Array(inner)] => token_ids("prompt[0]", inner).map(Input::Tokens),
            [Value::Number(_), ..] => token_ids("prompt", items).map(Input::Tokens),
            _ => Err(wrong_type("prompt", WANT, value)),
        },
        v => Err(wrong_type("prompt", WANT, v)),
    }
}

fn token_ids(at: &str, items: &[Value]) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| wrong_type(&format!("{at}[{i}]"), "a token id (an integer ≥ 0)", v))
        })
        .collect()
}

impl GenerationParams {
    /// The sampler settings: the request's fields over the `[generation]` defaults, checked.
    /// Without a seed in either, `random_seed` gives one.
    pub fn sampler(
        &self,
        defaults: &GenerationConfig,
        random_seed: impl FnOnce() -> u64,
    ) -> Result<SamplerConfig, ApiError> {
        let s = &self.sampling;
        let config = SamplerConfig {
            temperature: s.temperature.unwrap_or(defaults.temperature),
            top_k: s.top_k.unwrap_or(defaults.top_k),
            top_p: s.top_p.unwrap_or(defaults.top_p),
            min_p: s.min_p.unwrap_or(defaults.min_p),
            repeat_penalty: s.repeat_penalty.unwrap_or(defaults.repeat_penalty),
            repeat_last_n: defaults.repeat_last_n,
            presence_penalty: s.presence_penalty.unwrap_or(defaults.presence_penalty),
            frequency_penalty: s.frequency_penalty.unwrap_or(defaults.frequency_penalty),
            seed: s.seed.or(defaults.seed).unwrap_or_else(random_seed),
        };
        config.validate().map_err(|message| {
            // "sampler: top_p must be ...": the second word names the field.
            let param = message
                .strip_prefix("sampler: ")
                .and_then(|m| m.split_whitespace().next())
                .unwrap_or("sampling");
            ApiError::field(param, "invalid_value", message.clone())
        })?;
        Ok(config)
    }

    /// The stop strings: `[generation] stop` plus the request's, as `llmhost run` adds
    /// `--stop` to the config's.
    pub fn stop_strings(&self, defaults: &GenerationConfig) -> Vec<String> {
        let mut stop = defaults.stop.clone();
        stop.extend(self.stop.iter().cloned());
        stop
    }

    /// The name of the field that holds the prompt, for messages.
    pub fn prompt_param(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Chat => "messages",
            Endpoint::Completions => "prompt",
        }
    }

    /// How many tokens to generate at most, given the prompt's length: what the request
    /// asked for, or the endpoint's default; an error when prompt and completion do not fit
    /// in the context.
    pub fn max_tokens(&self, prompt_tokens: usize, n_ctx: usize) -> Result<usize, ApiError> {
        let room = n_ctx.saturating_sub(prompt_tokens);
        let wanted = self.max_tokens.unwrap_or(match self.endpoint {
            Endpoint::Chat => room,
            Endpoint::Completions => DEFAULT_COMPLETION_MAX_TOKENS.min(room),
        });
        if room == 0 || wanted > room {
            let (param, reduce) = match self.max_tokens {
                Some(_) => (
                    self.max_tokens_field,
                    format!(
                        "reduce the length of the {} or '{}'",
                        self.prompt_param(),
                        self.max_tokens_field
                    ),
                ),
                None => (
                    self.prompt_param(),
                    format!("reduce the length of the {}", self.prompt_param()),
                ),
            };
            return Err(ApiError::field(
                param,
                "context_length_exceeded",
                format!(
                    "This model's maximum context length is {n_ctx} tokens, but the request needs \
                     {prompt_tokens} prompt + {} completion tokens; {reduce}.",
                    wanted.max(1)
                ),
            ));
        }
        Ok(wanted)
    }
}

/// `model` must name the loaded model (or be absent).
pub fn check_model(requested: Option<&str>, loaded: &str) -> Result<(), ApiError> {
    match requested {
        None => Ok(()),
        Some(m) if m == loaded => Ok(()),
        Some(m) => Err(ApiError::not_found(
            "model_not_found",
            format!("The model {m:?} does not exist; this server serves {loaded:?} (GET /v1/models lists it)"),
        )
        .with_param("model")),
    }
}

/// The prompt's token ids, exactly as `llmhost run` makes them: chat messages rendered with
/// the model's template and tokenized with special tokens parsed; plain text tokenized with
/// BOS as the model wants it and special-token text left as text; token ids as given.
/// Blocking (rendering and tokenizing a long prompt takes a while): run it off the runtime.
pub fn prompt_tokens(
    input: &Input,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
) -> Result<Vec<u32>, ApiError> {
    let ids = match input {
        Input::Messages(messages) => {
            let text = template
                .render_prompt(messages, true, tokenizer.add_bos(), tokenizer.add_eos())
                .map_err(|e| {
                    ApiError::field(
                        "messages",
                        "invalid_messages",
                        format!("the model's chat template rejected these messages: {e}"),
                    )
                })?;
            tokenizer.encode(&text, true, true)
        }
        Input::Text(text) => tokenizer.encode(text, true, false),
        Input::Tokens(ids) => {
            let n_vocab = tokenizer.n_vocab();
            if let Some((i, id)) = ids
                .iter()
                .enumerate()
                .find(|(_, &id)| id as usize >= n_vocab)
            {
                return Err(ApiError::field(
                    "prompt",
                    "invalid_value",
                    format!("prompt[{i}] is token {id}, but the vocabulary has {n_vocab} tokens"),
                ));
            }
            ids.clone()
        }
    };
    if ids.is_empty() {
        return Err(ApiError::field(
            "prompt",
            "invalid_value",
            "the prompt is empty; send at least one token",
        ));
    }
    Ok(ids)
}

/// Reads fields of a JSON object; `null` counts as absent, as clients send it for "default".
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn required(&self, name: &str) -> Result<&'a Value, ApiError> {
        self.get(name).ok_or_else(|| {
            ApiError::field(
                name,
                "missing_required_parameter",
                format!("'{name}' is required"),
            )
        })
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(wrong_type(name, "a boolean", v)),
        }
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(wrong_type(name, "a string", v)),
        }
    }

    fn uint(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| wrong_type(name, "an integer ≥ 0", v)),
        }
    }

    fn float(&self, name: &str) -> Result<Option<f32>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| wrong_type(name, "a number", v)),
        }
    }
}

fn wrong_type(param: &str, want: &str, got: &Value) -> ApiError {
    let got = match got {
        Value::Number(n) => format!("{n}"),
        other => type_name(other).to_string(),
    };
    ApiError::field(
        param,
        "invalid_type",
        format!("'{param}' must be {want}, got {got}"),
    )
}

fn rename_param(mut e: ApiError, param: &str) -> ApiError {
    if let Some(old) = e.param.take() {
        e.message = e
            .message
            .replace(&format!("'{old}'"), &format!("'{param}'"));
    }
    e.param = Some(param.to_string());
    e
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---- responses ----

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::protocol::Candidate;

    fn parse(endpoint: Endpoint, body: &str) -> Result<GenerationParams, ApiError> {
        parse_request(endpoint, body.as_bytes())
    }

    fn chat(body: &str) -> Result<GenerationParams, ApiError> {
        parse(Endpoint::Chat, body)
    }

    fn completion(body: &str) -> Result<GenerationParams, ApiError> {
        parse(Endpoint::Completions, body)
    }

    /// Asserts a 400 whose param is `param` and whose message contains `needle`.
    fn bad(result: Result<GenerationParams, ApiError>, param: Option<&str>, needle: &str) {
        let e = result.expect_err("expected an error");
        assert_eq!(e.status, 400, "{e:?}");
        assert_eq!(e.param.as_deref(), param, "{e:?}");
        assert!(
            e.message.contains(needle),
            "{needle:?} not in {:?}",
            e.message
        );
        assert!(!e.message.contains('\n'), "{e:?}");
    }

    #[test]
    fn minimal_chat_parses_with_defaults() {
        let p = chat(r#"{"messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        assert_eq!(p.input, Input::Messages(vec![Message::user("hi")]));
        assert_eq!(p.model, None);
        assert_eq!(p.max_tokens, None);
        assert!(!p.stream && !p.include_usage);
        assert_eq!(p.top_logprobs, None);
        assert!(!p.ignore_eos);
        assert_eq!(p.sampling, SamplingFields::default());
    }

    #[test]
    fn full_chat_parses() {
        let p = chat(
            r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
                {"role":"assistant","content":null}],
                "max_tokens":5,"max_completion_tokens":7,"temperature":0,"top_p":0.5,"top_k":3,
                "min_p":0.1,"seed":9,"stop":["x","y"],"presence_penalty":0.5,
                "frequency_penalty":-0.5,"n":1,"logprobs":true,"top_logprobs":2,"stream":true,
                "stream_options":{"include_usage":true},"user":"u","whatever":{"extra":1},
                "ignore_eos":true}"#,
        )
        .unwrap();
        assert_eq!(
            p.input,
            Input::Messages(vec![
                Message::system("be brief"),
                Message::user("ab"),
                Message::assistant("")
            ])
        );
        assert_eq!(p.model.as_deref(), Some("m"));
        assert_eq!(p.max_tokens, Some(7), "max_completion_tokens wins");
        assert_eq!(p.stop, vec!["x", "y"]);
        assert_eq!(p.top_logprobs, Some(2));
        assert!(p.stream && p.include_usage && p.ignore_eos);
        let s = &p.sampling;
        assert_eq!(
            (s.temperature, s.top_p, s.top_k, s.min_p, s.seed),
            (Some(0.0), Some(0.5), Some(3), Some(0.1), Some(9))
        );
        assert_eq!(
            (s.presence_penalty, s.frequency_penalty),
            (Some(0.5), Some(-0.5))
        );
    }

    #[test]
    fn body_level_errors() {
        let e = parse_request(Endpoint::Chat, b"{\"messages\": \"\xff\"}").unwrap_err();
        assert!(
            e.message.contains("UTF-8") && e.message.contains("offset 14"),
            "{e:?}"
        );
        bad(chat("{\"messages\": [}"), None, "not valid JSON");
        bad(chat(""), None, "not valid JSON");
        bad(chat("[1]"), None, "must be a JSON object, got an array");
    }

    #[test]
    fn chat_field_errors_name_the_field() {
        bad(chat("{}"), Some("messages"), "'messages' is required");
        bad(chat(r#"{"messages":[]}"#), Some("messages"), "empty");
        bad(
            chat(r#"{"messages":"hi"}"#),
            Some("messages"),
            "must be an array",
        );
        bad(
            chat(r#"{"messages":[1]}"#),
            Some("messages[0]"),
            "must be an object",
        );
        bad(
            chat(r#"{"messages":[{"content":"x"}]}"#),
            Some("messages[0].role"),
            "required",
        );
        bad(
            chat(r#"{"messages":[{"role":"robot","content":"x"}]}"#),
            Some("messages[0].role"),
            "robot",
        );
        bad(
            chat(r#"{"messages":[{"role":"user","content":5}]}"#),
            Some("messages[0].content"),
            "got 5",
        );
        bad(
            chat(
                r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#,
            ),
            Some("messages[0].content[0].type"),
            "image_url",
        );
        bad(
            chat(r#"{"messages":[{"role":"user","content":[{"type":"text"}]}]}"#),
            Some("messages[0].content[0].text"),
            "no 'text'",
        );
        let m = r#""messages":[{"role":"user","content":"x"}]"#;
        for (extra, param, needle) in [
            (
                r#""temperature":"hot""#,
                "temperature",
                "must be a number, got a string",
            ),
            (r#""max_tokens":-1"#, "max_tokens", "integer ≥ 0, got -1"),
            (r#""max_tokens":0"#, "max_tokens", "at least 1"),
            (
                r#""max_completion_tokens":1.5"#,
                "max_completion_tokens",
                "got 1.5",
            ),
            (r#""n":2"#, "n", "must be 1"),
            (r#""stream":"yes""#, "stream", "boolean"),
            (r#""stop":5"#, "stop", "string or an array"),
            (r#""stop":["a",1]"#, "stop[1]", "must be a string"),
            (r#""stop":[""]"#, "stop[0]", "empty"),
            (r#""logprobs":1"#, "logprobs", "boolean"),
            (r#""top_logprobs":2"#, "top_logprobs", "needs 'logprobs'"),
            (
                r#""logprobs":true,"top_logprobs":21"#,
                "top_logprobs",
                "between 0 and 20",
            ),
            (
                r#""stream_options":{"include_usage":1}"#,
                "stream_options.include_usage",
                "'stream_options.include_usage' must be a boolean",
            ),
            (r#""stream_options":true"#, "stream_options", "object"),
            (r#""model":7"#, "model", "string"),
            (r#""seed":-2"#, "seed", "integer"),
            (r#""tools":[{"type":"function"}]"#, "tools", "not supported"),
            (r#""logit_bias":{"1":5}"#, "logit_bias", "not supported"),
        ] {
            bad(chat(&format!("{{{m},{extra}}}")), Some(param), needle);
        }
        // Nulls mean "default"; seed -1 means random.
        let p = chat(&format!(
            "{{{m},\"temperature\":null,\"stop\":null,\"seed\":-1}}"
        ))
        .unwrap();
        assert_eq!((p.sampling.temperature, p.sampling.seed), (None, None));
    }

    #[test]
    fn prompt_forms() {
        let p = completion(r#"{"prompt":"Once"}"#).unwrap();
        assert_eq!(p.input, Input::Text("Once".into()));
        assert_eq!(
            completion(r#"{"prompt":["Once"]}"#).unwrap().input,
            Input::Text("Once".into())
        );
        assert_eq!(
            completion(r#"{"prompt":[1,2,3]}"#).unwrap().input,
            Input::Tokens(vec![1, 2, 3])
        );
        assert_eq!(
            completion(r#"{"prompt":[[4,5]]}"#).unwrap().input,
            Input::Tokens(vec![4, 5])
        );
        bad(completion("{}"), Some("prompt"), "required");
        bad(
            completion(r#"{"prompt":["a","b"]}"#),
            Some("prompt"),
            "one prompt per request",
        );
        bad(
            completion(r#"{"prompt":[]}"#),
            Some("prompt"),
            "empty array",
        );
        bad(
            completion(r#"{"prompt":[1,-2]}"#),
            Some("prompt[1]"),
            "token id",
        );
        bad(
            completion(r#"{"prompt":[1,"a"]}"#),
            Some("prompt[1]"),
            "token id",
        );
        bad(
            completion(r#"{"prompt":{"a":1}}"#),
            Some("prompt"),
            "got an object",
        );
        bad(
            completion(r#"{"prompt":"x","logprobs":6}"#),
            Some("logprobs"),
            "between 0 and 5",
        );
        bad(
            completion(r#"{"prompt":"x","logprobs":true}"#),
            Some("logprobs"),
            "integer",
        );
        bad(
            completion(r#"{"prompt":"x","echo":true}"#),
            Some("echo"),
            "not supported",
        );
        bad(
            completion(r#"{"prompt":"x","best_of":2}"#),
            Some("best_of"),
            "not supported",
        );
        assert_eq!(
            completion(r#"{"prompt":"x","logprobs":3}"#)
                .unwrap()
                .top_logprobs,
            Some(3)
        );
    }

    #[test]
    fn sampler_takes_request_over_config_and_validates() {
        let defaults = GenerationConfig {
            top_k: 11,
            seed: None,
            stop: vec!["\nUser:".into()],
            ..GenerationConfig::default()
        };
        let p = completion(r#"{"prompt":"x","temperature":0,"stop":"END"}"#).unwrap();
        let s = p.sampler(&defaults, || 77).unwrap();
        assert_eq!((s.temperature, s.top_k, s.seed), (0.0, 11, 77));
        assert_eq!(p.stop_strings(&defaults), vec!["\nUser:", "END"]);
        let p = completion(r#"{"prompt":"x","seed":5}"#).unwrap();
        assert_eq!(p.sampler(&defaults, || 77).unwrap().seed, 5);
        let p = completion(r#"{"prompt":"x","top_p":1.5}"#).unwrap();
        let e = p.sampler(&defaults, || 0).unwrap_err();
        assert_eq!(
            (e.status, e.param.as_deref()),
            (400, Some("top_p")),
            "{e:?}"
        );
        let p = completion(r#"{"prompt":"x","temperature":-1}"#).unwrap();
        let e = p.sampler(&defaults, || 0).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"), "{e:?}");
    }

    #[test]
    fn max_tokens_fits_the_context() {
        let chat_p = chat(r#"{"messages":[{"role":"user","content":"x"}]}"#).unwrap();
        assert_eq!(chat_p.max_tokens(10, 100).unwrap(), 90);
        let comp = completion(r#"{"prompt":"x"}"#).unwrap();
        assert_eq!(comp.max_tokens(10, 100).unwrap(), 16);
        assert_eq!(comp.max_tokens(95, 100).unwrap(), 5);
        let e = comp.max_tokens(100, 100).unwrap_err();
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert_eq!(e.param.as_deref(), Some("prompt"));
        let big = completion(r#"{"prompt":"x","max_tokens":50}"#).unwrap();
        let e = big.max_tokens(60, 100).unwrap_err();
        assert_eq!(
            e.message,
            "This model's maximum context length is 100 tokens, but the request needs 60 prompt \
             + 50 completion tokens; reduce the length of the prompt or 'max_tokens'."
        );
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let c = chat(r#"{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":99}"#)
            .unwrap();
        assert_eq!(
            c.max_tokens(2, 100).unwrap_err().param.as_deref(),
            Some("max_completion_tokens")
        );
    }

    #[test]
    fn model_must_match() {
        assert!(check_model(None, "smol").is_ok());
        assert!(check_model(Some("smol"), "smol").is_ok());
        let e = check_model(Some("gpt-4"), "smol").unwrap_err();
        assert_eq!((e.status, e.code), (404, Some("model_not_found")));
        assert!(e.message.contains("gpt-4") && e.message.contains("smol"));
    }

    #[test]
    fn error_body_has_openai_shape() {
        let body = ApiError::field("top_p", "invalid_value", "bad").body();
        assert_eq!(
            body,
            json!({"error": {"message": "bad", "type": "invalid_request_error",
                             "param": "top_p", "code": "invalid_value"}})
        );
        let e = ApiError::from(SubmitError::ShuttingDown);
        assert_eq!((e.status, e.code), (503, Some("shutting_down")));
        let e = ApiError::from(SubmitError::QueueFull(9));
        assert_eq!((e.status, e.code), (429, Some("queue_full")));
        let e = ApiError::from_status(404, "  no\n such  thing ");
        assert_eq!((e.status, e.message.as_str()), (404, "no such thing"));
    }

    fn candidate(id: u32, text: &str, logprob: f32) -> Candidate {
        Candidate {
            id,
            text: text.into(),
            bytes: text.as_bytes().to_vec(),
            logprob,
        }
    }

    fn token_logprobs() -> Vec<TokenLogprobs> {
        vec![
            TokenLogprobs {
                chosen: candidate(1, "Hé", -0.5),
                top: vec![candidate(1, "Hé", -0.5), candidate(2, "Yo", -1.0)],
            },
            TokenLogprobs {
                chosen: candidate(3, "!", f32::NEG_INFINITY),
                top: vec![],
            },
        ]
    }

    #[test]
    fn logprob_shapes() {
        let lp = token_logprobs();
        let c = chat_logprobs(&lp);
        assert_eq!(c["content"][0]["token"], "Hé");
        assert_eq!(c["content"][0]["bytes"], json!([72, 195, 169]));
        assert_eq!(c["content"][0]["top_logprobs"][1]["token"], "Yo");
        assert_eq!(c["content"][1]["logprob"], json!(-9999.0));
        let t = completion_logprobs(&lp, 10);
        assert_eq!(t["tokens"], json!(["Hé", "!"]));
        assert_eq!(t["token_logprobs"], json!([-0.5, -9999.0]));
        assert_eq!(t["top_logprobs"][0], json!({"Hé": -0.5, "Yo": -1.0}));
        assert_eq!(t["text_offset"], json!([10, 12]));
        assert_eq!(logprobs_text_chars(&lp), 3);
    }

    #[test]
    fn response_shapes() {
        let done = Completion {
            finish: FinishReason::Length,
            tail: String::new(),
            usage: Usage {
                prompt_tokens: 5,
                cached_prompt_tokens: 2,
                completion_tokens: 3,
            },
        };
        let meta = ResponseMeta {
            endpoint: Endpoint::Chat,
            id: "chatcmpl-1".into(),
            created: 7,
            model: "smol".into(),
        };
        let r = meta.response("hi", &done, None);
        assert_eq!(r["object"], "chat.completion");
        assert_eq!(
            r["choices"][0]["message"],
            json!({"role": "assistant", "content": "hi", "refusal": null})
        );
        assert_eq!(r["choices"][0]["finish_reason"], "length");
        assert_eq!(r["choices"][0]["logprobs"], Value::Null);
        assert_eq!(
            r["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                   "prompt_tokens_details": {"cached_tokens": 2}})
        );
        assert_eq!(
            meta.role_chunk(false)["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(meta.role_chunk(true)["usage"], Value::Null);
        assert!(meta.role_chunk(false).get("usage").is_none());
        let c = meta.text_chunk("yo", Some(&token_logprobs()), 0, false);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["choices"][0]["delta"], json!({"content": "yo"}));
        assert_eq!(c["choices"][0]["logprobs"]["content"][1]["token"], "!");
        let f = meta.finish_chunk(FinishReason::Stop, false);
        assert_eq!(f["choices"][0]["delta"], json!({}));
        assert_eq!(f["choices"][0]["finish_reason"], "stop");
        let u = meta.usage_chunk(&done.usage);
        assert_eq!(u["choices"], json!([]));
        assert_eq!(u["usage"]["total_tokens"], 8);

        let meta = ResponseMeta {
            endpoint: Endpoint::Completions,
            ..meta
        };
        let r = meta.response("hi", &done, Some(&token_logprobs()));
        assert_eq!(r["object"], "text_completion");
        assert_eq!(r["choices"][0]["text"], "hi");
        assert_eq!(r["choices"][0]["logprobs"]["tokens"], json!(["Hé", "!"]));
        let c = meta.text_chunk("yo", Some(&token_logprobs()), 4, false);
        assert_eq!(c["choices"][0]["text"], "yo");
        assert_eq!(c["choices"][0]["logprobs"]["text_offset"], json!([4, 6]));
        assert_eq!(
            meta.finish_chunk(FinishReason::Stop, false)["choices"][0]["text"],
            ""
        );
    }
}
