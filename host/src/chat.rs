//! Chat templates: a conversation → the prompt text the model was trained on.
//!
//! A GGUF file carries its template in `tokenizer.chat_template`, a Jinja2 string written for
//! Hugging Face `transformers`. It is rendered here with `minijinja`, set up the way HF and
//! llama.cpp run these templates: `trim_blocks` and `lstrip_blocks` on, loop controls
//! (`{% break %}`), Python string/dict methods (`.strip()`, `.startswith()`, `.items()`, via
//! `minijinja-contrib`'s `pycompat`), a Python-compatible `tojson`, and in the context
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, plus the functions
//! `raise_exception(msg)` and `strftime_now(format)`.
//!
//! Templates come from model files, so they are untrusted input: rendering is bounded (fuel)
//! and every failure is a one-line [`ChatError`], never a panic.
//!
//! Without a template, [`ChatTemplate::from_gguf_str`] picks a family default: the Gemma turn
//! format for `gemma*` architectures, else ChatML. llama.cpp itself uses ChatML for every
//! architecture ([`ChatTemplate::from_gguf_str_llama_cpp`]).

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// "system", "user", "assistant" (or whatever else the template knows, e.g. "tool").
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Message::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Message::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Message::new("assistant", content)
    }
}

/// A template that does not parse or fails while rendering. One line, naming the problem and
/// where it is (`chat_template:LINE`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    #[error("chat template: {0}")]
    Template(String),
}

/// Where the template came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateSource {
    /// The model file's `tokenizer.chat_template`.
    Gguf,
    /// Built-in ChatML (the model file has none).
    ChatMl,
    /// Built-in Gemma turn format (the model file has none; a Gemma architecture).
    Gemma,
}

/// llama.cpp's fallback (`CHATML_TEMPLATE_SRC` in `common/chat.cpp`).
pub const CHATML_TEMPLATE: &str = "\
{%- for message in messages -%}
  {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}";

/// The Gemma turn format, as in the template Google ships with Gemma 2/3 instruction models:
/// a system message becomes a prefix of the first user turn, roles must alternate, `assistant`
/// is spelled `model`, contents are trimmed.
pub const GEMMA_TEMPLATE: &str = "\
{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = '' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif -%}
    {%- if message['role'] == 'assistant' -%}
        {%- set role = 'model' -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\\n' }}
{%- endif -%}";

/// The name templates carry in error messages.
const NAME: &str = "chat_template";

/// Instructions one render may run: a real template spends on the order of a hundred per
/// message, so this allows conversations of tens of thousands of messages, while a hostile
/// template stops within a fraction of a second.
const FUEL: u64 = 5_000_000;

/// A parsed chat template with its special-token texts.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Result<Environment<'static>, ChatError>,
    source: String,
    origin: TemplateSource,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// The model's template (`tokenizer.chat_template`, when present and not blank), else the
    /// family default:
    /// the Gemma turn format for `gemma`, `gemma2`, `gemma3` (and other `gemma*`), ChatML for
    /// everything else. `bos`/`eos` are the texts of the BOS/EOS tokens.
    ///
    /// Never fails: a template that does not parse is reported by [`check`](Self::check) and
    /// by every [`render`](Self::render).
    pub fn from_gguf_str(template: Option<&str>, architecture: &str, bos: &str, eos: &str) -> Self {
        match template.filter(|t| !t.trim().is_empty()) {
            Some(t) => Self::with_source(t.to_owned(), TemplateSource::Gguf, bos, eos),
            None if architecture.starts_with("gemma") => {
                Self::with_source(GEMMA_TEMPLATE.into(), TemplateSource::Gemma, bos, eos)
            }
            None => Self::with_source(CHATML_TEMPLATE.into(), TemplateSource::ChatMl, bos, eos),
        }
    }

    /// What llama.cpp does: the model's template, else ChatML whatever the architecture (this
    /// is what the golden renderings of Gemma 3 270M, which has no template, show).
    pub fn from_gguf_str_llama_cpp(template: Option<&str>, bos: &str, eos: &str) -> Self {
        Self::from_gguf_str(template, "", bos, eos)
    }

    /// A template given as source (e.g. a `--chat-template-file`).
    pub fn from_source(template: &str, bos: &str, eos: &str) -> Self {
        Self::with_source(template.to_owned(), TemplateSource::Gguf, bos, eos)
    }

    fn with_source(source: String, origin: TemplateSource, bos: &str, eos: &str) -> Self {
        ChatTemplate {
            env: build_env(&source),
            source,
            origin,
            bos: bos.to_owned(),
            eos: eos.to_owned(),
        }
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn origin(&self) -> TemplateSource {
        self.origin
    }

    /// Whether the template parsed.
    pub fn check(&self) -> Result<(), ChatError> {
        self.env.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// The template's output for `messages`, exactly as HF `apply_chat_template(tokenize=False)`
    /// or llama.cpp's Jinja engine produce it (before llama.cpp's BOS/EOS stripping, see
    /// [`render_prompt`](Self::render_prompt)). With `add_generation_prompt`, it ends with the
    /// header of an assistant turn.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let env = self.env.as_ref().map_err(Clone::clone)?;
        let template = env.get_template(NAME).map_err(one_line)?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos,
                eos_token => &self.eos,
            })
            .map_err(one_line)
    }

    /// The text to tokenize, as llama.cpp makes it: [`render`](Self::render), then, when the
    /// tokenizer adds BOS itself (`add_bos`), a leading BOS text removed, and when it adds EOS
    /// (`add_eos`), a trailing EOS text removed — so that neither is doubled.
    pub fn render_prompt(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        add_bos: bool,
        add_eos: bool,
    ) -> Result<String, ChatError> {
        let mut text = self.render(messages, add_generation_prompt)?;
        if add_bos && !self.bos.is_empty() && text.starts_with(&self.bos) {
            text.drain(..self.bos.len());
        }
        if add_eos && !self.eos.is_empty() && text.ends_with(&self.eos) {
            text.truncate(text.len() - self.eos.len());
        }
        Ok(text)
    }
}

