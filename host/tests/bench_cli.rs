//! `llmhost bench` as a user (or `scripts/bench_vs_llamacpp.py`) runs it, on the tiny synthetic
//! Gemma model in `tests/data/synthetic` (0.5 MB, F32): JSON and JSON Lines with llama-bench's
//! field names and positive speeds, the markdown table, the memory-bandwidth mode, and bad
//! arguments ending in one `error:` line and a non-zero exit.
//!
//! The kernels are forced to the scalar reference: these tests are about the command, not
//! about the speed or the state of a SIMD kernel plugin.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn llmhost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llmhost"))
}

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/synthetic/gemma-tiny.gguf")
}

/// The plugins the bench needs, which cargo builds beside the binary only with
/// `cargo build --workspace`.
fn check_plugins() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_llmhost"));
    for name in ["kernels_scalar", "arch_gemma"] {
        let lib = exe.with_file_name(format!(
            "{}{name}.{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_EXTENSION
        ));
        assert!(
            lib.exists(),
            "{} is missing: build every plugin first (`cargo build --workspace`, as scripts/test.sh does)",
            lib.display()
        );
    }
}

/// Runs `llmhost --kernel scalar bench ARGS` on the synthetic model.
fn bench(args: &[&str]) -> (Output, String, String) {
    check_plugins();
    let out = llmhost()
        .env_remove("LLMHOST_PLUGIN_PATH")
        .env_remove("LLMHOST_CONFIG")
        .env_remove("LLMHOST_LOG")
        .args(["--kernel", "scalar", "bench", "-m"])
        .arg(model())
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

fn positive(v: &Value, key: &str) -> f64 {
    let x = v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"));
    assert!(x > 0.0, "{key} = {x} in {v}");
    x
}

/// The fields both tools' JSON share, checked on one test object.
fn check_test(v: &Value, n_prompt: u64, n_gen: u64, n_depth: u64, reps: usize) {
    assert_eq!(
        v["model_filename"].as_str(),
        Some(model().to_str().unwrap())
    );
    assert!(
        v["model_type"].as_str().unwrap().starts_with("gemma "),
        "{v}"
    );
    // 2 layers of n_embd 64 in F32 plus the tied 320 × 64 embedding.
    assert_eq!(v["model_size"].as_u64(), Some(476_416), "{v}");
    assert_eq!(v["model_n_params"].as_u64(), Some(119_104), "{v}");
    assert_eq!(v["backends"].as_str(), Some("kernels-scalar"));
    assert_eq!(v["n_prompt"].as_u64(), Some(n_prompt));
    assert_eq!(v["n_gen"].as_u64(), Some(n_gen));
    assert_eq!(v["n_depth"].as_u64(), Some(n_depth));
    assert!(v["n_threads"].as_u64().unwrap() >= 1);
    positive(v, "avg_ts");
    positive(v, "avg_ns");
    assert!(v["stddev_ts"].as_f64().unwrap() >= 0.0);
    let ts = v["samples_ts"].as_array().unwrap();
    let ns = v["samples_ns"].as_array().unwrap();
    assert_eq!((ts.len(), ns.len()), (reps, reps), "{v}");
    assert!(ts.iter().all(|t| t.as_f64().unwrap() > 0.0));
    // t/s of each sample is its tokens over its time, as llama-bench computes it.
    for (t, n) in ts.iter().zip(ns) {
        let expect = 1e9 * (n_prompt + n_gen) as f64 / n.as_f64().unwrap();
        assert!((t.as_f64().unwrap() / expect - 1.0).abs() < 1e-9, "{v}");
    }
    positive(v, "model_ready_s");
    // Tied embeddings: the whole model is read per generated token.
    assert_eq!(v["weight_bytes_per_token"].as_u64(), Some(476_416));
    if cfg!(target_os = "linux") {
        positive(v, "peak_rss_bytes");
    }
    if n_gen > 0 {
        positive(v, "weight_read_gbps");
    } else {
        assert!(v["weight_read_gbps"].is_null(), "{v}");
    }
}

#[test]
fn json_has_llama_bench_fields_and_positive_speeds() {
    let (out, stdout, stderr) = bench(&["-p", "16", "-n", "4", "-r", "2", "-o", "json"]);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let tests = v.as_array().expect("a JSON array");
    assert_eq!(tests.len(), 2, "{stdout}");
    check_test(&tests[0], 16, 0, 0, 2);
    check_test(&tests[1], 0, 4, 0, 2);
    // Progress on stderr, as llama-bench's --progress.
    for line in [
        "benchmark 1/2: pp16",
        "warmup prompt run",
        "prompt run 2/2",
        "benchmark 2/2: tg4",
        "generation run 2/2",
    ] {
        assert!(stderr.contains(line), "{line:?} not in {stderr}");
    }
}

#[test]
fn jsonl_runs_every_thread_count_and_depth_in_llama_bench_order() {
    let (out, stdout, stderr) = bench(&[
        "-t", "1,2", "-d", "0,4", "-p", "8", "-n", "2", "-r", "1", "-o", "jsonl",
    ]);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let tests: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let order: Vec<(u64, u64, u64, u64)> = tests
        .iter()
        .map(|v| {
            let n = |k: &str| v[k].as_u64().unwrap();
            (n("n_threads"), n("n_depth"), n("n_prompt"), n("n_gen"))
        })
        .collect();
    assert_eq!(
        order,
        [
            (1, 0, 8, 0),
            (1, 0, 0, 2),
            (1, 4, 8, 0),
            (1, 4, 0, 2),
            (2, 0, 8, 0),
            (2, 0, 0, 2),
            (2, 4, 8, 0),
            (2, 4, 0, 2),
        ]
    );
    for v in &tests {
        let n = |k: &str| v[k].as_u64().unwrap();
        check_test(v, n("n_prompt"), n("n_gen"), n("n_depth"), 1);
    }
    assert!(stderr.contains("depth run 1/1"), "{stderr}");
}

#[test]
fn markdown_table_has_llama_bench_columns() {
    let (out, stdout, stderr) = bench(&["-p", "16", "-n", "4", "-r", "2", "-d", "0,4", "-t", "1"]);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let header: Vec<&str> = lines[0].split('|').map(str::trim).collect();
    assert_eq!(
        header,
        ["", "model", "size", "params", "backend", "threads", "test", "t/s", ""]
    );
    assert!(lines[1].starts_with("| ---"), "{stdout}");
    let rows: Vec<Vec<&str>> = lines[2..6]
        .iter()
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    let tests: Vec<&str> = rows.iter().map(|r| r[6]).collect();
    assert_eq!(tests, ["pp16", "tg4", "pp16 @ d4", "tg4 @ d4"], "{stdout}");
    for r in &rows {
        assert!(r[1].starts_with("gemma "), "{stdout}");
        assert_eq!(r[2], "0.45 MiB");
        assert_eq!(r[4], "kernels-scalar");
        assert_eq!(r[5], "1");
        let (mean, sd) = r[7].split_once(" ± ").expect("mean ± sd");
        assert!(mean.parse::<f64>().unwrap() > 0.0 && sd.parse::<f64>().is_ok());
    }
    assert!(stdout.contains("model ready in"), "{stdout}");
    assert!(stdout.contains("GB/s of weights"), "{stdout}");
}

#[test]
fn memory_bandwidth_reports_positive_rates() {
    let (out, stdout, stderr) = bench(&[
        "--memory-bandwidth",
        "--bw-size-mib",
        "8",
        "-r",
        "2",
        "-t",
        "1,2",
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let runs = v.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for (r, threads) in runs.iter().zip([1, 2]) {
        assert_eq!(r["n_threads"].as_u64(), Some(threads));
        assert_eq!(r["buffer_bytes"].as_u64(), Some(8 << 20));
        assert_eq!(r["samples_gbps"].as_array().unwrap().len(), 2);
        positive(r, "best_gbps");
    }
}

/// One `error:` line naming the problem, and a failing exit status.
fn assert_one_error_line(out: &Output, stderr: &str, needle: &str) {
    assert!(!out.status.success(), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(needle), "{needle:?} not in {stderr}");
}

#[test]
fn bad_arguments_are_one_clear_error() {
    check_plugins();
    let missing = llmhost()
        .args(["bench", "-m", "/nonexistent/model.gguf", "-p", "16"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_one_error_line(&missing, &stderr, "/nonexistent/model.gguf does not exist");
    assert!(missing.stdout.is_empty());

    for (args, needle) in [
        (&["-p", "abc"][..], "--n-prompt"),
        (&["-n", "1,x"][..], "--n-gen"),
        (&["-t", "0"][..], "--threads"),
        (&["-r", "0"][..], "--repetitions"),
        (&["-o", "csv"][..], "--output"),
        (&["-p", "0", "-n", "0"][..], "nothing to run"),
    ] {
        let (out, _, stderr) = bench(args);
        assert_one_error_line(&out, &stderr, needle);
    }
}
