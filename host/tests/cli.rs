//! The `llmhost` binary as a user runs it: what `info` and `plugins` print, and that bad input
//! ends in one `error:` line and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn llmhost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llmhost"))
}

/// The scalar kernel plugin cargo built beside the binary (`cargo build --workspace`).
fn scalar_plugin() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_llmhost"));
    let lib = exe.with_file_name(format!(
        "{}kernels_scalar.{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_EXTENSION
    ));
    assert!(
        lib.exists(),
        "{} is missing: build every plugin first (`cargo build --workspace`, as scripts/test.sh does)",
        lib.display()
    );
    lib
}

/// A directory holding only the scalar plugin, and a config that searches only it.
fn scalar_only_setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let lib = scalar_plugin();
    std::fs::copy(&lib, plugins.join(lib.file_name().unwrap())).unwrap();
    let config = dir.path().join("llmhost.toml");
    std::fs::write(
        &config,
        "[plugins]\ndirs = [\"plugins\"]\nsearch_exe_dir = false\n",
    )
    .unwrap();
    (dir, config)
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.env_remove("LLMHOST_PLUGIN_PATH").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

fn config_arg(config: &Path) -> [&std::ffi::OsStr; 2] {
    ["--config".as_ref(), config.as_os_str()]
}

#[test]
fn info_with_only_scalar_picks_scalar_and_says_why() {
    let (_dir, config) = scalar_only_setup();
    let (out, stdout, stderr) = run(llmhost().args(config_arg(&config)).arg("info"));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Kernel plugin: kernels-scalar")
            && stdout.contains("the only runnable kernel plugin"),
        "{stdout}"
    );
    assert!(
        stdout.contains("kernel plugin 0.1.0 loaded, score 1"),
        "{stdout}"
    );
}

/// With every plugin the build made (the executable's directory), `info` picks the SIMD
/// plugin this CPU runs: kernels-avx2 on any x86-64 with AVX2, FMA and F16C.
#[test]
fn info_picks_the_best_kernel_plugin_this_cpu_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("llmhost.toml");
    std::fs::write(&config, "").unwrap();
    let (out, stdout, stderr) = run(llmhost().args(config_arg(&config)).arg("info"));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    #[cfg(target_arch = "x86_64")]
    let want = if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        "Kernel plugin: kernels-avx2"
    } else {
        "Kernel plugin: kernels-scalar"
    };
    #[cfg(not(target_arch = "x86_64"))]
    let want = "Kernel plugin: kernels-scalar";
    assert!(stdout.contains(want), "{stdout}");
}

#[test]
fn info_shows_the_features_the_cpu_has() {
    let (_dir, config) = scalar_only_setup();
    let (_, stdout, _) = run(llmhost().args(config_arg(&config)).arg("info"));
    let features = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("features"))
        .expect("a features line")
        .to_string();
    let names: Vec<&str> = features.split_whitespace().skip(1).collect();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, has) in [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ] {
            assert_eq!(names.contains(&name), has, "{name} in {features:?}");
        }
    }
    assert!(stdout.contains("physical"), "{stdout}");
}

#[test]
fn forced_kernel_that_is_missing_is_one_clear_error() {
    let (_dir, config) = scalar_only_setup();
    let (out, stdout, stderr) = run(llmhost()
        .args(config_arg(&config))
        .args(["--kernel", "avx2", "info"]));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("'avx2' was not found") && errors[0].contains("kernels-scalar"),
        "{stderr}"
    );
}

#[test]
fn forced_scalar_is_used() {
    let (_dir, config) = scalar_only_setup();
    let (out, stdout, _) = run(llmhost()
        .args(config_arg(&config))
        .args(["--kernel", "scalar", "info"]));
    assert!(out.status.success());
    assert!(
        stdout.contains("Kernel plugin: kernels-scalar") && stdout.contains("forced by --kernel"),
        "{stdout}"
    );
}

