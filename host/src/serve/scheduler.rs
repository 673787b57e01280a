//! The inference thread: continuous batching over the paged KV cache.
//!
//! Every step packs into one forward batch the next token of every sequence that is
//! generating, then chunks of the prompts still being read, up to `max_batch_tokens` in all
//! (chunked prefill: a long prompt never stalls the others for more than one step's worth of
//! tokens). New requests join between steps, without waiting for others to finish.
//!
//! An admitted request first takes the full KV blocks of its prompt that the cache already
//! holds (prefix reuse: a shared system prompt is computed once), then a reservation for the
//! blocks of its whole prompt and `max_tokens`, so that a running sequence never finds the
//! pool empty. Requests that do not fit wait, in arrival order. A request whose receiver is
//! dropped (the client went away) is cancelled at the next step and its blocks freed.

use super::protocol::{
    Candidate, Completion, Event, FinishReason, GenerationRequest, ModelDesc, StatsSnapshot,
    SubmitError, TokenEvent, TokenLogprobs, Usage, MAX_TOP_LOGPROBS,
};
use crate::engine::{Engine, EngineOptions, Step};
use crate::generate::StopFilter;
use crate::sampler::Sampler;
use crate::session::Session;
use crate::tokenizer::{Detokenizer, Tokenizer};
use anyhow::{bail, Context};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

/// How the scheduler packs work.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Sequences decoded together at most (`--parallel`).
    pub max_seqs: usize,
    /// Tokens per forward step at most: one per generating sequence, the rest prompt chunks.
    /// At least `max_seqs`.
    pub max_batch_tokens: usize,
    /// Tokens the KV block pool holds in all; `None`: `max_seqs` full contexts.
    pub kv_tokens: Option<usize>,
    /// Requests waiting for admission at most; more are refused with
    /// [`SubmitError::QueueFull`].
    pub max_queue: usize,
    /// The id clients use in `model`; `None`: the model file's name without `.gguf`.
    pub model_id: Option<String>,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            max_seqs: 4,
            max_batch_tokens: 512,
            kv_tokens: None,
            max_queue: 256,
            model_id: None,
        }
    }
}

enum Msg {
    Request(GenerationRequest),
    /// Finish what is queued and running, then exit.
    Drain,
}

/// What the handles and the inference thread share.
struct Shared {
    closing: AtomicBool,
    /// Submitted and not yet admitted or refused.
    queued: AtomicUsize,
    max_queue: usize,
    stats: Mutex<StatsSnapshot>,
}

/// The running inference thread.
pub struct Scheduler {
    handle: SchedulerHandle,
    thread: Option<JoinHandle<()>>,
}

/// A cheap, cloneable way to reach the inference thread.
#[derive(Clone)]
pub struct SchedulerHandle {
    model: Arc<ModelDesc>,
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

impl Scheduler {
    /// Loads the model on a new inference thread and returns once it is ready, or with the
    /// reason it could not be loaded. `engine` sizes the context and the KV block pool.
    pub fn start(
        session: Session,
        mut engine: EngineOptions,
        options: SchedulerOptions,
    ) -> anyhow::Result<Scheduler> {
        engine.kv_tokens = options.kv_tokens;
        engine.kv_sequences = options.max_seqs;
        if options.max_seqs == 0 {
            bail!("the number of parallel sequences must be at least 1");
        }
        if options.max_batch_tokens < options.max_seqs {
            bail!(
                "max_batch_tokens ({}) must be at least the number of parallel sequences ({}): every generating sequence needs one token of each step",
                options.max_batch_tokens,
                options.max_seqs
            );
        }
        let shared = Arc::new(Shared {
            closing: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            max_queue: options.max_queue,
            stats: Mutex::new(StatsSnapshot::default()),
        });
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("llmhost-inference".into())
            .spawn(move || inference_thread(session, engine, options, rx, ready_tx, thread_shared))
            .context("starting the inference thread")?;
        match ready_rx.recv() {
            Ok(Ok(model)) => Ok(Scheduler {
                handle: SchedulerHandle {
                    model: Arc::new(model),
                    tx,
                    shared,
                },
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                bail!("the inference thread stopped while loading the model")
            }
        }
    }

    pub fn handle(&self) -> SchedulerHandle {
        self.handle.clone()
    }

    /// Stops accepting requests, finishes the ones running and queued, and joins the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.handle.shared.closing.store(true, Ordering::SeqCst);
        let _ = self.handle.tx.send(Msg::Drain);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the inference thread panicked");
            }
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop();
    }
}

