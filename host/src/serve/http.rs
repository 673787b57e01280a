//! The HTTP side of `llmhost serve`: routes, authentication, request bodies in, JSON and
//! server-sent events out.
//!
//! A generation request is parsed and checked ([`super::openai`]), its prompt rendered and
//! tokenized on a blocking thread, and submitted to the inference thread through a
//! [`Backend`]. Its events come back on a channel whose receiver lives in the handler (plain
//! JSON) or in the response body (streaming): when the client goes away, hyper drops that
//! future or body, the receiver goes with it, and the scheduler cancels the request.
//!
//! Every error, including axum's own (unknown route, wrong method, a body too large), leaves
//! as an OpenAI error object.

use super::auth::ApiKey;
use super::metrics::{Metrics, RequestTimer};
use super::openai::{self, ApiError, Endpoint, Input, ResponseMeta};
use super::protocol::{
    Event, GenerationRequest, ModelDesc, StatsSnapshot, SubmitError, TokenLogprobs,
};
use super::scheduler::SchedulerHandle;
use crate::config::GenerationConfig;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// What the HTTP side needs from the inference thread. [`SchedulerHandle`] is the real one;
/// tests put a scripted one in its place.
pub trait Backend: Send + Sync + 'static {
    fn model(&self) -> &ModelDesc;
    fn submit(&self, request: GenerationRequest) -> Result<(), SubmitError>;
    fn stats(&self) -> StatsSnapshot;
}

impl Backend for SchedulerHandle {
    fn model(&self) -> &ModelDesc {
        SchedulerHandle::model(self)
    }

    fn submit(&self, request: GenerationRequest) -> Result<(), SubmitError> {
        SchedulerHandle::submit(self, request)
    }

    fn stats(&self) -> StatsSnapshot {
        SchedulerHandle::stats(self)
    }
}

/// How the HTTP side behaves (from `[server]` and `[generation]`).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `Some`: every route but `/health` needs `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    /// Generation requests answered at once (running plus queued); more get 429.
    pub max_in_flight: usize,
    /// Sampling defaults for fields a request leaves out.
    pub generation: GenerationConfig,
}

/// The routes every answer names (metrics label them with these, never with raw paths).
const ROUTES: [(&str, &str); 6] = [
    ("/v1/chat/completions", "POST"),
    ("/v1/completions", "POST"),
    ("/v1/models", "GET"),
    ("/v1/models/{id}", "GET"),
    ("/health", "GET"),
    ("/metrics", "GET"),
];

struct AppState {
    backend: Arc<dyn Backend>,
    options: ServerOptions,
    api_key: Option<ApiKey>,
    metrics: Arc<Metrics>,
    in_flight: Arc<AtomicUsize>,
}

/// The server's state and routes.
#[derive(Clone)]
pub struct App {
    state: Arc<AppState>,
}

impl App {
    pub fn new(backend: Arc<dyn Backend>, options: ServerOptions) -> App {
        let api_key = options.api_key.as_deref().map(ApiKey::new);
        App {
            state: Arc::new(AppState {
                backend,
                options,
                api_key,
                metrics: Arc::new(Metrics::default()),
                in_flight: Arc::new(AtomicUsize::new(0)),
            }),
        }
    }