fn one_line(e: Error) -> ChatError {
    let text = e.to_string();
    ChatError::Template(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn build_env(source: &str) -> Result<Environment<'static>, ChatError> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_template_owned(NAME, source.to_owned())
        .map_err(one_line)?;
    Ok(env)
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// The local time formatted with a C `strftime` format, as llama.cpp provides it.
fn strftime_now(format: String) -> Result<Value, Error> {
    use chrono::format::{Item, StrftimeItems};
    if StrftimeItems::new(&format).any(|i| matches!(i, Item::Error)) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: bad format {format:?}"),
        ));
    }
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: cannot format {format:?}"),
        )
    })?;
    Ok(Value::from(out))
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`, as HF
/// defines `tojson` for chat templates (minijinja's own escapes HTML characters and uses
/// compact separators).
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_owned()),
            None => match v.as_usize() {
                Some(n) => Some(" ".repeat(n.min(64))),
                None => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: indent must be an integer or a string",
                    ))
                }
            },
        },
    };
    let mut out = String::new();
    write_json(
        &mut out,
        value,
        indent.as_deref(),
        sort_keys.unwrap_or(false),
        0,
    )?;
    Ok(Value::from(out))
}

fn write_json(
    out: &mut String,
    value: &Value,
    indent: Option<&str>,
    sort_keys: bool,
    depth: usize,
) -> Result<(), Error> {
    if depth > 256 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    let newline = |out: &mut String, depth: usize| {
        if let Some(ind) = indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = value.as_i64() {
                let _ = write!(out, "{i}");
            } else if value.is_integer() {
                out.push_str(&value.to_string());
            } else {
                let x = f64::try_from(value.clone())?;
                out.push_str(&py_float_repr(x));
            }
        }
        ValueKind::String => write_json_str(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, sort_keys, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                match key.as_str() {
                    Some(s) => write_json_str(out, s),
                    None => write_json_str(out, &key.to_string()),
                }
                out.push_str(": ");
                write_json(out, &value.get_item(key)?, indent, sort_keys, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => write_json_str(out, &value.to_string()),
    }
    Ok(())
}

/// A JSON string as Python writes it with `ensure_ascii=False`.
fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` (what `json.dumps` writes): shortest round-trip digits, positional
/// for exponents in [-4, 16), else `d.ddde±XX`.
pub(crate) fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let mut out = String::from(sign);
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.push_str(&"0".repeat(int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.push_str(&"0".repeat((-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        for (x, want) in [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (123.25, "123.25"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1.5e300, "1.5e+300"),
            (1234567890123456.0, "1234567890123456.0"),
            (-0.0, "-0.0"),
            (-2.5e-7, "-2.5e-07"),
        ] {
            assert_eq!(py_float_repr(x), want, "{x}");
        }
    }
}
