//! How `llmhost bench` prints results: a markdown table with llama-bench's columns, or JSON /
//! JSON Lines with llama-bench's field names (plus llmhost's own figures), so one script reads
//! both tools' output. Rows are printed as each test finishes, as llama-bench does.

use serde::Serialize;
use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A markdown table, as llama-bench prints it.
    Md,
    /// One JSON array of test objects.
    Json,
    /// One JSON object per line.
    Jsonl,
}

/// One test's result, named as llama-bench names its fields; the `llmhost`-only fields come
/// after `samples_ts`.
#[derive(Debug, Clone, Serialize)]
pub struct TestRecord {
    pub cpu_info: String,
    pub gpu_info: String,
    /// The kernel plugin that ran the test (llama-bench: its ggml backends, "CPU").
    pub backends: String,
    pub model_filename: String,
    pub model_type: String,
    pub model_size: u64,
    pub model_n_params: u64,
    /// Tokens per forward step (llmhost has one batch size; llama-bench's n_ubatch).
    pub n_batch: usize,
    pub n_ubatch: usize,
    pub n_threads: usize,
    pub type_k: String,
    pub type_v: String,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub n_depth: usize,
    pub test_time: String,
    pub avg_ns: u64,
    pub stddev_ns: u64,
    pub avg_ts: f64,
    pub stddev_ts: f64,
    pub samples_ns: Vec<u64>,
    pub samples_ts: Vec<f64>,
    // llmhost's own.
    pub llmhost_version: String,
    pub kernel_version: String,
    pub arch_plugin: String,
    pub pinned: bool,
    pub warmup: bool,
    /// From nothing to a model ready to run: `session_open_s` + `engine_load_s`.
    pub model_ready_s: f64,
    /// Plugin discovery and loading, mmap and page warm-up, tokenizer, thread pool.
    pub session_open_s: f64,
    /// Architecture plugin load, weight repacking and KV cache allocation.
    pub engine_load_s: f64,
    /// The part of `engine_load_s` spent repacking weights for the kernel plugin (and
    /// releasing their file pages); 0 with `--no-repack`.
    pub repack_s: f64,
    /// Tensors the kernel plugin repacked at load.
    pub repacked_tensors: usize,
    /// Bytes of the repacked weights (their file pages were released).
    pub repacked_bytes: u64,
    /// Peak resident set (VmHWM) when the test ended; mapped weights count once touched.
    pub peak_rss_bytes: Option<u64>,
    /// Bytes of weights one decode step reads.
    pub weight_bytes_per_token: u64,
    /// `weight_bytes_per_token` × `avg_ts` / 1e9, for generation tests (null otherwise).
    pub weight_read_gbps: Option<f64>,
}

impl TestRecord {
    /// llama-bench's test name: `pp512`, `tg128`, `pp512+tg128`, with ` @ d<depth>`.
    pub fn test_name(&self) -> String {
        let mut name = match (self.n_prompt, self.n_gen) {
            (p, 0) => format!("pp{p}"),
            (0, g) => format!("tg{g}"),
            (p, g) => format!("pp{p}+tg{g}"),
        };
        if self.n_depth > 0 {
            name.push_str(&format!(" @ d{}", self.n_depth));
        }
        name
    }
}

/// One memory-bandwidth measurement.
#[derive(Debug, Clone, Serialize)]
pub struct BandwidthRecord {
    pub test: &'static str,
    pub cpu_info: String,
    pub n_threads: usize,
    pub pinned: bool,
    pub buffer_bytes: u64,
    pub runs: usize,
    /// Best run, in 10^9 bytes per second (STREAM reports the best).
    pub best_gbps: f64,
    pub avg_gbps: f64,
    pub samples_gbps: Vec<f64>,
    pub llmhost_version: String,
}

