//! Helpers shared by the host's integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The path of model `name` (as `scripts/fetch_models.py --list` names it), fetched into
/// the cache first if it is missing. The script prints the path on its last stdout line.
pub fn model_path(name: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch_models.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--path", name])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} --path {name} failed ({}): {}{}",
        script.display(),
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        path.is_file(),
        "{} --path {name} printed {path:?}, which is not a file",
        script.display()
    );
    path
}
