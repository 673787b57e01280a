//! `llmhost bench`: prompt-processing and generation speed measured the way llama-bench
//! measures it (tools/llama-bench/llama-bench.cpp of llama.cpp b11312), so the two tools'
//! numbers compare on the same machine, model file and thread count; and `--memory-bandwidth`,
//! the machine's sustained read bandwidth, the ceiling of decode speed.
//!
//! Semantics copied from llama-bench:
//! - a `ppN` test evaluates N random tokens (BOS first when the model adds one) as one prompt,
//!   in forward steps of up to `--ubatch-size` tokens (512, llama-bench's n_ubatch and
//!   `llmhost run`'s prefill step), only the last token's logits computed; t/s = N / time;
//! - a `tgN` test runs N single-token decode steps (BOS first, then random tokens), logits of
//!   every step computed; t/s = N / time;
//! - each repetition starts from an empty cache, or from `-d` tokens already in it (prefilled
//!   and not timed; later repetitions reuse them, as llama-bench restores its saved state);
//! - one untimed warm-up first (the whole prompt for pp, one decode step for tg);
//! - t/s is the mean over repetitions of each one's t/s, ± their sample standard deviation;
//! - one context of n_prompt + n_gen + n_depth tokens (here: the largest any test needs).
//!
//! Tests run in llama-bench's order: per model, per thread count, per depth, the pp tests then
//! the tg tests.

pub mod membw;
pub mod model_desc;
pub mod output;

use crate::engine::{Engine, EngineOptions, RepackStats, Step};
use crate::generate::{prefill, DEFAULT_BATCH};
use crate::pool::ThreadPool;
use crate::session::{model_path, Session};
use crate::settings::Settings;
use anyhow::{bail, Context};
use model_desc::ModelDesc;
use output::{mean_stddev, BandwidthRecord, OutputFormat, Printer, TestRecord};
use plugin_api::GgmlType;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Examples:
  llmhost bench -m model.gguf                      # pp512 and tg128, 5 repetitions
  llmhost bench -m a.gguf,b.gguf -t 1,2 -p 64 -n 16 -r 3 -o json
  llmhost bench -m model.gguf -p 0 -n 128 -d 0,512 # decode with 512 tokens already cached
  llmhost bench --memory-bandwidth -t 1,2          # sustained memory read bandwidth

Progress goes to stderr, results to stdout. The JSON fields are llama-bench's (model_type,
model_size, model_n_params, n_threads, n_prompt, n_gen, n_depth, avg_ts, stddev_ts,
samples_ts, ...) plus llmhost's: model_ready_s, repack_s, repacked_tensors, repacked_bytes,
peak_rss_bytes, weight_bytes_per_token and weight_read_gbps (generation tests).")]
pub struct BenchArgs {
    /// GGUF model file(s) to test: repeat the flag or separate with commas
    /// [default: [model] path of the config].
    #[arg(short = 'm', long, value_name = "FILE", value_delimiter = ',')]
    pub model: Vec<PathBuf>,