impl SchedulerHandle {
    pub fn model(&self) -> &ModelDesc {
        &self.model
    }

    /// Queues a request; its events arrive on its own channel.
    pub fn submit(&self, request: GenerationRequest) -> Result<(), SubmitError> {
        let shared = &self.shared;
        if shared.closing.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        if shared.queued.fetch_add(1, Ordering::SeqCst) >= shared.max_queue {
            shared.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull(shared.max_queue));
        }
        self.tx.send(Msg::Request(request)).map_err(|_| {
            shared.queued.fetch_sub(1, Ordering::SeqCst);
            SubmitError::ShuttingDown
        })
    }

    pub fn stats(&self) -> StatsSnapshot {
        let mut s = match self.shared.stats.lock() {
            Ok(s) => *s,
            Err(poisoned) => *poisoned.into_inner(),
        };
        s.queued = self.shared.queued.load(Ordering::SeqCst);
        s
    }
}

fn inference_thread(
    session: Session,
    engine_options: EngineOptions,
    options: SchedulerOptions,
    rx: mpsc::Receiver<Msg>,
    ready: mpsc::SyncSender<anyhow::Result<ModelDesc>>,
    shared: Arc<Shared>,
) {
    let mut engine = match session.engine(&engine_options) {
        Ok(engine) => engine,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let architecture = engine.info().architecture.to_string();
    let model = ModelDesc {
        id: options
            .model_id
            .clone()
            .unwrap_or_else(|| model_id_of(session.file.name())),
        template: Arc::new(session.chat_template(&architecture)),
        architecture,
        n_ctx: engine.n_ctx(),
        n_vocab: engine.n_vocab(),
        kernel: session.kernel.kernels.name().to_string(),
        threads: session.pool.n_threads(),
        tokenizer: session.tokenizer.clone(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    if ready.send(Ok(model)).is_err() {
        return;
    }
    let tokenizer = session.tokenizer.clone();
    let mut batcher = Batcher::new(&mut engine, &session, &tokenizer, options, shared);
    batcher.run(rx);
}

/// `path/to/Model-Q4_K_M.gguf` → `Model-Q4_K_M`.
fn model_id_of(file: &str) -> String {
    let name = std::path::Path::new(file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.to_string());
    name.strip_suffix(".gguf").unwrap_or(&name).to_string()
}

/// One admitted request.
struct Active<'t> {
    /// Its sequence id in the KV cache.
    seq: u32,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    /// The prompt, then every generated token.
    tokens: Vec<u32>,
    n_prompt: usize,
    /// `tokens[..computed]` are in the KV cache.
    computed: usize,
    /// Full blocks of `tokens` already offered to the prefix index.
    indexed_blocks: usize,
    /// Prompt tokens that came from the prefix cache.
    cached: usize,
    max_tokens: usize,
    generated: usize,
    sampler: Sampler,
    detok: Detokenizer<'t>,
    filter: StopFilter,
    top_logprobs: Option<usize>,
    ignore_eos: bool,
    /// Tokens this step feeds, and where its logits land (if any).
    fed: usize,
    logits_row: Option<usize>,
}

impl Active<'_> {
    fn prefilling(&self) -> bool {
        self.computed < self.n_prompt
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.n_prompt,
            cached_prompt_tokens: self.cached,
            completion_tokens: self.generated,
        }
    }
}

struct Batcher<'e, 'f, 't> {
    engine: &'e mut Engine<'f>,
    session: &'e Session,
    tokenizer: &'t Tokenizer,
    options: SchedulerOptions,
    shared: Arc<Shared>,
    waiting: VecDeque<GenerationRequest>,
    /// In admission order: earlier requests get their prompt chunks first.
    active: Vec<Active<'t>>,
    free_seqs: Vec<u32>,
    draining: bool,
    stats: StatsSnapshot,
    // Buffers of one step, kept to avoid reallocating.
    tokens: Vec<u32>,
    positions: Vec<i32>,
    seq_ids: Vec<u32>,
    want: Vec<bool>,
    logits: Vec<f32>,
}