#[test]
fn bad_config_is_one_line_naming_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("llmhost.toml");
    std::fs::write(&config, "[threads]\ncount = 2\nbogus = true\n").unwrap();
    let (out, _, stderr) = run(llmhost().args(config_arg(&config)).arg("info"));
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: config ")
            && stderr.contains("llmhost.toml:3:1")
            && stderr.contains("bogus"),
        "{stderr}"
    );

    let (out, _, stderr) = run(llmhost().args(["--config", "/nonexistent/x.toml", "info"]));
    assert!(!out.status.success());
    assert!(
        stderr.contains("/nonexistent/x.toml") && stderr.lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn missing_plugin_dir_in_config_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("llmhost.toml");
    std::fs::write(&config, "[plugins]\ndirs = [\"nowhere\"]\n").unwrap();
    let (out, _, stderr) = run(llmhost().args(config_arg(&config)).arg("info"));
    assert!(!out.status.success());
    assert!(
        stderr.contains("plugins.dirs[0]") && stderr.contains("nowhere"),
        "{stderr}"
    );
}

#[test]
fn no_kernel_plugin_at_all_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("llmhost.toml");
    std::fs::write(&config, "[plugins]\nsearch_exe_dir = false\n").unwrap();
    let (out, stdout, stderr) = run(llmhost()
        .args(config_arg(&config))
        .args(["--plugin-dir".as_ref(), dir.path().as_os_str()])
        .arg("info"));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("no runnable kernel plugin found"),
        "{stderr}"
    );
}

#[test]
fn plugins_lists_one_line_each() {
    let (dir, config) = scalar_only_setup();
    std::fs::write(dir.path().join("plugins/libnotes.so"), "not a library").unwrap();
    let (out, stdout, _) = run(llmhost().args(config_arg(&config)).arg("plugins"));
    assert!(out.status.success());
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("kernel  plugin 'kernels-scalar'"),
        "{stdout}"
    );
    let (_, stdout, _) = run(llmhost()
        .args(config_arg(&config))
        .args(["plugins", "--all"]));
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(
        stdout.contains("libnotes.so: not an llmhost plugin"),
        "{stdout}"
    );
}

#[test]
fn help_explains_plugins_and_threads() {
    let (out, stdout, _) = run(llmhost().arg("--help"));
    assert!(out.status.success());
    for word in [
        "LLMHOST_PLUGIN_PATH",
        "--kernel",
        "--threads",
        "info",
        "plugins",
    ] {
        assert!(
            stdout.contains(word),
            "{word} missing from --help:\n{stdout}"
        );
    }
    let (out, _, stderr) = run(llmhost().args(["--threads", "0", "info"]));
    assert!(!out.status.success());
    assert!(stderr.contains("--threads"), "{stderr}");
}

#[test]
fn no_repack_is_accepted_by_every_command_that_loads_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "some text").unwrap();
    let text = text.to_str().unwrap();
    let missing = "/nonexistent/model.gguf";
    for args in [
        &["run", "--no-repack", "-m", missing, "-p", "x"][..],
        &["perplexity", "--no-repack", "-m", missing, "-f", text],
        &["bench", "--no-repack", "-m", missing, "-p", "16"],
        &[
            "serve",
            "--no-repack",
            "-m",
            missing,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ],
    ] {
        // Past the argument parser: the missing model is what fails.
        let (out, _, stderr) = run(llmhost().args(args));
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains("does not exist") && !stderr.contains("unexpected argument"),
            "{args:?}: {stderr}"
        );
    }
    for command in ["run", "perplexity", "bench", "serve"] {
        let (out, stdout, _) = run(llmhost().args([command, "--help"]));
        assert!(out.status.success());
        assert!(
            stdout.contains("--no-repack") && stdout.contains("zero-copy in the mmap"),
            "{command} --help:\n{stdout}"
        );
    }
}