    /// Thread counts to test, comma-separated, e.g. 1,2 [default: --threads of llmhost, else
    /// [threads] count, else one per physical core].
    // The id is the global --threads' own, so clap keeps this list in place of it for `bench`
    // (and hands its first value to the global setting, which bench does not use).
    #[arg(id = "threads", short = 't', long = "threads", value_name = "N,...",
          value_delimiter = ',',
          value_parser = clap::value_parser!(u32).range(1..=crate::config::MAX_THREADS as i64))]
    pub threads: Vec<u32>,

    /// Prompt lengths to test (one pp test each), comma-separated; 0 = no prompt test.
    #[arg(short = 'p', long = "n-prompt", value_name = "N,...", value_delimiter = ',',
          default_value = "512", value_parser = parse_count)]
    pub n_prompt: Vec<usize>,

    /// Numbers of tokens to generate (one tg test each), comma-separated; 0 = no generation
    /// test.
    #[arg(short = 'n', long = "n-gen", value_name = "N,...", value_delimiter = ',',
          default_value = "128", value_parser = parse_count)]
    pub n_gen: Vec<usize>,

    /// Tokens already in the KV cache when each test starts (prefilled, not timed),
    /// comma-separated; each test runs at each depth.
    #[arg(short = 'd', long = "n-depth", value_name = "N,...", value_delimiter = ',',
          default_value = "0", value_parser = parse_count)]
    pub n_depth: Vec<usize>,

    /// Timed runs of each test; the table shows their mean ± standard deviation.
    #[arg(short = 'r', long = "repetitions", value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub repetitions: u32,

    /// Output format on stdout: md (llama-bench's table), json (an array), jsonl (a line per
    /// test).
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FORMAT",
        value_enum,
        default_value = "md"
    )]
    pub output: OutputFormat,

    /// Most tokens per forward step of a prompt (llama-bench's -ub, whose default is also
    /// 512).
    #[arg(long = "ubatch-size", value_name = "N", default_value_t = DEFAULT_BATCH,
          value_parser = parse_positive)]
    pub ubatch: usize,

    /// Skip the untimed warm-up run before each test.
    #[arg(long)]
    pub no_warmup: bool,

    #[arg(long = "no-repack", help = super::args::NO_REPACK_HELP)]
    pub no_repack: bool,

    /// Instead of a model: measure this machine's sustained memory read bandwidth
    /// (STREAM-style: each thread sums its part of a buffer much larger than the caches; best
    /// of -r runs) with 1 thread and with every thread count of -t [default: 1 and one per
    /// physical core].
    #[arg(long)]
    pub memory_bandwidth: bool,

    /// Buffer size of --memory-bandwidth in MiB; keep it well above the last-level cache.
    #[arg(long = "bw-size-mib", value_name = "MIB", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub bw_size_mib: u64,
}

/// A token count: a non-negative integer.
fn parse_count(s: &str) -> Result<usize, String> {
    s.trim().parse::<usize>().map_err(|_| {
        format!("expected a non-negative whole number (lists are comma-separated, e.g. 64,512), got {s:?}")
    })
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match parse_count(s)? {
        0 => Err("must be at least 1".to_string()),
        n => Ok(n),
    }
}

/// One test: what llama-bench calls an instance, for one thread count.
#[derive(Debug, Clone, Copy)]
struct TestSpec {
    n_prompt: usize,
    n_gen: usize,
    n_depth: usize,
}

impl TestSpec {
    fn name(&self) -> String {
        let mut s = if self.n_gen == 0 {
            format!("pp{}", self.n_prompt)
        } else {
            format!("tg{}", self.n_gen)
        };
        if self.n_depth > 0 {
            s.push_str(&format!(" @ d{}", self.n_depth));
        }
        s
    }
}

/// The tests of one thread count, in llama-bench's order: per depth, pp then tg.
fn plan(args: &BenchArgs) -> Vec<TestSpec> {
    let mut tests = Vec::new();
    for &n_depth in &args.n_depth {
        for &n_prompt in args.n_prompt.iter().filter(|&&n| n > 0) {
            tests.push(TestSpec {
                n_prompt,
                n_gen: 0,
                n_depth,
            });
        }
        for &n_gen in args.n_gen.iter().filter(|&&n| n > 0) {
            tests.push(TestSpec {
                n_prompt: 0,
                n_gen,
                n_depth,
            });
        }
    }
    tests
}

/// Peak resident set size (VmHWM) of this process, in bytes; `None` where /proc is missing.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn thread_pool(
    settings: &Settings,
    session_topology: &crate::cpu::Topology,
    n: usize,
) -> anyhow::Result<ThreadPool> {
    let pin = settings.pin_threads.then(|| session_topology.pin_plan(n));
    ThreadPool::new(n, pin).with_context(|| format!("starting a pool of {n} threads"))
}

/// Where a message comes from on stderr.
const TAG: &str = "llmhost bench";

