//! Choosing plugins: scores, forced kernels, shadowing, search order, architecture plugins.

use llmhost::plugins::{
    ArchHandle, Kernels, PluginError, PluginRegistry, PluginSources, PluginStatus, SourceKind,
};
use llmhost_tests::calls::{assert_one_line, matmul_2x3};
use llmhost_tests::cpu;
use llmhost_tests::fixtures::{fixtures, lib_file_name, plugin_dir};
use plugin_api::abi_stable::std_types::{ROption, RStr, RString, RVec};
use plugin_api::Metadata;
use std::path::PathBuf;

fn discover(dirs: &[PathBuf]) -> PluginRegistry {
    PluginRegistry::discover(&cpu::detected(), &PluginSources::only(dirs.to_vec()))
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Kernels>();
    check::<ArchHandle>();
    check::<PluginRegistry>();
}

#[test]
fn the_highest_score_wins() {
    let fx = fixtures();
    let dir = plugin_dir(
        "two-good",
        &[
            fx.lib("fixture-low"),
            fx.lib("fixture-high"),
            fx.lib("fixture-zero-score"),
        ],
    );
    let registry = discover(&[dir]);
    for r in registry.reports() {
        eprintln!("{r}");
        assert!(r.is_loaded(), "{r}");
    }
    let selected = registry.select_kernel(None).unwrap();
    assert_eq!(selected.kernels.name(), "kernels-high");
    assert_eq!(selected.kernels.score(), 10);
    assert_eq!(
        selected.reason,
        "highest score 10 of 2 runnable kernel plugins"
    );
    assert_eq!(matmul_2x3(&selected.kernels).unwrap(), vec![6.0, 15.0]);
    let zero = registry.report("kernels-zero-score").unwrap();
    assert_eq!(zero.status, PluginStatus::LoadedKernel { score: 0 });
    assert_one_line(
        &zero.to_string(),
        &["kernels-zero-score", "cannot run on this CPU"],
    );

    // Forcing works with or without the "kernels-" prefix, and only for runnable plugins.
    for name in ["low", "kernels-low"] {
        let forced = registry.select_kernel(Some(name)).unwrap();
        assert_eq!(forced.kernels.name(), "kernels-low");
        assert_eq!(forced.reason, "forced by configuration (score 1)");
    }
    let err = registry.select_kernel(Some("zero-score")).unwrap_err();
    eprintln!("{err}");
    assert!(
        matches!(err, PluginError::KernelNotRunnable { .. }),
        "{err:?}"
    );
    assert_one_line(
        &err.to_string(),
        &[
            "'zero-score' cannot run",
            "cannot run on this CPU",
            "kernels-high (score 10)",
            "kernels-low (score 1)",
            "\"auto\"",
        ],
    );
}

#[test]
fn a_forced_kernel_that_does_not_exist_is_a_clear_error() {
    let fx = fixtures();
    let dir = plugin_dir(
        "forced-missing",
        &[fx.lib("fixture-low"), fx.lib("fixture-needs-feature")],
    );
    let registry = discover(&[dir]);
    let err = registry.select_kernel(Some("avx512")).unwrap_err();
    let line = err.to_string();
    eprintln!("{line}");
    assert!(matches!(err, PluginError::KernelNotFound { .. }), "{err:?}");
    assert_eq!(
        line,
        "the forced kernel plugin 'avx512' was not found (kernel plugins found: kernels-low (score 1), kernels-needs-feature (skipped)): set [plugins] kernel to one of those or to \"auto\""
    );

    // Forcing one that was found but cannot run says why.
    let err = registry.select_kernel(Some("needs-feature")).unwrap_err();
    eprintln!("{err}");
    assert_one_line(
        &err.to_string(),
        &[
            "'needs-feature' cannot run",
            "skipped: needs",
            "which this CPU lacks",
            "kernels-low (score 1)",
        ],
    );
}

#[test]
fn no_runnable_kernel_names_the_searched_directories() {
    let fx = fixtures();
    let dir = plugin_dir("none-runnable", &[fx.lib("fixture-zero-score")]);
    let missing = dir.join("does-not-exist");
    let registry = discover(&[dir.clone(), missing.clone()]);
    let err = registry.select_kernel(None).unwrap_err();
    let line = err.to_string();
    eprintln!("{line}");
    assert_one_line(
        &line,
        &[
            "no runnable kernel plugin found",
            &format!(
                "{} (from [plugins] dirs): 1 candidate library",
                dir.display()
            ),
            &format!(
                "{} (from [plugins] dirs): does not exist",
                missing.display()
            ),
            "kernels-zero-score (score 0: cannot run on this CPU)",
            "[plugins] dirs or LLMHOST_PLUGIN_PATH",
        ],
    );
}

#[test]
fn the_first_plugin_of_a_name_wins_and_later_ones_are_shadowed() {
    let fx = fixtures();
    let first = plugin_dir("shadow-first", &[fx.lib("fixture-low")]);
    // The second directory also has a plugin of the same name that would score higher if it
    // were a different plugin: it is shadowed, never loaded.
    let second = plugin_dir(
        "shadow-second",
        &[fx.lib("fixture-low"), fx.lib("fixture-high")],
    );
    let registry = discover(&[first.clone(), second.clone()]);
    let winner = first.join(lib_file_name("fixture-low"));
    let loser = second.join(lib_file_name("fixture-low"));
    let report = registry.reports().iter().find(|r| r.path == loser).unwrap();
    assert_eq!(report.status, PluginStatus::Shadowed { by: winner.clone() });
    let line = report.to_string();
    eprintln!("{line}");
    assert_eq!(
        line,
        format!(
            "plugin 'kernels-low' ({}) shadowed by {} (the first plugin of a name found wins): remove one of them to silence this",
            loser.display(),
            winner.display()
        )
    );
    assert_eq!(registry.report("kernels-low").unwrap().path, winner);
    let forced = registry.select_kernel(Some("low")).unwrap();
    assert_eq!(forced.kernels.path(), winner);
    assert_eq!(
        registry.select_kernel(None).unwrap().kernels.name(),
        "kernels-high"
    );
}

