//! Bad plugins never crash the host: each is reported in one line that names it and says what
//! to do, and the host goes on to select a good plugin.

use llmhost::plugins::{PluginRegistry, PluginReport, PluginSources, PluginStatus};
use llmhost_tests::calls::{assert_one_line, matmul_2x3, rms_norm_3_4};
use llmhost_tests::cpu;
use llmhost_tests::fixtures::{build_api_variant, fixtures, plugin_dir, ApiVariant};
use plugin_api::PLUGIN_API_VERSION;
use std::path::{Path, PathBuf};

fn discover(dir: &Path) -> PluginRegistry {
    PluginRegistry::discover(&cpu::detected(), &PluginSources::only([dir.to_path_buf()]))
}

fn report_at<'a>(registry: &'a PluginRegistry, path: &Path) -> &'a PluginReport {
    registry
        .reports()
        .iter()
        .find(|r| r.path == path)
        .unwrap_or_else(|| {
            panic!(
                "no report for {}: {:#?}",
                path.display(),
                registry.reports()
            )
        })
}

/// The host still works: the good fixture is selected and computes.
fn assert_still_selects(registry: &PluginRegistry, name: &str) {
    let selected = registry
        .select_kernel(None)
        .unwrap_or_else(|e| panic!("no kernel selected: {e}"));
    assert_eq!(selected.kernels.name(), name, "{}", selected.reason);
    assert_eq!(matmul_2x3(&selected.kernels).unwrap(), vec![6.0, 15.0]);
}