pub fn run(args: &BenchArgs, settings: &Settings) -> anyhow::Result<()> {
    if args.memory_bandwidth {
        return run_bandwidth(args, settings);
    }
    let tests = plan(args);
    if tests.is_empty() {
        bail!("nothing to run: every -p/--n-prompt and -n/--n-gen value is 0; give at least one length above 0");
    }
    // Check every model path before spending minutes on the first one.
    let models: Vec<PathBuf> = if args.model.is_empty() {
        vec![model_path(None, settings)?]
    } else {
        args.model
            .iter()
            .map(|m| model_path(Some(m), settings))
            .collect::<anyhow::Result<_>>()?
    };
    let thread_counts: Vec<usize> = if args.threads.is_empty() {
        vec![settings.threads]
    } else {
        args.threads.iter().map(|&t| t as usize).collect()
    };
    let n_ctx = tests
        .iter()
        .map(|t| t.n_prompt + t.n_gen + t.n_depth)
        .max()
        .unwrap_or(1)
        .max(1);
    let kv_type = if settings.config.model.kv_type == "f32" {
        GgmlType::F32
    } else {
        GgmlType::F16
    };

    let mut printer = Printer::new(args.output);
    let n_total = models.len() * thread_counts.len() * tests.len();
    let mut index = 0;
    for path in &models {
        // The session's own pool is not used (each thread count gets its own below), so it
        // is made without worker threads.
        let mut one_thread = settings.clone();
        one_thread.threads = 1;
        let session = Session::open(path, &one_thread)?;
        let t_engine = Instant::now();
        let mut engine = session
            .engine(&EngineOptions {
                n_ctx: Some(n_ctx),
                kv_type,
                repack: super::args::repack(args.no_repack, settings),
                ..EngineOptions::default()
            })
            .with_context(|| format!("loading {}", path.display()))?;
        let engine_load = t_engine.elapsed();
        let ready = ModelReady {
            session_open: session.load_time,
            engine_load,
        };
        let desc = ModelDesc::of(&session.file);
        let repacked = repack_summary(engine.repack_stats());
        eprintln!(
            "{TAG}: {} ({}) ready in {:.3} s (session {:.3} s: plugins, mmap, page warm-up, tokenizer; engine {:.3} s: architecture plugin, {repacked}, KV cache); kernels {}; peak RSS {}",
            path.display(),
            desc.model_type,
            ready.total().as_secs_f64(),
            ready.session_open.as_secs_f64(),
            ready.engine_load.as_secs_f64(),
            session.kernel.kernels.name(),
            peak_rss_bytes().map_or("unknown".into(), output::size_str)
        );
        printer.note(format!(
            "{}: model ready in {:.3} s (session {:.3} s + engine {:.3} s, {repacked}); weights read per generated token: {}; peak RSS {}",
            file_name(path),
            ready.total().as_secs_f64(),
            ready.session_open.as_secs_f64(),
            ready.engine_load.as_secs_f64(),
            output::size_str(desc.bytes_per_token),
            peak_rss_bytes().map_or("unknown".into(), output::size_str)
        ));
        let mut rng = Rng::new(0x5EED_BE4C);
        for &n_threads in &thread_counts {
            let pool = thread_pool(settings, &session.topology, n_threads)?;
            for test in &tests {
                index += 1;
                let label = format!(
                    "{TAG}: benchmark {index}/{n_total}: {} t={n_threads}",
                    test.name()
                );
                let samples = run_test(&mut engine, &pool, &session, test, args, &mut rng, &label)?;
                let record = record(
                    path, &session, &engine, &desc, &ready, settings, args, test, n_threads,
                    samples,
                );
                eprintln!(
                    "{label}: {:.2} ± {:.2} t/s{}",
                    record.avg_ts,
                    record.stddev_ts,
                    record.weight_read_gbps.map_or(String::new(), |g| format!(
                        ", weights streamed at {g:.2} GB/s"
                    ))
                );
                if let Some(g) = record.weight_read_gbps {
                    printer.note(format!(
                        "{} {} t={n_threads}: {} per token × {:.2} t/s = {g:.2} GB/s of weights",
                        file_name(path),
                        record.test_name(),
                        output::size_str(desc.bytes_per_token),
                        record.avg_ts
                    ));
                }
                printer.test(&record)?;
            }
        }
    }
    printer.note(format!(
        "llmhost {}; peak RSS {}",
        env!("CARGO_PKG_VERSION"),
        peak_rss_bytes().map_or("unknown".into(), output::size_str)
    ));
    printer.finish()
}