impl<'e, 'f, 't> Batcher<'e, 'f, 't> {
    fn new(
        engine: &'e mut Engine<'f>,
        session: &'e Session,
        tokenizer: &'t Tokenizer,
        options: SchedulerOptions,
        shared: Arc<Shared>,
    ) -> Self {
        let free_seqs = (0..options.max_seqs as u32).rev().collect();
        Batcher {
            engine,
            session,
            tokenizer,
            options,
            shared,
            waiting: VecDeque::new(),
            active: Vec::new(),
            free_seqs,
            draining: false,
            stats: StatsSnapshot::default(),
            tokens: Vec::new(),
            positions: Vec::new(),
            seq_ids: Vec::new(),
            want: Vec::new(),
            logits: Vec::new(),
        }
    }

    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        self.publish_stats();
        loop {
            if self.active.is_empty() && self.waiting.is_empty() {
                // Nothing to do: sleep until a request (or the drain order) arrives.
                let msg = if self.draining {
                    match rx.try_recv() {
                        Ok(m) => m,
                        Err(_) => break,
                    }
                } else {
                    match rx.recv() {
                        Ok(m) => m,
                        Err(_) => break,
                    }
                };
                self.take(msg);
            }
            while let Ok(msg) = rx.try_recv() {
                self.take(msg);
            }
            self.drop_cancelled();
            self.admit();
            if !self.active.is_empty() {
                if let Err(e) = self.step() {
                    self.fail_active(&format!("{e:#}"));
                }
            }
            self.publish_stats();
        }
        self.publish_stats();
    }

    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Request(r) => self.waiting.push_back(r),
            Msg::Drain => {
                if !self.draining {
                    tracing::info!(
                        "draining: {} running, {} queued",
                        self.active.len(),
                        self.waiting.len()
                    );
                }
                self.draining = true;
            }
        }
    }

    fn dequeue(&mut self) -> Option<GenerationRequest> {
        let r = self.waiting.pop_front()?;
        self.shared.queued.fetch_sub(1, Ordering::SeqCst);
        Some(r)
    }

    /// Cancels the requests whose clients went away.
    fn drop_cancelled(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|r| !r.events.is_closed());
        let gone = before - self.waiting.len();
        self.shared.queued.fetch_sub(gone, Ordering::SeqCst);
        self.stats.requests_cancelled += gone as u64;
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].events.is_closed() {
                let a = self.active.remove(i);
                self.release(&a);
                self.stats.requests_cancelled += 1;
                tracing::debug!("sequence {} cancelled: the client went away", a.seq);
            } else {
                i += 1;
            }
        }
    }

    /// Why `r` can never run, if so.
    fn refuse(&self, r: &GenerationRequest) -> Option<String> {
        let n_ctx = self.engine.n_ctx();
        if r.prompt.is_empty() {
            return Some("the prompt is empty".into());
        }
        if r.prompt.len() >= n_ctx {
            return Some(format!(
                "the prompt has {} tokens, which leaves no room in the context of {n_ctx} tokens",
                r.prompt.len()
            ));
        }
        if let Some(&bad) = r
            .prompt
            .iter()
            .find(|&&t| t as usize >= self.engine.n_vocab())
        {
            return Some(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.engine.n_vocab()
            ));
        }
        if r.max_tokens == 0 {
            return Some("max_tokens must be at least 1".into());
        }
        if r.top_logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Some(format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}"));
        }
        None
    }

    /// Moves waiting requests into the batch while there is a free sequence and room in the
    /// KV pool for them, in arrival order.
    fn admit(&mut self) {
        while self.active.len() < self.options.max_seqs {
            let Some(r) = self.waiting.front() else { break };
            if let Some(why) = self.refuse(r) {
                let r = self.dequeue().expect("front exists");
                let _ = r.events.send(Event::Failed(why));
                self.stats.requests_failed += 1;
                continue;
            }
            let Some(seq) = self.free_seqs.pop() else {
                break;
            };
            let n_ctx = self.engine.n_ctx();
            let kv = self.engine.kv_cache();
            kv.clear_seq(seq);
            let cached = kv.reuse_prefix(seq, &r.prompt, r.prompt.len() - 1);
            let need = (r.prompt.len() + r.max_tokens).min(n_ctx);
            if !kv.try_reserve(seq, need) {
                kv.clear_seq(seq);
                self.free_seqs.push(seq);
                if self.active.is_empty() {
                    // Nothing running will free blocks: it can never fit.
                    let blocks = kv.blocks_for(need);
                    let total = kv.n_blocks();
                    let r = self.dequeue().expect("front exists");
                    let _ = r.events.send(Event::Failed(format!(
                        "the request needs {blocks} KV blocks ({need} tokens) but the pool has {total}: lower max_tokens or raise [server] kv_cache_tokens"
                    )));
                    self.stats.requests_failed += 1;
                    continue;
                }
                break;
            }
            let r = self.dequeue().expect("front exists");
            self.stats.prompt_tokens += r.prompt.len() as u64;
            self.stats.prompt_tokens_cached += cached as u64;
            tracing::debug!(
                "sequence {seq}: {} prompt tokens ({cached} from the prefix cache), up to {} new",
                r.prompt.len(),
                r.max_tokens
            );
            let block = self.engine.kv_cache().block_tokens();
            self.active.push(Active {
                seq,
                n_prompt: r.prompt.len(),
                computed: cached,
                indexed_blocks: cached / block,
                cached,
                max_tokens: r.max_tokens,
                generated: 0,
                sampler: Sampler::new(r.sampler),
                detok: self.tokenizer.detokenizer(),
                filter: StopFilter::new(r.stop),
                top_logprobs: r.top_logprobs,
                ignore_eos: r.ignore_eos,
                tokens: r.prompt,
                events: r.events,
                fed: 0,
                logits_row: None,
            });
        }
    }

    /// One forward step over every active sequence, then sampling.
    fn step(&mut self) -> anyhow::Result<()> {
        self.tokens.clear();
        self.positions.clear();
        self.seq_ids.clear();
        self.want.clear();
        let mut budget = self.options.max_batch_tokens;
        let mut n_logits = 0;
        // Generating sequences first: one token each, every step.
        for a in self.active.iter_mut() {
            a.fed = 0;
            a.logits_row = None;
            if !a.prefilling() {
                let pos = a.computed;
                self.tokens.push(a.tokens[pos]);
                self.positions.push(pos as i32);
                self.seq_ids.push(a.seq);
                self.want.push(true);
                a.fed = 1;
                a.logits_row = Some(n_logits);
                n_logits += 1;
                budget -= 1;
            }
        }
        // Then prompt chunks, oldest request first.
        for a in self.active.iter_mut().filter(|a| a.prefilling()) {
            let n = (a.n_prompt - a.computed).min(budget);
            if n == 0 {
                break;
            }
            for pos in a.computed..a.computed + n {
                self.tokens.push(a.tokens[pos]);
                self.positions.push(pos as i32);
                self.seq_ids.push(a.seq);
                self.want.push(false);
            }
            a.fed = n;
            if a.computed + n == a.n_prompt {
                *self.want.last_mut().expect("n > 0") = true;
                a.logits_row = Some(n_logits);
                n_logits += 1;
            }
            budget -= n;
        }
        let n_vocab = self.engine.n_vocab();
        self.logits.resize(n_logits * n_vocab, 0.0);
        self.engine.forward(
            &self.session.pool,
            &Step {
                tokens: &self.tokens,
                positions: &self.positions,
                seq_ids: &self.seq_ids,
                want_logits: &self.want,
            },
            &mut self.logits,
        )?;
        self.stats.steps += 1;

        let block = self.engine.kv_cache().block_tokens();
        let mut i = 0;
        while i < self.active.len() {
            let a = &mut self.active[i];
            a.computed += a.fed;
            if a.computed / block > a.indexed_blocks {
                a.indexed_blocks = a.computed / block;
                let (seq, computed) = (a.seq, a.computed);
                let tokens = &self.active[i].tokens[..computed];
                self.engine.kv_cache().index_prefix(seq, tokens);
            }
            let finished = match self.active[i].logits_row {
                Some(row) => self.sample(i, row),
                None => None,
            };
            match finished {
                Some((reason, from_stop_string)) => self.finish(i, reason, from_stop_string),
                None => i += 1,
            }
        }
        Ok(())
    }

    /// Samples sequence `i`'s next token from logits row `row` and streams it. Returns why
    /// the sequence ended, if it did (and whether a stop string ended it).
    fn sample(&mut self, i: usize, row: usize) -> Option<(FinishReason, bool)> {
        let n_vocab = self.engine.n_vocab();
        let n_ctx = self.engine.n_ctx();
        let logits = &self.logits[row * n_vocab..][..n_vocab];
        let tokenizer = self.tokenizer;
        let a = &mut self.active[i];
        let token = a.sampler.sample(logits, &a.tokens);
        a.sampler.accept(token);
        if tokenizer.is_end_of_generation(token) && !a.ignore_eos {
            return Some((FinishReason::Stop, false));
        }
        let logprobs = a
            .top_logprobs
            .map(|n| token_logprobs(logits, token, n, tokenizer));
        a.tokens.push(token);
        a.generated += 1;
        self.stats.generated_tokens += 1;
        let (text, hit) = a.filter.push(&a.detok.push(token));
        // A send error means the client left; the next step cancels the sequence.
        let _ = a.events.send(Event::Token(TokenEvent {
            id: token,
            text,
            logprobs,
        }));
        if hit.is_some() {
            Some((FinishReason::Stop, true))
        } else if a.generated >= a.max_tokens || a.tokens.len() >= n_ctx {
            // The next token would need a position past the context.
            Some((FinishReason::Length, false))
        } else {
            None
        }
    }

    /// Ends sequence `i`: flushes its text, frees its blocks, sends `Done`.
    fn finish(&mut self, i: usize, mut reason: FinishReason, from_stop_string: bool) {
        let mut a = self.active.remove(i);
        let mut tail = String::new();
        if !from_stop_string {
            let (out, hit) = a.filter.push(&a.detok.finish());
            tail.push_str(&out);
            if hit.is_some() {
                reason = FinishReason::Stop;
            } else {
                tail.push_str(&a.filter.finish());
            }
        }
        self.release(&a);
        self.stats.requests_finished += 1;
        let _ = a.events.send(Event::Done(Completion {
            finish: reason,
            tail,
            usage: a.usage(),
        }));
    }

    /// Gives a sequence's KV blocks and id back.
    fn release(&mut self, a: &Active<'_>) {
        self.engine.kv_cache().clear_seq(a.seq);
        self.free_seqs.push(a.seq);
    }

    /// A failed step: every active request fails with the same reason.
    fn fail_active(&mut self, why: &str) {
        tracing::error!("forward step failed: {why}");
        for a in std::mem::take(&mut self.active) {
            self.release(&a);
            self.stats.requests_failed += 1;
            let _ = a.events.send(Event::Failed(why.to_string()));
        }
    }

    fn publish_stats(&mut self) {
        let kv = self.engine.kv_cache();
        let s = &mut self.stats;
        s.active = self.active.len();
        s.kv_blocks_total = kv.n_blocks();
        s.kv_blocks_used = kv.blocks_used();
        s.kv_blocks_cached = kv.blocks_cached();
        s.kv_blocks_free = kv.blocks_free();
        s.kv_block_tokens = kv.block_tokens();
        if let Ok(mut shared) = self.shared.stats.lock() {
            *shared = *s;
        }
    }
}

/// The chosen token's log-probability and the `n` most likely tokens, under the model's
/// distribution (log-softmax of the raw logits).
fn token_logprobs(logits: &[f32], chosen: u32, n: usize, tokenizer: &Tokenizer) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| f64::from(x - max).exp()).sum();
    let log_z = max + sum.ln() as f32;
    let candidate = |id: u32| {
        let bytes = tokenizer.token_to_piece(id, true);
        Candidate {
            id,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
            logprob: logits[id as usize] - log_z,
        }
    };
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let n = n.min(ids.len());
    let by_logit_desc = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    if n > 0 && n < ids.len() {
        ids.select_nth_unstable_by(n - 1, by_logit_desc);
    }
    ids.truncate(n);
    ids.sort_by(by_logit_desc);
    TokenLogprobs {
        chosen: candidate(chosen),
        top: ids.into_iter().map(candidate).collect(),
    }
}