    /// Generation requests being answered now (running or queued).
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    pub fn router(&self) -> Router {
        let state = self.state.clone();
        let protected = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/completions", post(completions))
            .route("/v1/models", get(list_models))
            .route("/v1/models/{id}", get(get_model))
            .route("/metrics", get(metrics))
            .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
        Router::new()
            .route("/health", get(health))
            .merge(protected)
            .fallback(unknown_route)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(state.options.max_body_bytes))
            .layer(middleware::from_fn_with_state(
                state.clone(),
                count_and_shape,
            ))
            .with_state(state)
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the requests in flight
/// finish (streams included) before returning.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Stream chunks are small: send each at once rather than waiting to fill a packet.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = json_response(status, &self.body());
        let headers = response.headers_mut();
        match self.status {
            401 => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            429 | 503 => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    // A `Value` always serializes (its map keys are strings).
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = (status, bytes).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

// ---- middleware ----

/// Every route but `/health` needs the key when one is set.
async fn require_key(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &app.api_key {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if let Err(e) = key.check(presented) {
            return e.into_response();
        }
    }
    next.run(request).await
}

/// Counts every answer by route and status, and turns any error that is not already an
/// OpenAI error object (axum's own rejections) into one.
async fn count_and_shape(
    State(app): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| ROUTES.iter().find(|(route, _)| *route == p.as_str()))
        .map_or("other", |(route, _)| *route);
    let response = next.run(request).await;
    let response = ensure_error_shape(response).await;
    app.metrics
        .count_request(endpoint, response.status().as_u16());
    response
}

async fn ensure_error_shape(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let detail = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let error = ApiError::from_status(status.as_u16(), &detail);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = serde_json::to_vec(&error.body()).unwrap_or_default();
    Response::from_parts(parts, Body::from(body))
}

// ---- small routes ----

async fn health() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

async fn list_models(State(app): State<Arc<AppState>>) -> Response {
    json_response(StatusCode::OK, &openai::model_list(app.backend.model()))
}

async fn get_model(
    State(app): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let model = app.backend.model();
    let id = match id {
        Ok(Path(id)) => id,
        Err(r) => {
            return ApiError::from_status(r.status().as_u16(), &r.body_text()).into_response()
        }
    };
    match openai::check_model(Some(&id), &model.id) {
        Ok(()) => json_response(StatusCode::OK, &openai::model_object(model)),
        Err(e) => e.into_response(),
    }
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let text = app
        .metrics
        .render(&app.backend.stats(), app.in_flight.load(Ordering::SeqCst));
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn routes_summary() -> String {
    ROUTES
        .iter()
        .map(|(route, method)| format!("{method} {route}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn unknown_route(method: Method, uri: Uri) -> Response {
    ApiError::not_found(
        "unknown_url",
        format!(
            "unknown URL: {method} {}; this server answers {}",
            uri.path(),
            routes_summary()
        ),
    )
    .into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    let allowed = ROUTES
        .iter()
        .find(|(route, _)| route_matches(route, path))
        .map_or("GET", |(_, m)| *m);
    let mut response = ApiError::method_not_allowed(method.as_str(), path, allowed).into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allowed));
    response
}

/// Whether `path` matches `route`, where a `{...}` segment matches any one segment.
fn route_matches(route: &str, path: &str) -> bool {
    let (r, p): (Vec<_>, Vec<_>) = (route.split('/').collect(), path.split('/').collect());
    r.len() == p.len()
        && r.iter()
            .zip(&p)
            .all(|(r, p)| r == p || (r.starts_with('{') && !p.is_empty()))
}

// ---- generation ----

async fn chat_completions(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(app, Endpoint::Chat, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn completions(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(app, Endpoint::Completions, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::unsupported_media_type(None));
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let mime = text.split(';').next().unwrap_or_default().trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(Some(&text)))
    }
}

fn body_error(rejection: BytesRejection, limit: usize) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(limit),
        status => ApiError::from_status(
            status.as_u16(),
            &format!("cannot read the request body: {}", rejection.body_text()),
        ),
    }
}

async fn generate(
    app: Arc<AppState>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    check_json_content_type(headers)?;
    let body = body.map_err(|r| body_error(r, app.options.max_body_bytes))?;
    let mut params = openai::parse_request(endpoint, &body)?;
    let model = app.backend.model();
    openai::check_model(params.model.as_deref(), &model.id)?;
    let sampler = params.sampler(&app.options.generation, random_u64)?;
    let ticket = admit(&app)?;

    let input = std::mem::replace(&mut params.input, Input::Tokens(Vec::new()));
    let (tokenizer, template) = (model.tokenizer.clone(), model.template.clone());
    let prompt =
        tokio::task::spawn_blocking(move || openai::prompt_tokens(&input, &tokenizer, &template))
            .await
            .map_err(|e| ApiError::internal(format!("preparing the prompt failed: {e}")))??;
    let max_tokens = params.max_tokens(prompt.len(), model.n_ctx)?;

    let (events, rx) = unbounded_channel();
    app.backend.submit(GenerationRequest {
        prompt,
        max_tokens,
        sampler,
        stop: params.stop_strings(&app.options.generation),
        top_logprobs: params.top_logprobs,
        ignore_eos: params.ignore_eos,
        events,
    })?;
    let answer = Answer {
        rx,
        meta: ResponseMeta {
            endpoint,
            id: new_id(endpoint),
            created: unix_now(),
            model: model.id.clone(),
        },
        timer: RequestTimer::start(app.metrics.clone(), arrival),
        logprobs: params.top_logprobs.is_some(),
        include_usage: params.include_usage,
        _ticket: ticket,
    };
    if params.stream {
        Ok(answer.into_sse())
    } else {
        answer.collect().await
    }
}

/// A place among the generation requests answered at once; given back when dropped.
struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn admit(app: &AppState) -> Result<Ticket, ApiError> {
    let before = app.in_flight.fetch_add(1, Ordering::SeqCst);
    let ticket = Ticket(app.in_flight.clone());
    if before >= app.options.max_in_flight {
        return Err(ApiError::overloaded(app.options.max_in_flight));
    }
    Ok(ticket)
}

/// One submitted request: its event channel and what its answer needs.
struct Answer {
    rx: UnboundedReceiver<Event>,
    meta: ResponseMeta,
    timer: RequestTimer,
    logprobs: bool,
    include_usage: bool,
    _ticket: Ticket,
}

fn ended_early() -> ApiError {
    ApiError::internal("the inference thread dropped the request without finishing it")
}

impl Answer {
    /// Waits for the whole completion and answers it as one JSON object.
    async fn collect(mut self) -> Result<Response, ApiError> {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        loop {
            match self.rx.recv().await {
                Some(Event::Token(t)) => {
                    self.timer.token();
                    text.push_str(&t.text);
                    logprobs.extend(t.logprobs);
                }
                Some(Event::Done(done)) => {
                    text.push_str(&done.tail);
                    let logprobs = self.logprobs.then_some(logprobs.as_slice());
                    let body = self.meta.response(&text, &done, logprobs);
                    return Ok(json_response(StatusCode::OK, &body));
                }
                Some(Event::Failed(why)) => {
                    return Err(ApiError::internal(format!("generation failed: {why}")))
                }
                None => return Err(ended_early()),
            }
        }
    }

