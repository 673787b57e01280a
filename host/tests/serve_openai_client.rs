//! The official `openai` Python client (from PyPI, in a venv `scripts/serve_openai_check.py`
//! creates under `~/.cache/llmhost`) against `llmhost serve` on SmolLM2: chat and completions,
//! streamed and not; streamed text equal to non-streamed text for the same seed; greedy output
//! over HTTP equal to `llmhost run`'s (completion and chat); logprobs; `/v1/models`;
//! `/metrics`. The script prints one PASS/FAIL line per check.

use std::path::Path;
use std::process::Command;

#[test]
fn the_openai_python_client_gets_what_llmhost_run_gives() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("python3")
        .arg(root.join("scripts/serve_openai_check.py"))
        .args(["--llmhost", env!("CARGO_BIN_EXE_llmhost")])
        .args(["-m", "smollm2-135m", "-t", "2", "-c", "1024"])
        .output()
        .expect("python3 runs scripts/serve_openai_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "serve_openai_check.py failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("PASS"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}