/// Mean and sample standard deviation (n − 1), as llama-bench computes them.
pub fn mean_stddev(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// `92.10 MiB` / `1.04 GiB`, llama-bench's size column.
pub fn size_str(bytes: u64) -> String {
    if bytes < 1 << 30 {
        format!("{:.2} MiB", bytes as f64 / 1024.0 / 1024.0)
    } else {
        format!("{:.2} GiB", bytes as f64 / 1024.0 / 1024.0 / 1024.0)
    }
}

/// `134.52 M` / `1.54 B`, llama-bench's params column.
pub fn params_str(n: u64) -> String {
    if n < 1_000_000_000 {
        format!("{:.2} M", n as f64 / 1e6)
    } else {
        format!("{:.2} B", n as f64 / 1e9)
    }
}

/// Prints records to stdout in one format; `finish` closes a JSON array and prints the
/// markdown notes.
pub struct Printer {
    format: OutputFormat,
    started: bool,
    rows: usize,
    notes: Vec<String>,
}

impl Printer {
    pub fn new(format: OutputFormat) -> Printer {
        Printer {
            format,
            started: false,
            rows: 0,
            notes: Vec::new(),
        }
    }

    /// A line under the markdown table (ignored by the JSON formats, whose records carry the
    /// same figures).
    pub fn note(&mut self, line: String) {
        self.notes.push(line);
    }

    fn emit(&mut self, text: &str) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        Ok(())
    }

    fn json_item<T: Serialize>(&mut self, record: &T) -> anyhow::Result<()> {
        let text = match self.format {
            OutputFormat::Jsonl => format!("{}\n", serde_json::to_string(record)?),
            _ => {
                let body = serde_json::to_string_pretty(record)?;
                let body = body.replace('\n', "\n  ");
                let lead = if self.rows == 0 { "[\n  " } else { ",\n  " };
                format!("{lead}{body}")
            }
        };
        self.rows += 1;
        self.emit(&text)
    }

    pub fn test(&mut self, r: &TestRecord) -> anyhow::Result<()> {
        if self.format != OutputFormat::Md {
            return self.json_item(r);
        }
        let mut text = String::new();
        if !self.started {
            self.started = true;
            text.push_str(&md_head(&[
                ("model", -30),
                ("size", 10),
                ("params", 10),
                ("backend", -14),
                ("threads", 7),
                ("test", 15),
                ("t/s", 20),
            ]));
        }
        text.push_str(&format!(
            "| {:<30} | {:>10} | {:>10} | {:<14} | {:>7} | {:>15} | {:>20} |\n",
            r.model_type,
            size_str(r.model_size),
            params_str(r.model_n_params),
            r.backends,
            r.n_threads,
            r.test_name(),
            format!("{:.2} ± {:.2}", r.avg_ts, r.stddev_ts)
        ));
        self.rows += 1;
        self.emit(&text)
    }

    pub fn bandwidth(&mut self, r: &BandwidthRecord) -> anyhow::Result<()> {
        if self.format != OutputFormat::Md {
            return self.json_item(r);
        }
        let mut text = String::new();
        if !self.started {
            self.started = true;
            text.push_str(&md_head(&[
                ("test", -28),
                ("threads", 7),
                ("buffer", 10),
                ("runs", 4),
                ("best GB/s", 12),
                ("mean GB/s", 16),
            ]));
        }
        let (mean, sd) = mean_stddev(&r.samples_gbps);
        text.push_str(&format!(
            "| {:<28} | {:>7} | {:>10} | {:>4} | {:>12.2} | {:>16} |\n",
            r.test,
            r.n_threads,
            size_str(r.buffer_bytes),
            r.runs,
            r.best_gbps,
            format!("{mean:.2} ± {sd:.2}")
        ));
        self.rows += 1;
        self.emit(&text)
    }

    pub fn finish(&mut self) -> anyhow::Result<()> {
        let text = match self.format {
            OutputFormat::Md => {
                let mut t = String::new();
                if !self.notes.is_empty() {
                    t.push('\n');
                    for n in &self.notes {
                        t.push_str(n);
                        t.push('\n');
                    }
                }
                t
            }
            OutputFormat::Json if self.rows == 0 => "[]\n".to_string(),
            OutputFormat::Json => "\n]\n".to_string(),
            OutputFormat::Jsonl => String::new(),
        };
        self.emit(&text)
    }
}

/// A markdown table's header and separator rows, laid out like llama-bench's: each column is
/// `(title, width)`, left-aligned when the width is negative, right-aligned (`---:`) otherwise.
fn md_head(columns: &[(&str, isize)]) -> String {
    let mut head = String::from("|");
    let mut rule = String::from("|");
    for &(title, width) in columns {
        let w = width.unsigned_abs();
        if width < 0 {
            head.push_str(&format!(" {title:<w$} |"));
            rule.push_str(&format!(" {} |", "-".repeat(w)));
        } else {
            head.push_str(&format!(" {title:>w$} |"));
            rule.push_str(&format!(" {}: |", "-".repeat(w - 1)));
        }
    }
    format!("{head}\n{rule}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_heads_are_llama_bench_s() {
        let head = md_head(&[("model", -7), ("t/s", 5)]);
        assert_eq!(head, "| model   |   t/s |\n| ------- | ----: |\n");
    }

    #[test]
    fn stats_match_llama_bench() {
        let (m, s) = mean_stddev(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((s - 1.2909944).abs() < 1e-6);
        assert_eq!(mean_stddev(&[5.0]), (5.0, 0.0));
    }

    #[test]
    fn sizes_read_like_llama_bench() {
        assert_eq!(size_str(96_576_768), "92.10 MiB");
        assert_eq!(size_str(1_117_320_736), "1.04 GiB");
        assert_eq!(params_str(134_515_008), "134.52 M");
        assert_eq!(params_str(1_543_714_304), "1.54 B");
    }
}
