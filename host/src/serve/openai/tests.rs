//! Parsing, validation and response shapes.

use super::*;
use crate::chat::Message;
use crate::config::GenerationConfig;
use crate::serve::protocol::{
    Candidate, Completion, FinishReason, SubmitError, TokenLogprobs, Usage,
};
use serde_json::{json, Value};

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
        chat(r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#),
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
    let c =
        chat(r#"{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":99}"#).unwrap();
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