#[test]
fn a_library_without_manifest_and_a_text_file_are_skipped_unopened() {
    let fx = fixtures();
    let dir = plugin_dir(
        "not-a-plugin",
        &[fx.lib("fixture-not-a-plugin"), fx.lib("fixture-low")],
    );
    let garbage = dir.join(format!(
        "{}garbage{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    std::fs::write(&garbage, "this is not a shared library\n").unwrap();

    let registry = discover(&dir);
    let lib = dir.join(llmhost_tests::fixtures::lib_file_name(
        "fixture-not-a-plugin",
    ));
    let report = report_at(&registry, &lib);
    assert!(
        matches!(report.status, PluginStatus::NotAPlugin { .. }),
        "{report}"
    );
    let line = report.to_string();
    eprintln!("{line}");
    assert_one_line(
        &line,
        &[
            &lib.display().to_string(),
            "not an llmhost plugin",
            ".llmhost_manifest",
            "never opened",
        ],
    );

    let report = report_at(&registry, &garbage);
    assert!(
        matches!(report.status, PluginStatus::NotAPlugin { .. }),
        "{report}"
    );
    let line = report.to_string();
    eprintln!("{line}");
    assert_one_line(
        &line,
        &[
            &garbage.display().to_string(),
            "not an llmhost plugin",
            "never opened",
        ],
    );

    assert_still_selects(&registry, "kernels-low");
    if cfg!(target_os = "linux") {
        assert!(
            !fx.was_opened("fixture-not-a-plugin"),
            "the host opened a library without manifest"
        );
        // The marker mechanism itself works: the good plugin was opened and left its marker.
        assert!(
            fx.was_opened("fixture-low"),
            "fixture-low's load-time marker is missing"
        );
    }
}

#[test]
fn a_plugin_with_a_changed_abi_layout_fails_in_one_line() {
    let fx = fixtures();
    let lib = build_api_variant(ApiVariant::ChangedLayout);
    let dir = plugin_dir("abi-changed", &[lib.clone(), fx.lib("fixture-high")]);
    let registry = discover(&dir);
    let path = dir.join(lib.file_name().unwrap());
    let report = report_at(&registry, &path);
    assert!(
        matches!(report.status, PluginStatus::Failed { .. }),
        "{report}"
    );
    let line = report.to_string();
    eprintln!("{line}");
    assert_one_line(
        &line,
        &[
            "plugin 'kernels-abi-changed'",
            &path.display().to_string(),
            "failed to load",
            "layout check failed: SoftmaxArgs<'a>: incompatible type size",
            &format!("both say plugin-api {PLUGIN_API_VERSION}"),
            "rebuild it",
        ],
    );
    assert_still_selects(&registry, "kernels-high");
}

#[test]
fn a_plugin_built_against_another_api_version_is_refused_before_opening() {
    let fx = fixtures();
    let lib = build_api_variant(ApiVariant::BumpedVersion);
    let dir = plugin_dir("api-bumped", &[lib.clone(), fx.lib("fixture-low")]);
    let registry = discover(&dir);
    let path = dir.join(lib.file_name().unwrap());
    let report = report_at(&registry, &path);
    assert!(
        matches!(report.status, PluginStatus::Skipped { .. }),
        "{report}"
    );
    let line = report.to_string();
    eprintln!("{line}");
    let theirs = ApiVariant::BumpedVersion.api_version();
    assert_eq!(
        line,
        format!(
            "plugin 'kernels-api-bumped' ({}) skipped: was built against plugin-api {theirs}, this host speaks {PLUGIN_API_VERSION}: rebuild it against plugin-api {PLUGIN_API_VERSION}",
            path.display()
        )
    );
    assert_still_selects(&registry, "kernels-low");
    if cfg!(target_os = "linux") {
        assert!(
            !fx.was_opened("fixture-api-bumped"),
            "the host opened a plugin of another API version"
        );
    }
}

#[test]
fn a_plugin_needing_a_missing_cpu_feature_is_never_opened() {
    let fx = fixtures();
    let dir = plugin_dir(
        "needs-feature",
        &[fx.lib("fixture-needs-feature"), fx.lib("fixture-low")],
    );
    let registry = discover(&dir);
    let path = dir.join(llmhost_tests::fixtures::lib_file_name(
        "fixture-needs-feature",
    ));
    let report = report_at(&registry, &path);
    assert!(
        matches!(report.status, PluginStatus::Skipped { .. }),
        "{report}"
    );
    let line = report.to_string();
    eprintln!("{line}");
    assert_eq!(
        line,
        format!(
            "plugin 'kernels-needs-feature' ({}) skipped: needs {}, which this CPU lacks; not opened",
            path.display(),
            fx.absent_feature
        )
    );
    // It would have won on score (1000) had it been loaded.
    assert_still_selects(&registry, "kernels-low");
    if cfg!(target_os = "linux") {
        assert!(
            !fx.was_opened("fixture-needs-feature"),
            "the host opened a plugin this CPU cannot run"
        );
    }
}

#[test]
fn a_panicking_op_is_an_error_and_the_plugin_keeps_working() {
    let fx = fixtures();
    let dir = plugin_dir(
        "panicky",
        &[fx.lib("fixture-panicky"), fx.lib("fixture-low")],
    );
    let registry = discover(&dir);
    let panicky = registry.select_kernel(Some("panicky")).unwrap().kernels;
    assert_eq!(panicky.name(), "kernels-panicky");

    let err = matmul_2x3(&panicky).unwrap_err();
    let line = err.to_string();
    eprintln!("{line}");
    assert!(err.is_panic(), "{err:?}");
    assert_eq!(err.op, "matmul");
    assert_eq!(
        line,
        "plugin 'kernels-panicky' failed in matmul: plugin panicked: kernels-panicky matmul exploded on purpose (at fixture-panicky/src/lib.rs:10:9)"
    );
    // Other ops of the same plugin still work, and so does the failing one's error path.
    let norm = rms_norm_3_4(&panicky).unwrap();
    let inv = 1.0 / 12.5f32.sqrt();
    assert!(
        (norm[0] - 3.0 * inv).abs() < 1e-6 && (norm[1] - 4.0 * inv).abs() < 1e-6,
        "{norm:?}"
    );
    assert!(matmul_2x3(&panicky).unwrap_err().is_panic());
    // And another plugin is unaffected.
    let low = registry.select_kernel(Some("kernels-low")).unwrap().kernels;
    assert_eq!(matmul_2x3(&low).unwrap(), vec![6.0, 15.0]);
}

#[test]
fn a_plugin_whose_score_panics_fails_in_one_line() {
    let fx = fixtures();
    let dir = plugin_dir(
        "score-fails",
        &[fx.lib("fixture-score-fails"), fx.lib("fixture-low")],
    );
    let registry = discover(&dir);
    let path = dir.join(llmhost_tests::fixtures::lib_file_name(
        "fixture-score-fails",
    ));
    let report = report_at(&registry, &path);
    assert!(
        matches!(report.status, PluginStatus::Failed { .. }),
        "{report}"
    );
    let line = report.to_string();
    eprintln!("{line}");
    assert_one_line(
        &line,
        &[
            "plugin 'kernels-score-fails'",
            "score()",
            "plugin panicked",
            "report it to its author",
        ],
    );
    assert_still_selects(&registry, "kernels-low");
}

#[test]
fn many_foreign_shared_libraries_are_read_but_never_opened() {
    // The directory of this test executable holds cargo's build products: proc-macro
    // libraries and the like. None is a plugin; reading them must not open them.
    let exe_dir: PathBuf = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let registry = PluginRegistry::discover(
        &cpu::detected(),
        &PluginSources {
            exe_dir: Some(exe_dir),
            ..PluginSources::default()
        },
    );
    for report in registry.reports() {
        assert_one_line(&report.to_string(), &[]);
    }
}
