//! Request bodies parsed and validated into what the scheduler needs, and the prompt's tokens.

use super::error::ApiError;
use crate::chat::{ChatTemplate, Message};
use crate::config::GenerationConfig;
use crate::sampler::SamplerConfig;
use crate::serve::protocol::MAX_TOP_LOGPROBS;
use crate::tokenizer::Tokenizer;
use serde_json::{Map, Value};

/// Completions without `max_tokens` generate this many at most (OpenAI's default).
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;
/// The most alternatives `/v1/completions` gives per token (OpenAI's limit for `logprobs`).
pub const MAX_COMPLETION_LOGPROBS: usize = 5;
/// The most stop strings one request may give.
pub const MAX_STOP_STRINGS: usize = 16;

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