/// What the engine's load spent on repacking weights, for the ready line.
fn repack_summary(stats: &RepackStats) -> String {
    match (stats.enabled, stats.repacked) {
        (false, _) => "weights not repacked (--no-repack)".to_string(),
        (true, 0) => "no weight repacked by the kernel plugin".to_string(),
        (true, n) => format!(
            "repacked {n} of {} tensors in {:.3} s ({})",
            stats.total_tensors,
            stats.seconds,
            output::size_str(stats.bytes)
        ),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

struct ModelReady {
    session_open: Duration,
    engine_load: Duration,
}

impl ModelReady {
    fn total(&self) -> Duration {
        self.session_open + self.engine_load
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    path: &Path,
    session: &Session,
    engine: &Engine<'_>,
    desc: &ModelDesc,
    ready: &ModelReady,
    settings: &Settings,
    args: &BenchArgs,
    test: &TestSpec,
    n_threads: usize,
    samples_ns: Vec<u64>,
) -> TestRecord {
    let n_tokens = (test.n_prompt + test.n_gen) as f64;
    let samples_ts: Vec<f64> = samples_ns
        .iter()
        .map(|&ns| 1e9 * n_tokens / (ns.max(1) as f64))
        .collect();
    let ns_f: Vec<f64> = samples_ns.iter().map(|&n| n as f64).collect();
    let (avg_ns, stddev_ns) = mean_stddev(&ns_f);
    let (avg_ts, stddev_ts) = mean_stddev(&samples_ts);
    let kv = if settings.config.model.kv_type == "f32" {
        "f32"
    } else {
        "f16"
    };
    TestRecord {
        cpu_info: session.cpu.model_name.to_string(),
        gpu_info: String::new(),
        backends: session.kernel.kernels.name().to_string(),
        model_filename: path.display().to_string(),
        model_type: desc.model_type.clone(),
        model_size: desc.size,
        model_n_params: desc.n_params,
        n_batch: args.ubatch,
        n_ubatch: args.ubatch,
        n_threads,
        type_k: kv.to_string(),
        type_v: kv.to_string(),
        n_prompt: test.n_prompt,
        n_gen: test.n_gen,
        n_depth: test.n_depth,
        test_time: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        avg_ns: avg_ns.round() as u64,
        stddev_ns: stddev_ns.round() as u64,
        avg_ts,
        stddev_ts,
        samples_ns,
        samples_ts,
        llmhost_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_version: session.kernel.kernels.info().version.to_string(),
        arch_plugin: engine.arch_plugin().to_string(),
        pinned: settings.pin_threads,
        warmup: !args.no_warmup,
        model_ready_s: ready.total().as_secs_f64(),
        session_open_s: ready.session_open.as_secs_f64(),
        engine_load_s: ready.engine_load.as_secs_f64(),
        repack_s: engine.repack_stats().seconds,
        repacked_tensors: engine.repack_stats().repacked,
        repacked_bytes: engine.repack_stats().bytes,
        peak_rss_bytes: peak_rss_bytes(),
        weight_bytes_per_token: desc.bytes_per_token,
        weight_read_gbps: (test.n_gen > 0 && test.n_prompt == 0)
            .then(|| desc.bytes_per_token as f64 * avg_ts / 1e9),
    }
}

/// llama-bench draws token ids with `std::rand() % n_vocab`; any fixed sequence of ids will
/// do (speed does not depend on which tokens), so a small xorshift keeps runs reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn below(&mut self, n: usize) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as u32
    }
}

/// What one test needs to draw tokens.
struct Tokens {
    /// Ids drawn from `0..n_vocab`: the tokenizer's vocabulary (llama-bench's
    /// `llama_vocab_n_tokens`), within the model's output size.
    n_vocab: usize,
    /// The first token of a prompt and of a generation run, when the model adds BOS.
    bos: Option<u32>,
}

impl Tokens {
    fn of(session: &Session, engine: &Engine<'_>) -> Tokens {
        let tok = &session.tokenizer;
        Tokens {
            n_vocab: tok.n_vocab().min(engine.n_vocab()).max(1),
            bos: if tok.add_bos() { tok.bos() } else { None },
        }
    }

    fn first(&self, rng: &mut Rng) -> u32 {
        self.bos.unwrap_or_else(|| rng.below(self.n_vocab))
    }
}

/// llama-bench's `test_prompt`: `n` random tokens at positions `start..` as one prompt.
fn test_prompt(
    engine: &mut Engine<'_>,
    pool: &ThreadPool,
    toks: &Tokens,
    rng: &mut Rng,
    start: usize,
    n: usize,
    ubatch: usize,
) -> anyhow::Result<()> {
    let mut tokens = Vec::with_capacity(n);
    tokens.push(toks.first(rng));
    while tokens.len() < n {
        tokens.push(rng.below(toks.n_vocab));
    }
    // The path `llmhost run` takes: steps of `ubatch` tokens, logits of the last one only.
    prefill(engine, pool, 0, start, &tokens, ubatch)?;
    Ok(())
}

/// llama-bench's `test_gen`: `n` single-token steps after what the cache holds, logits of
/// each computed (as a decode step needs them to sample).
fn test_gen(
    engine: &mut Engine<'_>,
    pool: &ThreadPool,
    toks: &Tokens,
    rng: &mut Rng,
    n: usize,
    logits: &mut [f32],
) -> anyhow::Result<()> {
    let start = engine.kv_cache().seq_len(0);
    let mut token = toks.first(rng);
    for pos in start..start + n {
        engine.forward(
            pool,
            &Step {
                tokens: &[token],
                positions: &[pos as i32],
                seq_ids: &[0],
                want_logits: &[true],
            },
            logits,
        )?;
        token = rng.below(toks.n_vocab);
    }
    Ok(())
}

/// Runs one test: warm-up, then the timed repetitions; returns each one's nanoseconds.
fn run_test(
    engine: &mut Engine<'_>,
    pool: &ThreadPool,
    session: &Session,
    test: &TestSpec,
    args: &BenchArgs,
    rng: &mut Rng,
    label: &str,
) -> anyhow::Result<Vec<u64>> {
    let toks = Tokens::of(session, engine);
    let mut logits = vec![0f32; engine.n_vocab()];
    let reps = args.repetitions as usize;
    // Keep the cache's memory between runs (llama.cpp allocates its cache once per context):
    // truncating a sequence to 0 forgets its tokens and keeps the reservation.
    let reset = |engine: &mut Engine<'_>, len: usize| engine.kv_cache().truncate(0, len);
    reset(engine, 0);
    if !args.no_warmup {
        if test.n_prompt > 0 {
            eprintln!("{label}: warmup prompt run");
            test_prompt(engine, pool, &toks, rng, 0, test.n_prompt, args.ubatch)
                .context("warm-up prompt run")?;
        }
        if test.n_gen > 0 {
            eprintln!("{label}: warmup generation run");
            // llama-bench's `test_gen(ctx, 1)`: one decode step after what the cache holds.
            test_gen(engine, pool, &toks, rng, 1, &mut logits).context("warm-up generation run")?;
        }
    }
    let mut samples = Vec::with_capacity(reps);
    let mut depth_cached = false;
    for i in 1..=reps {
        if test.n_depth > 0 {
            if depth_cached {
                // Positions 0..depth are untouched by what came after them.
                reset(engine, test.n_depth);
                eprintln!("{label}: depth run {i}/{reps} (cached)");
            } else {
                reset(engine, 0);
                eprintln!("{label}: depth run {i}/{reps}");
                test_prompt(engine, pool, &toks, rng, 0, test.n_depth, args.ubatch)
                    .with_context(|| format!("filling the cache to depth {}", test.n_depth))?;
                depth_cached = true;
            }
        } else {
            reset(engine, 0);
        }
        let what = if test.n_prompt > 0 {
            "prompt"
        } else {
            "generation"
        };
        eprintln!("{label}: {what} run {i}/{reps}");
        let t0 = Instant::now();
        if test.n_prompt > 0 {
            test_prompt(
                engine,
                pool,
                &toks,
                rng,
                test.n_depth,
                test.n_prompt,
                args.ubatch,
            )?;
        }
        if test.n_gen > 0 {
            test_gen(engine, pool, &toks, rng, test.n_gen, &mut logits)?;
        }
        samples.push(t0.elapsed().as_nanos().max(1) as u64);
    }
    Ok(samples)
}

/// `--memory-bandwidth`: best-of-r sustained read bandwidth with 1 thread and each thread
/// count asked for.
fn run_bandwidth(args: &BenchArgs, settings: &Settings) -> anyhow::Result<()> {
    let (cpu, topology) = crate::cpu::detect_with_topology();
    let mut counts: Vec<usize> = if args.threads.is_empty() {
        vec![1, topology.default_threads()]
    } else {
        args.threads.iter().map(|&t| t as usize).collect()
    };
    counts.dedup();
    let bytes = args.bw_size_mib << 20;
    let runs = args.repetitions as usize;
    let mut printer = Printer::new(args.output);
    // One buffer for every thread count, filled by the widest pool so that each page is first
    // touched by a thread that later reads it.
    let widest = counts.iter().copied().max().unwrap_or(1);
    let fill_pool = thread_pool(settings, &topology, widest)?;
    eprintln!(
        "{TAG}: filling a {} buffer with {widest} thread{}",
        output::size_str(bytes),
        if widest == 1 { "" } else { "s" }
    );
    let buf = membw::make_buffer(&fill_pool, bytes)?;
    drop(fill_pool);
    for &n in &counts {
        let pool = thread_pool(settings, &topology, n)?;
        eprintln!("{TAG}: memory read bandwidth, {n} thread(s), {runs} runs");
        let bw = membw::measure(&pool, &buf, runs)?;
        let samples_gbps: Vec<f64> = bw.samples.iter().map(|b| b / 1e9).collect();
        let (avg, _) = mean_stddev(&samples_gbps);
        let record = BandwidthRecord {
            test: "memory_read_bandwidth",
            cpu_info: cpu.model_name.to_string(),
            n_threads: n,
            pinned: settings.pin_threads,
            buffer_bytes: bw.buffer_bytes,
            runs,
            best_gbps: bw.best() / 1e9,
            avg_gbps: avg,
            samples_gbps,
            llmhost_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        eprintln!(
            "{TAG}: {n} thread(s): best {:.2} GB/s, mean {avg:.2} GB/s",
            record.best_gbps
        );
        printer.bandwidth(&record)?;
    }
    if bytes < 4 * cpu.l3_bytes {
        printer.note(format!(
            "note: the buffer ({}) is less than 4 × the L3 cache ({}); the figures may include cache hits",
            output::size_str(bytes),
            output::size_str(cpu.l3_bytes)
        ));
    }
    printer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_names_follow_llama_bench() {
        let t = TestSpec {
            n_prompt: 512,
            n_gen: 0,
            n_depth: 0,
        };
        assert_eq!(t.name(), "pp512");
        let t = TestSpec {
            n_prompt: 0,
            n_gen: 128,
            n_depth: 512,
        };
        assert_eq!(t.name(), "tg128 @ d512");
    }

    #[test]
    fn rng_stays_below_its_bound() {
        let mut r = Rng::new(1);
        assert!((0..1000).all(|_| r.below(7) < 7));
    }
}
