//! `/metrics`: counters and latency histograms kept on the HTTP side, and the scheduler's
//! gauges and totals, in the Prometheus text format (version 0.0.4).
//!
//! Latencies are measured where the client feels them: time to first token from the
//! request's arrival to the first token event reaching the HTTP side, inter-token latency
//! between consecutive token events.

use super::protocol::StatsSnapshot;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bucket bounds in seconds: from a fast decode step to a long generation.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const DURATION_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// A cumulative Prometheus histogram over fixed bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, plus +Inf; each counts observations ≤ its bound only (made
    /// cumulative when rendered).
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(b) => format!("{b}"),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Everything `/metrics` shows that the HTTP side measures.
#[derive(Debug)]
pub struct Metrics {
    /// Answers by (endpoint, HTTP status).
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub request_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            time_to_first_token: Histogram::new(&LATENCY_BUCKETS),
            inter_token_latency: Histogram::new(&LATENCY_BUCKETS),
            request_duration: Histogram::new(&DURATION_BUCKETS),
        }
    }
}

impl Metrics {
    /// Counts one answer. `endpoint` is a route pattern (or "other"), never a raw path, so
    /// that clients cannot grow the label set.
    pub fn count_request(&self, endpoint: &'static str, status: u16) {
        // A poisoned lock only means another thread panicked mid-increment; the map is
        // still a map.
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((endpoint, status)).or_insert(0) += 1;
    }

    /// The text `/metrics` returns: these metrics, the scheduler's, and how many generation
    /// requests the HTTP side holds.
    pub fn render(&self, stats: &StatsSnapshot, in_flight: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP llmhost_requests_total HTTP requests answered, by endpoint and status.\n\
             # TYPE llmhost_requests_total counter"
        );
        {
            let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            for ((endpoint, status), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "llmhost_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let counters: [(&str, &str, u64); 7] = [
            (
                "llmhost_prompt_tokens_total",
                "Prompt tokens of admitted requests.",
                stats.prompt_tokens,
            ),
            (
                "llmhost_prompt_tokens_cached_total",
                "Prompt tokens taken from the prefix cache instead of computed.",
                stats.prompt_tokens_cached,
            ),
            (
                "llmhost_generated_tokens_total",
                "Tokens generated.",
                stats.generated_tokens,
            ),
            (
                "llmhost_scheduler_steps_total",
                "Forward steps the scheduler ran.",
                stats.steps,
            ),
            (
                "llmhost_requests_finished_total",
                "Generation requests that ended normally.",
                stats.requests_finished,
            ),
            (
                "llmhost_requests_cancelled_total",
                "Generation requests cancelled because the client went away.",
                stats.requests_cancelled,
            ),
            (
                "llmhost_requests_failed_total",
                "Generation requests that failed.",
                stats.requests_failed,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let gauges: [(&str, &str, usize); 8] = [
            (
                "llmhost_queue_depth",
                "Requests waiting for a sequence slot.",
                stats.queued,
            ),
            (
                "llmhost_active_sequences",
                "Sequences being prefilled or decoded.",
                stats.active,
            ),
            (
                "llmhost_kv_blocks_used",
                "KV cache blocks held by live sequences.",
                stats.kv_blocks_used,
            ),
            (
                "llmhost_kv_blocks_free",
                "KV cache blocks allocatable now (free plus cached).",
                stats.kv_blocks_free,
            ),
            (
                "llmhost_kv_blocks_cached",
                "KV cache blocks held by no sequence but keeping a reusable prefix.",
                stats.kv_blocks_cached,
            ),
            (
                "llmhost_kv_blocks_total",
                "KV cache blocks in all.",
                stats.kv_blocks_total,
            ),
            (
                "llmhost_kv_block_tokens",
                "Tokens per KV cache block.",
                stats.kv_block_tokens,
            ),
            (
                "llmhost_http_requests_in_flight",
                "Generation requests the HTTP side is answering (running or queued).",
                in_flight,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        self.time_to_first_token.render(
            &mut out,
            "llmhost_time_to_first_token_seconds",
            "From a request's arrival to its first generated token.",
        );
        self.inter_token_latency.render(
            &mut out,
            "llmhost_inter_token_latency_seconds",
            "Between consecutive generated tokens of one request.",
        );
        self.request_duration.render(
            &mut out,
            "llmhost_request_duration_seconds",
            "From a generation request's arrival to its last byte (or the client leaving).",
        );
        out
    }
}

/// Times one generation request: time to first token, inter-token latency, and, when
/// dropped, the request's duration (so a cancelled request counts too).
#[derive(Debug)]
pub struct RequestTimer {
    metrics: Arc<Metrics>,
    arrival: Instant,
    last_token: Option<Instant>,
}

impl RequestTimer {
    pub fn start(metrics: Arc<Metrics>, arrival: Instant) -> Self {
        RequestTimer {
            metrics,
            arrival,
            last_token: None,
        }
    }

    /// A token event arrived.
    pub fn token(&mut self) {
        let now = Instant::now();
        match self.last_token {
            None => self.metrics.time_to_first_token.observe(now - self.arrival),
            Some(last) => self.metrics.inter_token_latency.observe(now - last),
        }
        self.last_token = Some(now);
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        self.metrics
            .request_duration
            .observe(self.arrival.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_sum 5.55\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn render_has_every_metric_once() {
        let m = Arc::new(Metrics::default());
        m.count_request("/v1/completions", 200);
        m.count_request("/v1/completions", 200);
        m.count_request("other", 404);
        {
            let mut t = RequestTimer::start(m.clone(), Instant::now());
            t.token();
            t.token();
        }
        let stats = StatsSnapshot {
            queued: 3,
            kv_blocks_total: 64,
            generated_tokens: 12,
            ..StatsSnapshot::default()
        };
        let out = m.render(&stats, 2);
        for line in [
            "llmhost_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 2",
            "llmhost_requests_total{endpoint=\"other\",status=\"404\"} 1",
            "llmhost_queue_depth 3",
            "llmhost_kv_blocks_total 64",
            "llmhost_generated_tokens_total 12",
            "llmhost_http_requests_in_flight 2",
            "llmhost_time_to_first_token_seconds_count 1",
            "llmhost_inter_token_latency_seconds_count 1",
            "llmhost_request_duration_seconds_count 1",
        ] {
            assert!(
                out.lines().any(|l| l == line),
                "{line:?} missing from\n{out}"
            );
        }
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        let types = out.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let helps = out.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(types, helps);
    }
}