    /// Answers as server-sent events; the body owns the channel.
    fn into_sse(self) -> Response {
        let stream = SseStream {
            answer: self,
            phase: Phase::Start,
            pending_logprobs: Vec::new(),
            text_offset: 0,
        };
        let chunks = futures_util::stream::unfold(stream, |mut s| async move {
            let chunk = s.next_chunk().await?;
            Some((Ok::<Bytes, Infallible>(chunk), s))
        });
        let mut response = Response::new(Body::from_stream(chunks));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // Proxies such as nginx would otherwise hold chunks back.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        response
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Tokens,
    Ended,
}

/// The state of one streamed answer.
struct SseStream {
    answer: Answer,
    phase: Phase,
    /// Log-probabilities of tokens whose text has not been sent yet (held back or partial
    /// UTF-8); they go with the next text.
    pending_logprobs: Vec<TokenLogprobs>,
    /// Characters of token text sent so far (completions' `text_offset`).
    text_offset: usize,
}

fn sse_data(value: &Value) -> Vec<u8> {
    let mut out = b"data: ".to_vec();
    out.extend(serde_json::to_vec(value).unwrap_or_default());
    out.extend(b"\n\n");
    out
}

impl SseStream {
    /// The next bytes to send; `None` when the stream is over.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        let include_usage = self.answer.include_usage;
        match self.phase {
            Phase::Ended => return None,
            Phase::Start => {
                self.phase = Phase::Tokens;
                if self.answer.meta.endpoint == Endpoint::Chat {
                    return Some(sse_data(&self.answer.meta.role_chunk(include_usage)).into());
                }
            }
            Phase::Tokens => {}
        }
        loop {
            match self.answer.rx.recv().await {
                Some(Event::Token(t)) => {
                    self.answer.timer.token();
                    if let (true, Some(lp)) = (self.answer.logprobs, t.logprobs) {
                        self.pending_logprobs.push(lp);
                    }
                    if !t.text.is_empty() {
                        return Some(self.text_chunk(&t.text).into());
                    }
                }
                Some(Event::Done(done)) => {
                    self.phase = Phase::Ended;
                    let mut out = if !done.tail.is_empty() || !self.pending_logprobs.is_empty() {
                        self.text_chunk(&done.tail)
                    } else {
                        Vec::new()
                    };
                    let meta = &self.answer.meta;
                    out.extend(sse_data(&meta.finish_chunk(done.finish, include_usage)));
                    if include_usage {
                        out.extend(sse_data(&meta.usage_chunk(&done.usage)));
                    }
                    out.extend(b"data: [DONE]\n\n");
                    return Some(out.into());
                }
                Some(Event::Failed(why)) => {
                    self.phase = Phase::Ended;
                    let error = ApiError::internal(format!("generation failed: {why}"));
                    return Some(sse_data(&error.body()).into());
                }
                None => {
                    self.phase = Phase::Ended;
                    return Some(sse_data(&ended_early().body()).into());
                }
            }
        }
    }

    fn text_chunk(&mut self, text: &str) -> Vec<u8> {
        let logprobs = self
            .answer
            .logprobs
            .then(|| std::mem::take(&mut self.pending_logprobs));
        let chunk = self.answer.meta.text_chunk(
            text,
            logprobs.as_deref(),
            self.text_offset,
            self.answer.include_usage,
        );
        if let Some(l) = &logprobs {
            self.text_offset += openai::logprobs_text_chars(l);
        }
        sse_data(&chunk)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random number: std's hasher keys are drawn from the OS once per thread and stepped on
/// every `RandomState`, and the clock adds more.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.finish()
}

fn new_id(endpoint: Endpoint) -> String {
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completions => "cmpl",
    };
    format!("{prefix}-{:016x}{:08x}", random_u64(), random_u64() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_patterns() {
        assert!(route_matches("/v1/models/{id}", "/v1/models/smol"));
        assert!(!route_matches("/v1/models/{id}", "/v1/models/"));
        assert!(!route_matches("/v1/models", "/v1/models/x"));
        assert!(route_matches("/health", "/health"));
    }

    #[test]
    fn ids_are_prefixed_and_distinct() {
        let a = new_id(Endpoint::Chat);
        let b = new_id(Endpoint::Chat);
        assert!(a.starts_with("chatcmpl-") && a.len() == 9 + 24, "{a}");
        assert_ne!(a, b);
        assert!(new_id(Endpoint::Completions).starts_with("cmpl-"));
        assert_ne!(random_u64(), random_u64());
    }

    #[test]
    fn content_type_must_be_json() {
        let mut h = HeaderMap::new();
        assert_eq!(check_json_content_type(&h).unwrap_err().status, 415);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let e = check_json_content_type(&h).unwrap_err();
        assert!(e.message.contains("text/plain"), "{e:?}");
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(check_json_content_type(&h).is_ok());
    }
}
