//! `llmhost serve` over HTTP, as clients see it.
//!
//! Two servers: the HTTP side in process over a scripted backend (every error path, the
//! response and stream shapes, queueing, cancellation, authentication — no model needed),
//! and the real binary on SmolLM2-135M (the same bad inputs, greedy output equal to
//! `llmhost run`'s, streaming, a client leaving mid-stream, metrics, the API key, and a
//! graceful stop on SIGTERM).

mod common;

use llmhost::chat::ChatTemplate;
use llmhost::serve::http::{self, App, Backend, ServerOptions};
use llmhost::serve::protocol::{
    Candidate, Completion, Event, FinishReason, GenerationRequest, ModelDesc, StatsSnapshot,
    SubmitError, TokenEvent, TokenLogprobs, Usage,
};
use llmhost::tokenizer::{Tokenizer, TokenizerSpec};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

// ---- a small HTTP/1.1 client over a raw socket: any bytes, any headers ----

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn raw(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    // The server may answer (413) before reading everything; what it answered still counts.
    let _ = stream.write_all(&request_bytes(method, path, headers, body));
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    parse_reply(&bytes)
}

fn parse_reply(bytes: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(bytes);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            body.push_str(&after[..size.min(after.len())]);
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> Reply {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    raw(addr, "GET", path, &headers, b"")
}

fn post(addr: SocketAddr, path: &str, body: &Value, key: Option<&str>) -> Reply {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Content-Type", "application/json")];
    headers.extend(auth.iter().map(|a| ("Authorization", a.as_str())));
    raw(addr, "POST", path, &headers, body.to_string().as_bytes())
}

/// The `data:` payloads of a server-sent event stream.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data event: {e:?}"))
                .to_string()
        })
        .collect()
}

/// Asserts an OpenAI error object with `status` whose message contains `needle`; returns
/// the `error` member.
fn assert_error(reply: &Reply, status: u16, needle: &str) -> Value {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{reply:?}"
    );
    let body = reply.json();
    let error = &body["error"];
    let message = error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.message: {body}"));
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{body}"
    );
    assert!(
        message.to_lowercase().contains(&needle.to_lowercase()),
        "{needle:?} not in {message:?}"
    );
    assert!(!message.contains('\n'), "{message:?}");
    error.clone()
}

// ---- bad input: the same cases against both servers ----

struct Case {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// In the error message.
    needle: &'static str,
    /// The error's `param`, when the problem is one field.
    param: Option<&'static str>,
}

fn case(
    what: &'static str,
    path: &'static str,
    body: &str,
    status: u16,
    needle: &'static str,
    param: Option<&'static str>,
) -> Case {
    Case {
        what,
        method: "POST",
        path,
        content_type: Some("application/json"),
        body: body.as_bytes().to_vec(),
        status,
        needle,
        param,
    }
}

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