#[test]
fn config_dirs_come_before_the_plugin_path_and_the_executable_directory() {
    let fx = fixtures();
    let config = plugin_dir("order-config", &[fx.lib("fixture-high")]);
    let env_a = plugin_dir(
        "order-env-a",
        &[fx.lib("fixture-high"), fx.lib("fixture-low")],
    );
    let env_b = plugin_dir("order-env-b", &[fx.lib("fixture-low")]);
    let exe = plugin_dir(
        "order-exe",
        &[fx.lib("fixture-low"), fx.lib("fixture-zero-score")],
    );
    let sources = PluginSources {
        config_dirs: vec![config.clone()],
        plugin_path: Some(std::env::join_paths([&env_a, &env_b]).unwrap()),
        exe_dir: Some(exe.clone()),
    };
    let dirs: Vec<(PathBuf, SourceKind)> = sources
        .search_dirs()
        .into_iter()
        .map(|d| (d.path, d.source))
        .collect();
    assert_eq!(
        dirs,
        vec![
            (config.clone(), SourceKind::Config),
            (env_a.clone(), SourceKind::EnvPath),
            (env_b.clone(), SourceKind::EnvPath),
            (exe.clone(), SourceKind::ExeDir),
        ]
    );
    let registry = PluginRegistry::discover(&cpu::detected(), &sources);
    let loaded: Vec<(String, SourceKind)> = registry
        .reports()
        .iter()
        .filter(|r| r.is_loaded())
        .map(|r| (r.name.clone().unwrap(), r.source))
        .collect();
    assert_eq!(
        loaded,
        vec![
            ("kernels-high".to_string(), SourceKind::Config),
            ("kernels-low".to_string(), SourceKind::EnvPath),
            ("kernels-zero-score".to_string(), SourceKind::ExeDir),
        ]
    );
    let shadowed = registry
        .reports()
        .iter()
        .filter(|r| matches!(r.status, PluginStatus::Shadowed { .. }))
        .count();
    assert_eq!(shadowed, 3);

    // Each source can be switched off: only the executable's directory.
    let only_exe = PluginSources {
        exe_dir: Some(exe.clone()),
        ..PluginSources::default()
    };
    let registry = PluginRegistry::discover(&cpu::detected(), &only_exe);
    assert_eq!(
        registry.select_kernel(None).unwrap().kernels.name(),
        "kernels-low"
    );
}

/// GGUF metadata with one key.
struct FixtureMetadata {
    vocab: Option<u64>,
}

impl Metadata for FixtureMetadata {
    fn get_u64(&self, key: RStr<'_>) -> ROption<u64> {
        match (key.as_str(), self.vocab) {
            ("fixturearch.vocab_size", Some(v)) => ROption::RSome(v),
            _ => ROption::RNone,
        }
    }
    fn get_i64(&self, _: RStr<'_>) -> ROption<i64> {
        ROption::RNone
    }
    fn get_f64(&self, _: RStr<'_>) -> ROption<f64> {
        ROption::RNone
    }
    fn get_bool(&self, _: RStr<'_>) -> ROption<bool> {
        ROption::RNone
    }
    fn get_str(&self, _: RStr<'_>) -> ROption<RString> {
        ROption::RNone
    }
    fn get_i64_array(&self, _: RStr<'_>) -> ROption<RVec<i64>> {
        ROption::RNone
    }
    fn get_f64_array(&self, _: RStr<'_>) -> ROption<RVec<f64>> {
        ROption::RNone
    }
}

#[test]
fn architecture_plugins_are_found_by_architecture() {
    let fx = fixtures();
    let dir = plugin_dir("arch", &[fx.lib("fixture-arch"), fx.lib("fixture-low")]);
    let registry = discover(&[dir]);
    let report = registry.report("arch-fixture").unwrap();
    eprintln!("{report}");
    assert_eq!(
        report.status,
        PluginStatus::LoadedArch {
            architectures: vec!["fixturearch".into()]
        }
    );
    // An architecture plugin is no kernel plugin.
    assert_eq!(registry.kernels().len(), 1);
    assert!(matches!(
        registry.select_kernel(Some("arch-fixture")),
        Err(PluginError::KernelNotFound { .. })
    ));

    let arch = registry.arch_for("fixturearch").unwrap();
    assert_eq!(arch.name(), "arch-fixture");
    let load = |vocab: Option<u64>| {
        arch.load("fixturearch", &FixtureMetadata { vocab }, &[])
            .map(|model| model.info().n_vocab)
    };
    assert_eq!(load(Some(7)).unwrap(), 7);
    let err = load(None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "plugin 'arch-fixture' failed in load: fixturearch.vocab_size is missing"
    );

    let err = registry.arch_for("phi3").unwrap_err();
    assert_eq!(
        err.to_string(),
        "no architecture plugin handles general.architecture = \"phi3\" (loaded: arch-fixture for fixturearch): add a plugin for it to a plugin directory"
    );
}