fn bad_input_cases(max_body_bytes: usize) -> Vec<Case> {
    let m = r#""messages":[{"role":"user","content":"Hi"}]"#;
    let with = |extra: &str| format!("{{{m},{extra}}}");
    let mut cases = vec![
        case(
            "malformed JSON",
            CHAT,
            r#"{"messages": ["#,
            400,
            "not valid JSON",
            None,
        ),
        case(
            "a JSON array",
            CHAT,
            "[1,2]",
            400,
            "must be a JSON object",
            None,
        ),
        case("empty body", COMPLETIONS, "", 400, "not valid JSON", None),
        case(
            "no messages",
            CHAT,
            "{}",
            400,
            "'messages' is required",
            Some("messages"),
        ),
        case(
            "empty messages",
            CHAT,
            r#"{"messages":[]}"#,
            400,
            "empty",
            Some("messages"),
        ),
        case(
            "messages not an array",
            CHAT,
            r#"{"messages":"Hi"}"#,
            400,
            "must be an array",
            Some("messages"),
        ),
        case(
            "unknown role",
            CHAT,
            r#"{"messages":[{"role":"robot","content":"x"}]}"#,
            400,
            "robot",
            Some("messages[0].role"),
        ),
        case(
            "image part",
            CHAT,
            r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
            400,
            "image_url",
            Some("messages[0].content[0].type"),
        ),
        case(
            "temperature a string",
            CHAT,
            &with(r#""temperature":"hot""#),
            400,
            "'temperature' must be a number",
            Some("temperature"),
        ),
        case(
            "top_p out of range",
            CHAT,
            &with(r#""top_p":1.5"#),
            400,
            "top_p",
            Some("top_p"),
        ),
        case(
            "negative temperature",
            CHAT,
            &with(r#""temperature":-1"#),
            400,
            "temperature",
            Some("temperature"),
        ),
        case(
            "max_tokens zero",
            CHAT,
            &with(r#""max_tokens":0"#),
            400,
            "at least 1",
            Some("max_tokens"),
        ),
        case(
            "max_tokens negative",
            CHAT,
            &with(r#""max_tokens":-5"#),
            400,
            "'max_tokens' must be an integer",
            Some("max_tokens"),
        ),
        case(
            "n above 1",
            CHAT,
            &with(r#""n":2"#),
            400,
            "'n' must be 1",
            Some("n"),
        ),
        case(
            "stop a number",
            CHAT,
            &with(r#""stop":7"#),
            400,
            "'stop' must be",
            Some("stop"),
        ),
        case(
            "top_logprobs without logprobs",
            CHAT,
            &with(r#""top_logprobs":3"#),
            400,
            "needs 'logprobs'",
            Some("top_logprobs"),
        ),
        case(
            "top_logprobs above 20",
            CHAT,
            &with(r#""logprobs":true,"top_logprobs":21"#),
            400,
            "between 0 and 20",
            Some("top_logprobs"),
        ),
        case(
            "stream not a boolean",
            CHAT,
            &with(r#""stream":"yes""#),
            400,
            "'stream' must be a boolean",
            Some("stream"),
        ),
        case(
            "unknown model",
            CHAT,
            &with(r#""model":"gpt-9""#),
            404,
            "gpt-9",
            Some("model"),
        ),
        case(
            "context exceeded",
            CHAT,
            &with(r#""max_tokens":1000000"#),
            400,
            "maximum context length",
            Some("max_tokens"),
        ),
        case(
            "no prompt",
            COMPLETIONS,
            "{}",
            400,
            "'prompt' is required",
            Some("prompt"),
        ),
        case(
            "two prompts",
            COMPLETIONS,
            r#"{"prompt":["a","b"]}"#,
            400,
            "one prompt",
            Some("prompt"),
        ),
        case(
            "prompt an object",
            COMPLETIONS,
            r#"{"prompt":{"a":1}}"#,
            400,
            "'prompt' must be",
            Some("prompt"),
        ),
        case(
            "token id out of range",
            COMPLETIONS,
            r#"{"prompt":[1,4000000000]}"#,
            400,
            "vocabulary",
            Some("prompt"),
        ),
        case(
            "completions logprobs above 5",
            COMPLETIONS,
            r#"{"prompt":"a","logprobs":6}"#,
            400,
            "between 0 and 5",
            Some("logprobs"),
        ),
        case(
            "echo",
            COMPLETIONS,
            r#"{"prompt":"a","echo":true}"#,
            400,
            "not supported",
            Some("echo"),
        ),
    ];
    let mut utf8 = case("invalid UTF-8", COMPLETIONS, "", 400, "UTF-8", None);
    utf8.body = b"{\"prompt\": \"\xff\xfe\"}".to_vec();
    cases.push(utf8);
    let mut plain = case(
        "text/plain body",
        CHAT,
        &format!("{{{m}}}"),
        415,
        "Content-Type",
        None,
    );
    plain.content_type = Some("text/plain");
    cases.push(plain);
    let mut missing = case(
        "no content type",
        COMPLETIONS,
        r#"{"prompt":"a"}"#,
        415,
        "no Content-Type",
        None,
    );
    missing.content_type = None;
    cases.push(missing);
    let mut big = case("oversized body", COMPLETIONS, "", 413, "larger than", None);
    big.body = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(max_body_bytes + 100)).into_bytes();
    cases.push(big);
    let mut route = case(
        "unknown route",
        "/v1/engines",
        "{}",
        404,
        "unknown URL",
        None,
    );
    route.method = "GET";
    cases.push(route);
    let mut method = case("GET on a POST route", CHAT, "", 405, "use POST", None);
    method.method = "GET";
    cases.push(method);
    let mut method = case(
        "DELETE on a GET route",
        "/v1/models",
        "",
        405,
        "use GET",
        None,
    );
    method.method = "DELETE";
    cases.push(method);
    cases
}

/// Runs every bad-input case; each must give its status and an OpenAI error naming the
/// problem. `key`: sent on every request.
fn check_bad_inputs(addr: SocketAddr, max_body_bytes: usize, key: Option<&str>) {
    let auth = key.map(|k| format!("Bearer {k}"));
    for c in bad_input_cases(max_body_bytes) {
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(t) = c.content_type {
            headers.push(("Content-Type", t));
        }
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        let reply = raw(addr, c.method, c.path, &headers, &c.body);
        assert_eq!(reply.status, c.status, "{}: {}", c.what, reply.body);
        let error = assert_error(&reply, c.status, c.needle);
        if let Some(param) = c.param {
            assert_eq!(error["param"], param, "{}: {error}", c.what);
        }
    }
}

fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut series = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad metrics line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let bare = name.split('{').next().unwrap_or_default();
        assert!(
            !bare.is_empty()
                && bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if let Some(labels) = name.strip_prefix(bare) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels in {line:?}"
            );
        }
        series.insert(name.to_string(), value);
    }
    series
}

const METRICS: [&str; 15] = [
    "llmhost_prompt_tokens_total",
    "llmhost_prompt_tokens_cached_total",
    "llmhost_generated_tokens_total",
    "llmhost_requests_cancelled_total",
    "llmhost_requests_failed_total",
    "llmhost_queue_depth",
    "llmhost_active_sequences",
    "llmhost_kv_blocks_used",
    "llmhost_kv_blocks_free",
    "llmhost_kv_blocks_cached",
    "llmhost_kv_blocks_total",
    "llmhost_time_to_first_token_seconds_count",
    "llmhost_inter_token_latency_seconds_count",
    "llmhost_request_duration_seconds_count",
    "llmhost_request_duration_seconds_sum",
];

fn metrics(addr: SocketAddr, key: Option<&str>) -> HashMap<String, f64> {
    let reply = get(addr, "/metrics", key);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain")));
    let series = parse_metrics(&reply.body);
    for name in METRICS {
        assert!(series.contains_key(name), "{name} missing:\n{}", reply.body);
    }
    series
}

/// Sends a streaming request, reads until the first content arrives, and hangs up.
fn hang_up_mid_stream(addr: SocketAddr, path: &str, body: &Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let body = body.to_string();
    stream
        .write_all(&request_bytes(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        ))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(60);
    while String::from_utf8_lossy(&seen).matches("data: ").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "no stream started: {:?}",
            String::from_utf8_lossy(&seen)
        );
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the server closed the stream early: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    drop(stream);
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- in process, over a scripted backend ----

/// A byte-level SentencePiece vocabulary: every text tokenizes, no model file needed.
fn byte_tokenizer() -> Tokenizer {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    tokens.extend((0..256).map(|b| format!("<0x{b:02X}>")));
    tokens.push("▁".into());
    let mut types = vec![1i32; tokens.len()];
    types[0] = 2;
    types[1] = 3;
    types[2] = 3;
    for t in types.iter_mut().skip(3).take(256) {
        *t = 6;
    }
    Tokenizer::new(TokenizerSpec {
        model: "llama".into(),
        scores: Some(vec![0.0; tokens.len()]),
        tokens,
        token_types: Some(types),
        ..TokenizerSpec::default()
    })
    .unwrap()
}

const FAKE_MODEL: &str = "fake-model";
const FAKE_CTX: usize = 256;

/// What the HTTP side submitted.
#[derive(Debug, Clone)]
struct Submitted {
    prompt: Vec<u32>,
    max_tokens: usize,
    temperature: f32,
    top_k: usize,
    seed: u64,
    stop: Vec<String>,
    top_logprobs: Option<usize>,
}

/// Answers by script, keyed on words in the prompt: QUEUEFULL and SHUTDOWN refuse, FAIL fails
/// after two tokens, HOLD holds its text back until the end, SLOW takes 20 ms a token and
/// up to 1000 tokens; anything else gives `min(max_tokens, 8)` tokens "t0 ", "t1 ", ...
struct Scripted {
    model: ModelDesc,
    submitted: Mutex<Vec<Submitted>>,
    cancelled: Arc<AtomicUsize>,
}

impl Scripted {
    fn new() -> Arc<Scripted> {
        let tokenizer = Arc::new(byte_tokenizer());
        let template = ChatTemplate::from_source(
            "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}\
             {% if add_generation_prompt %}<|assistant|>{% endif %}",
            "<s>",
            "</s>",
        );
        Arc::new(Scripted {
            model: ModelDesc {
                id: FAKE_MODEL.into(),
                architecture: "llama".into(),
                n_ctx: FAKE_CTX,
                n_vocab: tokenizer.n_vocab(),
                kernel: "scripted".into(),
                threads: 1,
                tokenizer,
                template: Arc::new(template),
                created: 1_700_000_000,
            },
            submitted: Mutex::new(Vec::new()),
            cancelled: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn last(&self) -> Submitted {
        self.submitted
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("nothing submitted")
    }
}

fn candidate(id: u32, text: &str, logprob: f32) -> Candidate {
    Candidate {
        id,
        text: text.into(),
        bytes: text.as_bytes().to_vec(),
        logprob,
    }
}

fn play(script: String, request: GenerationRequest, cancelled: Arc<AtomicUsize>) {
    let send = |e: Event| request.events.send(e).is_ok();
    let logprobs = |i: u32, text: &str| {
        request.top_logprobs.map(|n| TokenLogprobs {
            chosen: candidate(i, text, -0.25),
            top: (0..n as u32)
                .map(|j| candidate(100 + j, &format!("alt{j}"), -1.0 - j as f32))
                .collect(),
        })
    };
    let usage = |n: usize| Usage {
        prompt_tokens: request.prompt.len(),
        cached_prompt_tokens: 1,
        completion_tokens: n,
    };
    if script.contains("HOLD") {
        for i in 0..2 {
            let token = TokenEvent {
                id: i,
                text: String::new(),
                logprobs: logprobs(i, "he"),
            };
            send(Event::Token(token));
        }
        send(Event::Done(Completion {
            finish: FinishReason::Stop,
            tail: "held".into(),
            usage: usage(2),
        }));
        return;
    }
    let (delay, most) = if script.contains("SLOW") {
        (20, 1000)
    } else {
        (0, 8)
    };
    let n = request.max_tokens.min(most);
    for i in 0..n as u32 {
        std::thread::sleep(Duration::from_millis(delay));
        if script.contains("FAIL") && i == 2 {
            send(Event::Failed("scripted failure".into()));
            return;
        }
        let text = format!("t{i} ");
        let token = TokenEvent {
            id: i,
            logprobs: logprobs(i, &text),
            text,
        };
        if !send(Event::Token(token)) {
            cancelled.fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
    let finish = if request.max_tokens <= most {
        FinishReason::Length
    } else {
        FinishReason::Stop
    };
    send(Event::Done(Completion {
        finish,
        tail: String::new(),
        usage: usage(n),
    }));
}

impl Backend for Scripted {
    fn model(&self) -> &ModelDesc {
        &self.model
    }

    fn submit(&self, request: GenerationRequest) -> Result<(), SubmitError> {
        let script = self.model.tokenizer.decode(&request.prompt, false);
        if script.contains("QUEUEFULL") {
            return Err(SubmitError::QueueFull(7));
        }
        if script.contains("SHUTDOWN") {
            return Err(SubmitError::ShuttingDown);
        }
        self.submitted.lock().unwrap().push(Submitted {
            prompt: request.prompt.clone(),
            max_tokens: request.max_tokens,
            temperature: request.sampler.temperature,
            top_k: request.sampler.top_k,
            seed: request.sampler.seed,
            stop: request.stop.clone(),
            top_logprobs: request.top_logprobs,
        });
        let cancelled = self.cancelled.clone();
        std::thread::spawn(move || play(script, request, cancelled));
        Ok(())
    }

    fn stats(&self) -> StatsSnapshot {
        StatsSnapshot {
            kv_blocks_total: 16,
            kv_blocks_free: 16,
            ..StatsSnapshot::default()
        }
    }
}

const SMALL_BODY: usize = 4096;

fn options() -> ServerOptions {
    ServerOptions {
        api_key: None,
        max_body_bytes: SMALL_BODY,
        max_in_flight: 8,
        generation: Default::default(),
    }
}

/// The HTTP side on a free port in a runtime of its own; stops when dropped.
struct InProcess {
    addr: SocketAddr,
    backend: Arc<Scripted>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    /// Signals a graceful shutdown and waits until the server has let every request finish.
    fn stop_and_wait(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

fn in_process(options: ServerOptions) -> InProcess {
    let backend = Scripted::new();
    let app = App::new(backend.clone(), options);
    let (addr_tx, addr_rx) = mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let _ = http::serve(listener, app.router(), async {
                let _ = stopped.await;
            })
            .await;
        });
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    InProcess {
        addr,
        backend,
        stop: Some(stop),
        thread: Some(thread),
    }
}

fn chat_body(content: &str, extra: Value) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": content}]});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

#[test]
fn scripted_bad_inputs_get_openai_errors_and_the_server_goes_on() {
    let s = in_process(options());
    check_bad_inputs(s.addr, SMALL_BODY, None);
    // Refusals from the inference thread.
    let r = post(s.addr, CHAT, &chat_body("QUEUEFULL", json!({})), None);
    assert_eq!(assert_error(&r, 429, "busy")["code"], "queue_full");
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = post(s.addr, COMPLETIONS, &json!({"prompt": "SHUTDOWN"}), None);
    assert_eq!(
        assert_error(&r, 503, "shutting down")["code"],
        "shutting_down"
    );
    // Nothing above reached the backend but the two refusals, and the server still answers.
    assert!(s.backend.submitted.lock().unwrap().is_empty());
    let r = post(
        s.addr,
        CHAT,
        &chat_body("Hi", json!({"max_tokens": 2})),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let m = metrics(s.addr, None);
    assert_eq!(
        m["llmhost_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}"],
        1.0
    );
    assert!(m["llmhost_requests_total{endpoint=\"/v1/chat/completions\",status=\"400\"}"] >= 10.0);
    assert_eq!(
        m["llmhost_requests_total{endpoint=\"other\",status=\"404\"}"],
        1.0
    );
}

#[test]
fn scripted_chat_answers_in_openai_shape_with_the_rendered_prompt() {
    let s = in_process(options());
    let body = chat_body(
        "Hi",
        json!({"model": FAKE_MODEL, "max_tokens": 3, "temperature": 0, "top_k": 5, "seed": 42,
               "stop": ["END"], "user": "someone", "unknown_extra": [1, 2]}),
    );
    let r = post(s.addr, CHAT, &body, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"), "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], FAKE_MODEL);
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "t0 t1 t2 ");
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(choice["logprobs"], Value::Null);
    let prompt_len = s.backend.last().prompt.len();
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": prompt_len, "completion_tokens": 3, "total_tokens": prompt_len + 3,
               "prompt_tokens_details": {"cached_tokens": 1}})
    );
    let sent = s.backend.last();
    let tok = &s.backend.model.tokenizer;
    assert_eq!(
        sent.prompt,
        tok.encode("<|user|>Hi\n<|assistant|>", true, true)
    );
    assert_eq!(
        (sent.max_tokens, sent.temperature, sent.top_k, sent.seed),
        (3, 0.0, 5, 42)
    );
    assert_eq!(sent.stop, vec!["END"]);
    assert_eq!(sent.top_logprobs, None);

    // Without max_tokens a chat may use the rest of the context; text parts join.
    let body = json!({"messages": [{"role": "system", "content": "S"},
                                   {"role": "user", "content": [{"type": "text", "text": "a"},
                                                                {"type": "text", "text": "b"}]}]});
    let r = post(s.addr, CHAT, &body, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let sent = s.backend.last();
    assert_eq!(
        sent.prompt,
        tok.encode("<|system|>S\n<|user|>ab\n<|assistant|>", true, true)
    );
    assert_eq!(sent.max_tokens, FAKE_CTX - sent.prompt.len());
    // Two requests without a seed get different random seeds.
    post(s.addr, CHAT, &body, None);
    assert_ne!(s.backend.last().seed, sent.seed);
}

#[test]
fn scripted_completions_answer_with_logprobs() {
    let s = in_process(options());
    let r = post(
        s.addr,
        COMPLETIONS,
        &json!({"prompt": "Once", "logprobs": 2, "max_tokens": 2}),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"), "{v}");
    assert_eq!(v["object"], "text_completion");
    let choice = &v["choices"][0];
    assert_eq!(choice["text"], "t0 t1 ");
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(choice["logprobs"]["tokens"], json!(["t0 ", "t1 "]));
    assert_eq!(choice["logprobs"]["token_logprobs"], json!([-0.25, -0.25]));
    assert_eq!(
        choice["logprobs"]["top_logprobs"][0],
        json!({"alt0": -1.0, "alt1": -2.0})
    );
    assert_eq!(choice["logprobs"]["text_offset"], json!([0, 3]));
    let sent = s.backend.last();
    assert_eq!(
        sent.prompt,
        s.backend.model.tokenizer.encode("Once", true, false)
    );
    assert_eq!(sent.top_logprobs, Some(2));

    // Defaults: 16 tokens; a prompt of token ids goes as it is; a one-string list is a string.
    post(s.addr, COMPLETIONS, &json!({"prompt": ["Once"]}), None);
    assert_eq!(s.backend.last().max_tokens, 16);
    assert_eq!(s.backend.last().prompt, sent.prompt);
    let r = post(
        s.addr,
        COMPLETIONS,
        &json!({"prompt": [5, 6, 7], "max_tokens": 1}),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s.backend.last().prompt, vec![5, 6, 7]);
    // Chat logprobs.
    let r = post(
        s.addr,
        CHAT,
        &chat_body(
            "x",
            json!({"logprobs": true, "top_logprobs": 1, "max_tokens": 1}),
        ),
        None,
    );
    let lp = &r.json()["choices"][0]["logprobs"]["content"][0];
    assert_eq!(lp["token"], "t0 ");
    assert_eq!(lp["bytes"], json!([116, 48, 32]));
    assert_eq!(
        lp["top_logprobs"],
        json!([{"token": "alt0", "logprob": -1.0, "bytes": [97, 108, 116, 48]}])
    );
}

#[test]
fn scripted_chat_streams_role_deltas_finish_usage_done() {
    let s = in_process(options());
    let body = chat_body(
        "Hi",
        json!({"stream": true, "max_tokens": 3, "stream_options": {"include_usage": true},
                                      "logprobs": true}),
    );
    let r = post(s.addr, CHAT, &body, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = sse_data(&r.body);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(chunks
        .iter()
        .all(|c| c["id"] == id && c["object"] == "chat.completion.chunk"));
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let deltas: Vec<&str> = chunks[1..4]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, ["t0 ", "t1 ", "t2 "]);
    assert_eq!(
        chunks[1]["choices"][0]["logprobs"]["content"][0]["token"],
        "t0 "
    );
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[4]["choices"][0]["delta"], json!({}));
    assert!(chunks[..5].iter().all(|c| c["usage"].is_null()));
    assert_eq!(chunks[5]["choices"], json!([]));
    assert_eq!(chunks[5]["usage"]["completion_tokens"], 3);
    assert_eq!(chunks.len(), 6);
}

#[test]
fn scripted_completion_stream_and_held_back_text() {
    let s = in_process(options());
    let r = post(
        s.addr,
        COMPLETIONS,
        &json!({"prompt": "x", "stream": true, "max_tokens": 2}),
        None,
    );
    let events = sse_data(&r.body);
    assert_eq!(events.len(), 4, "{events:?}");
    let chunks: Vec<Value> = events[..3]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["object"], "text_completion");
    assert_eq!(chunks[0]["choices"][0]["text"], "t0 ");
    assert_eq!(chunks[1]["choices"][0]["text"], "t1 ");
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "length");
    assert!(chunks[2].get("usage").is_none());
    assert_eq!(events[3], "[DONE]");

    // Tokens whose text is held back send no empty deltas; the tail comes at the end with
    // their log-probabilities.
    let body = chat_body("HOLD", json!({"stream": true, "logprobs": true}));
    let events = sse_data(&post(s.addr, CHAT, &body, None).body);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks.len(), 3, "{events:?}");
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "held");
    assert_eq!(
        chunks[1]["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
    let r = post(s.addr, CHAT, &chat_body("HOLD", json!({})), None);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "held");
}

#[test]
fn scripted_failure_is_an_error_object_streamed_or_not() {
    let s = in_process(options());
    let r = post(s.addr, CHAT, &chat_body("FAIL", json!({})), None);
    assert_eq!(
        assert_error(&r, 500, "scripted failure")["type"],
        "server_error"
    );
    let r = post(
        s.addr,
        COMPLETIONS,
        &json!({"prompt": "FAIL", "stream": true}),
        None,
    );
    assert_eq!(r.status, 200);
    let events = sse_data(&r.body);
    assert_eq!(events.len(), 3, "{events:?}");
    let error: Value = serde_json::from_str(&events[2]).unwrap();
    assert_eq!(error["error"]["type"], "server_error");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("scripted failure"));
    assert!(!events.contains(&"[DONE]".to_string()));
    assert_eq!(
        post(s.addr, COMPLETIONS, &json!({"prompt": "ok"}), None).status,
        200
    );
}

#[test]
fn scripted_client_leaving_cancels_and_others_are_served() {
    let s = in_process(options());
    hang_up_mid_stream(s.addr, CHAT, &chat_body("SLOW", json!({"stream": true})));
    wait_for("the streamed request to be cancelled", || {
        s.backend.cancelled.load(Ordering::SeqCst) == 1
    });

    // A client that leaves while waiting for a plain JSON answer cancels it too.
    let mut stream = TcpStream::connect(s.addr).unwrap();
    let body = json!({"prompt": "SLOW", "max_tokens": 200}).to_string();
    stream
        .write_all(&request_bytes(
            "POST",
            COMPLETIONS,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        ))
        .unwrap();
    wait_for("the request to be submitted", || {
        s.backend.submitted.lock().unwrap().len() == 2
    });
    std::thread::sleep(Duration::from_millis(100));
    drop(stream);
    wait_for("the plain request to be cancelled", || {
        s.backend.cancelled.load(Ordering::SeqCst) == 2
    });

    let r = post(
        s.addr,
        CHAT,
        &chat_body("Hi", json!({"max_tokens": 1})),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for("in-flight requests to be released", || {
        metrics(s.addr, None)["llmhost_http_requests_in_flight"] == 0.0
    });
}

#[test]
fn scripted_queue_limit_gives_429() {
    let s = in_process(ServerOptions {
        max_in_flight: 1,
        ..options()
    });
    let addr = s.addr;
    let slow = std::thread::spawn(move || {
        post(
            addr,
            COMPLETIONS,
            &json!({"prompt": "SLOW", "max_tokens": 20}),
            None,
        )
    });
    wait_for("the slow request to be submitted", || {
        !s.backend.submitted.lock().unwrap().is_empty()
    });
    let r = post(s.addr, COMPLETIONS, &json!({"prompt": "x"}), None);
    assert_eq!(assert_error(&r, 429, "busy")["code"], "queue_full");
    assert_eq!(slow.join().unwrap().status, 200);
    assert_eq!(
        post(s.addr, COMPLETIONS, &json!({"prompt": "x"}), None).status,
        200
    );
}

#[test]
fn scripted_api_key_guards_all_but_health() {
    let s = in_process(ServerOptions {
        api_key: Some("s3cret".into()),
        ..options()
    });
    assert_eq!(get(s.addr, "/health", None).json(), json!({"status": "ok"}));
    for path in ["/v1/models", "/metrics"] {
        let e = assert_error(&get(s.addr, path, None), 401, "API key");
        assert_eq!(e["type"], "authentication_error");
        assert_error(&get(s.addr, path, Some("wrong")), 401, "incorrect API key");
        assert_eq!(get(s.addr, path, Some("s3cret")).status, 200);
    }
    let r = post(
        s.addr,
        CHAT,
        &chat_body("Hi", json!({"max_tokens": 1})),
        None,
    );
    assert_error(&r, 401, "API key");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_error(
        &post(s.addr, CHAT, &chat_body("Hi", json!({})), Some("s3creT")),
        401,
        "incorrect",
    );
    assert_eq!(
        post(
            s.addr,
            CHAT,
            &chat_body("Hi", json!({"max_tokens": 1})),
            Some("s3cret")
        )
        .status,
        200
    );
    assert!(s.backend.submitted.lock().unwrap().len() == 1);
    // With the key, bad input is still answered as bad input.
    check_bad_inputs(s.addr, SMALL_BODY, Some("s3cret"));
}

#[test]
fn scripted_models_health_metrics() {
    let s = in_process(options());
    assert_eq!(get(s.addr, "/health", None).json(), json!({"status": "ok"}));
    let v = get(s.addr, "/v1/models", None).json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], FAKE_MODEL);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["owned_by"], "llmhost");
    assert_eq!(
        get(s.addr, "/v1/models/fake-model", None).json()["id"],
        FAKE_MODEL
    );
    assert_eq!(
        assert_error(&get(s.addr, "/v1/models/other", None), 404, "other")["code"],
        "model_not_found"
    );
    post(
        s.addr,
        CHAT,
        &chat_body("Hi", json!({"max_tokens": 3})),
        None,
    );
    let m = metrics(s.addr, None);
    assert_eq!(m["llmhost_time_to_first_token_seconds_count"], 1.0);
    assert_eq!(m["llmhost_inter_token_latency_seconds_count"], 2.0);
    assert_eq!(m["llmhost_request_duration_seconds_count"], 1.0);
    assert_eq!(m["llmhost_kv_blocks_total"], 16.0);
    assert_eq!(
        m["llmhost_requests_total{endpoint=\"/health\",status=\"200\"}"],
        1.0
    );
    assert_eq!(
        m["llmhost_requests_total{endpoint=\"/v1/models/{id}\",status=\"404\"}"],
        1.0
    );
}

#[test]
fn scripted_graceful_stop_finishes_streams_in_flight() {
    let s = in_process(options());
    let addr = s.addr;
    let body = json!({"prompt": "SLOW", "max_tokens": 25, "stream": true});
    let stream = std::thread::spawn(move || post(addr, COMPLETIONS, &body, None));
    wait_for("the stream to start", || {
        !s.backend.submitted.lock().unwrap().is_empty()
    });
    let started = Instant::now();
    s.stop_and_wait();
    // 25 tokens at 20 ms: the stop waited for the stream to end.
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    let events = sse_data(&stream.join().unwrap().body);
    assert_eq!(events.len(), 27, "{events:?}");
    assert_eq!(events[26], "[DONE]");
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after the stop"
    );
}

// ---- the real binary on SmolLM2 ----

fn llmhost() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmhost"));
    cmd.env_remove("LLMHOST_API_KEY")
        .env_remove("LLMHOST_CONFIG");
    cmd
}

/// A running `llmhost serve`; killed when dropped.
struct Served {
    child: Child,
    addr: SocketAddr,
    model_id: String,
    stderr: Arc<Mutex<String>>,
    _config_dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SERVE_CTX: &str = "512";
/// `[server] max_body_bytes` of the served binary: small, so that the oversized-body case
/// sends little.
const SERVE_BODY_LIMIT: usize = 4096;

fn serve(args: &[&str], env: &[(&str, &str)]) -> Served {
    serve_parallel(2, args, env)
}

/// [`serve`] with `parallel` sequences.
fn serve_parallel(parallel: usize, args: &[&str], env: &[(&str, &str)]) -> Served {
    let parallel_arg = parallel.to_string();
    let model = common::model_path("smollm2-135m");
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("llmhost.toml");
    std::fs::write(
        &config,
        format!("[server]\nmax_body_bytes = {SERVE_BODY_LIMIT}\n"),
    )
    .unwrap();
    let mut cmd = llmhost();
    cmd.arg("--config").arg(&config);
    cmd.args([
        "serve",
        "--port",
        "0",
        "-t",
        "1",
        "--parallel",
        &parallel_arg,
        "-c",
        SERVE_CTX,
        "-m",
    ])
    .arg(&model)
    .args(args)
    .envs(env.iter().copied())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let sink = stderr.clone();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        let mut line = String::new();
        while err.read_line(&mut line).is_ok_and(|n| n > 0) {
            sink.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    let (tx, rx) = mpsc::channel();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        let mut line = String::new();
        while out.read_line(&mut line).is_ok_and(|n| n > 0) {
            let _ = tx.send(line.clone());
            line.clear();
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "llmhost serve printed no listening line; stderr:\n{}",
                stderr.lock().unwrap()
            )
        });
    // llmhost serve: listening on http://127.0.0.1:PORT (model ID, kernel K, N threads, P parallel sequences)
    let rest = line
        .strip_prefix("llmhost serve: listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let (addr, info) = rest.split_once(' ').unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    assert_ne!(addr.port(), 0);
    let model_id = info
        .strip_prefix("(model ")
        .and_then(|i| i.split(',').next())
        .unwrap_or_else(|| panic!("no model in {line:?}"))
        .to_string();
    assert!(
        info.contains("1 threads") && info.contains(&format!("{parallel} parallel sequences")),
        "{line}"
    );
    Served {
        child,
        addr,
        model_id,
        stderr,
        _config_dir: config_dir,
    }
}

/// What `llmhost run` prints for the same greedy request (its stdout is only the text, plus
/// a final newline).
fn run_greedy(extra: &[&str], prompt: &str, n: usize) -> String {
    let model = common::model_path("smollm2-135m");
    let out = llmhost()
        .args([
            "run",
            "-t",
            "1",
            "-c",
            SERVE_CTX,
            "--temperature",
            "0",
            "-n",
            &n.to_string(),
            "-m",
        ])
        .arg(&model)
        .args(extra)
        .args(["--prompt", prompt])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

#[test]
fn binary_serves_the_openai_api_on_smollm2() {
    let s = serve(&[], &[]);
    assert!(
        s.model_id.starts_with("SmolLM2-135M-Instruct"),
        "{}",
        s.model_id
    );
    assert_eq!(get(s.addr, "/health", None).json(), json!({"status": "ok"}));
    let models = get(s.addr, "/v1/models", None).json();
    assert_eq!(models["data"][0]["id"], s.model_id.as_str());

    check_bad_inputs(s.addr, SERVE_BODY_LIMIT, None);

    // Greedy completions equal `llmhost run --prompt`.
    let prompt = "The capital of France is";
    let r = post(
        s.addr,
        COMPLETIONS,
        &json!({"model": s.model_id, "prompt": prompt, "max_tokens": 24, "temperature": 0}),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(text, run_greedy(&[], prompt, 24));
    let usage = &v["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() >= 5, "{usage}");
    assert_eq!(
        usage["total_tokens"],
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    // Greedy chat equals `llmhost run --chat`, streamed or not.
    let question = "What is 2 + 2?";
    let body = chat_body(question, json!({"max_tokens": 32, "temperature": 0}));
    let r = post(s.addr, CHAT, &body, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(answer, run_greedy(&["--chat"], question, 32));
    let body = chat_body(
        question,
        json!({"max_tokens": 32, "temperature": 0, "stream": true,
                                          "stream_options": {"include_usage": true}}),
    );
    let events = sse_data(&post(s.addr, CHAT, &body, None).body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let streamed: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(streamed, answer);

    // Log-probabilities: the chosen token is among the top ones, greedy picks the first.
    let body = chat_body(
        question,
        json!({"max_tokens": 3, "temperature": 0, "logprobs": true, "top_logprobs": 3}),
    );
    let v = post(s.addr, CHAT, &body, None).json();
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(content.len(), 3, "{v}");
    for t in &content {
        assert_eq!(t["top_logprobs"].as_array().unwrap().len(), 3);
        assert_eq!(t["token"], t["top_logprobs"][0]["token"]);
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
    }

    // A client that hangs up mid-stream is cancelled; the others go on. (Greedy counting
    // goes on for hundreds of tokens, so the request cannot end by itself first.)
    let before = metrics(s.addr, None)["llmhost_requests_cancelled_total"];
    hang_up_mid_stream(
        s.addr,
        COMPLETIONS,
        &json!({"prompt": "1, 2, 3, 4, 5,", "max_tokens": 400, "stream": true, "temperature": 0}),
    );
    let r = post(
        s.addr,
        COMPLETIONS,
        &json!({"prompt": prompt, "max_tokens": 24, "temperature": 0}),
        None,
    );
    assert_eq!(r.json()["choices"][0]["text"], text.as_str());
    wait_for("the cancellation to be counted", || {
        metrics(s.addr, None)["llmhost_requests_cancelled_total"] > before
    });

    let m = metrics(s.addr, None);
    assert!(m["llmhost_generated_tokens_total"] >= 24.0);
    assert!(m["llmhost_prompt_tokens_total"] >= 5.0);
    assert!(m["llmhost_kv_blocks_total"] > 0.0);
    assert!(m["llmhost_time_to_first_token_seconds_count"] >= 4.0);
}

#[test]
fn binary_api_key_from_the_environment() {
    let s = serve(&[], &[("LLMHOST_API_KEY", "k-123")]);
    assert_eq!(get(s.addr, "/health", None).status, 200);
    assert_error(&get(s.addr, "/v1/models", None), 401, "API key");
    assert_error(&get(s.addr, "/v1/models", Some("k-124")), 401, "incorrect");
    assert_eq!(get(s.addr, "/v1/models", Some("k-123")).status, 200);
    let body = json!({"prompt": "Hello", "max_tokens": 2});
    assert_error(&post(s.addr, COMPLETIONS, &body, None), 401, "API key");
    assert_eq!(post(s.addr, COMPLETIONS, &body, Some("k-123")).status, 200);
}

#[cfg(unix)]
#[test]
fn binary_sigterm_finishes_streams_in_flight_then_exits_0() {
    let mut s = serve(&[], &[]);
    let addr = s.addr;
    let stream = std::thread::spawn(move || {
        post(
            addr,
            COMPLETIONS,
            &json!({"prompt": "Once upon a time", "max_tokens": 64, "stream": true, "temperature": 0}),
            None,
        )
    });
    wait_for("the request to start", || {
        metrics(addr, None)["llmhost_http_requests_in_flight"] >= 1.0
    });
    let kill = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let r = stream.join().unwrap();
    let events = sse_data(&r.body);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "llmhost serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(200));
    let stderr = s.stderr.lock().unwrap().clone();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("1 request was drained"), "{stderr}");
}

#[test]
fn binary_port_in_use_is_one_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = llmhost()
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "-m",
            "/nonexistent.gguf",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: cannot listen on 127.0.0.1:") && stderr.contains("--port"),
        "{stderr}"
    );
}

#[test]
fn binary_bad_server_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("llmhost.toml");
    std::fs::write(&config, "[server]\nparallel = 0\n").unwrap();
    let out = llmhost()
        .arg("--config")
        .arg(&config)
        .args(["serve", "--port", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("server.parallel"), "{stderr}");
}

#[test]
fn binary_serve_help_lists_the_endpoints() {
    let out = llmhost().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/health",
        "/metrics",
        "--port",
        "--parallel",
        "--host",
        "LLMHOST_API_KEY",
    ] {
        assert!(help.contains(needle), "{needle} missing from\n{help}");
    }
}

#[test]
fn binary_32_clients_hanging_up_mid_stream_leave_no_kv_blocks_in_use() {
    // More clients than sequences: the later ones wait in the queue until earlier ones hang
    // up, so both running and just-admitted sequences are cancelled.
    let s = serve_parallel(8, &[], &[]);
    let before = metrics(s.addr, None)["llmhost_requests_cancelled_total"];
    let clients: Vec<_> = (0..32)
        .map(|i| {
            let addr = s.addr;
            std::thread::spawn(move || {
                let (path, body) = if i % 2 == 0 {
                    (
                        COMPLETIONS,
                        json!({"prompt": format!("Count from {i}:"), "max_tokens": 400,
                               "stream": true, "temperature": 0}),
                    )
                } else {
                    (
                        CHAT,
                        chat_body(
                            &format!("Tell a long story about the number {i}."),
                            json!({"max_tokens": 400, "stream": true}),
                        ),
                    )
                };
                hang_up_mid_stream(addr, path, &body);
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    wait_for("every hung-up sequence to give its blocks back", || {
        let m = metrics(s.addr, None);
        m["llmhost_kv_blocks_used"] == 0.0
            && m["llmhost_active_sequences"] == 0.0
            && m["llmhost_queue_depth"] == 0.0
            && m["llmhost_requests_cancelled_total"] - before == 32.0
    });
    let m = metrics(s.addr, None);
    assert_eq!(m["llmhost_kv_blocks_free"], m["llmhost_kv_blocks_total"]);
}
