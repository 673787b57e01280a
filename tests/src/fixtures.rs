//! Building the fixture plugins, and plugin directories made of them for one test.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The fixture plugins' cargo workspace.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/plugins")
}

/// The main build's target directory: the nearest ancestor of this test executable that
/// holds cargo's `CACHEDIR.TAG`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|d| d.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Where the fixture plugins are built: `<target>/fixture-plugins`.
pub fn fixture_target_dir() -> PathBuf {
    target_dir().join("fixture-plugins")
}

/// The fixture libraries built, and where their "I was opened" markers go.
#[derive(Debug)]
pub struct Fixtures {
    /// Where cargo put the libraries.
    pub lib_dir: PathBuf,
    /// Where a fixture's initialiser writes `<crate>.<pid>.opened` when it is opened.
    pub marker_dir: PathBuf,
    /// The feature `kernels-needs-feature` requires (absent on this CPU).
    pub absent_feature: &'static str,
}

impl Fixtures {
    /// The library of fixture crate `crate_name` (e.g. `fixture-low`).
    pub fn lib(&self, crate_name: &str) -> PathBuf {
        self.lib_dir.join(lib_file_name(crate_name))
    }

    /// Whether the library of `crate_name` was opened by this process.
    pub fn was_opened(&self, crate_name: &str) -> bool {
        self.marker_dir
            .join(format!("{crate_name}.{}.opened", std::process::id()))
            .exists()
    }
}

/// `libfixture_low.so` for `fixture-low`, with this OS's prefix and suffix.
pub fn lib_file_name(crate_name: &str) -> String {
    format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        crate_name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    )
}

/// Builds the fixture workspace once per process (cargo makes concurrent processes wait).
pub fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let cpu = crate::cpu::detected();
        let absent_feature = crate::cpu::absent_feature(&cpu);
        let target = fixture_target_dir();
        let marker_dir = target.join("markers");
        fs::create_dir_all(&marker_dir).expect("create the marker directory");
        remove_stale(&target.join("dirs"));
        remove_stale(&marker_dir);
        cargo_build(
            &workspace().join("Cargo.toml"),
            &[("FIXTURE_REQUIRES", absent_feature)],
            &marker_dir,
        );
        Fixtures {
            lib_dir: target.join("debug"),
            marker_dir,
            absent_feature,
        }
    })
}

/// Removes what earlier test processes left in `dir` (older than an hour).
fn remove_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 3600);
        if old {
            let path = entry.path();
            let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
        }
    }
}

fn cargo_build(manifest: &Path, env: &[(&str, &str)], marker_dir: &Path) {
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(fixture_target_dir())
        .env("FIXTURE_MARKER_DIR", marker_dir)
        // Not the test's own build settings: the fixtures have their own profile.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .expect("run cargo to build the fixture plugins");
    assert!(
        out.status.success(),
        "building the fixture plugins ({}) failed:\n{}",
        manifest.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "fixture plugins of {} built (or found up to date) in {:.1?}",
        manifest.display(),
        started.elapsed()
    );
}

/// A fresh directory `<target>/fixture-plugins/dirs/<name>-<pid>` holding copies of `libs`.
/// Each copy is a distinct file, so the loader opens it afresh.
pub fn plugin_dir(name: &str, libs: &[PathBuf]) -> PathBuf {
    let dir = fixture_target_dir()
        .join("dirs")
        .join(format!("{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create a plugin directory");
    for lib in libs {
        let file = lib.file_name().expect("a library file name");
        fs::copy(lib, dir.join(file))
            .unwrap_or_else(|e| panic!("copy {} into {}: {e}", lib.display(), dir.display()));
    }
    dir
}

/// A fixture kernel plugin built against a modified copy of plugin-api.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiVariant {
    /// `SoftmaxArgs` has an extra field (a struct plugin-api's own code never builds), while
    /// the version stays the same: abi_stable's layout check must refuse it at load.
    ChangedLayout,
    /// plugin-api's version is bumped to the next incompatible one (in `Cargo.toml` and in the
    /// manifest macro): the host must refuse it from its manifest, before opening it.
    BumpedVersion,
}

impl ApiVariant {
    /// The fixture crate's name: `fixture-abi-changed` or `fixture-api-bumped`.
    pub fn crate_name(self) -> &'static str {
        match self {
            ApiVariant::ChangedLayout => "fixture-abi-changed",
            ApiVariant::BumpedVersion => "fixture-api-bumped",
        }
    }

    /// The plugin's name: `kernels-abi-changed` or `kernels-api-bumped`.
    pub fn plugin_name(self) -> &'static str {
        match self {
            ApiVariant::ChangedLayout => "kernels-abi-changed",
            ApiVariant::BumpedVersion => "kernels-api-bumped",
        }
    }

    /// The plugin-api version the copy has.
    pub fn api_version(self) -> String {
        match self {
            ApiVariant::ChangedLayout => plugin_api::PLUGIN_API_VERSION.to_string(),
            ApiVariant::BumpedVersion => next_incompatible(plugin_api::PLUGIN_API_VERSION),
        }
    }
}

/// `0.1.0` → `0.2.0`, `1.4.2` → `2.0.0`.
pub fn next_incompatible(version: &str) -> String {
    let parts: Vec<u64> = version
        .split('.')
        .map(|p| p.parse().expect("a numeric version"))
        .collect();
    if parts[0] == 0 {
        format!("0.{}.0", parts[1] + 1)
    } else {
        format!("{}.0.0", parts[0] + 1)
    }
}

/// Builds (once per process) the fixture kernel plugin `variant` against a modified copy of
/// plugin-api, in a workspace generated under `<target>/fixture-plugins/variants/`. Files are
/// only rewritten when their content changes, so a second build has nothing to do; the
/// dependencies (abi_stable, ...) are shared with the fixture workspace's build.
pub fn build_api_variant(variant: ApiVariant) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<ApiVariant, PathBuf>>> = Mutex::new(None);
    let fixtures = fixtures();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get_or_insert_with(HashMap::new).get(&variant) {
        return path.clone();
    }

    let root = fixture_target_dir()
        .join("variants")
        .join(variant.crate_name());
    let api_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api");
    let api = root.join("plugin-api");

    // plugin-api, copied and edited.
    write_if_changed(
        &api.join("Cargo.toml"),
        &fs::read_to_string(api_src.join("Cargo.toml")).expect("read plugin-api/Cargo.toml"),
    );
    for entry in fs::read_dir(api_src.join("src")).expect("list plugin-api/src") {
        let path = entry.expect("a plugin-api/src entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let mut text = fs::read_to_string(&path).expect("read a plugin-api source");
            match (variant, name.as_str()) {
                (ApiVariant::ChangedLayout, "kernel.rs") => {
                    text = edit(
                        &text,
                        "pub struct SoftmaxArgs<'a> {\n",
                        "pub struct SoftmaxArgs<'a> {\n    pub fixture_abi_change: u64,\n",
                    );
                }
                (ApiVariant::BumpedVersion, "manifest.rs") => {
                    let at = text
                        .find("macro_rules! __llmhost_plugin_api_version")
                        .expect("plugin-api/src/manifest.rs has __llmhost_plugin_api_version!: update this test");
                    let (head, tail) = text.split_at(at);
                    let old = format!("\"{}\"", plugin_api::PLUGIN_API_VERSION);
                    let new = format!("\"{}\"", variant.api_version());
                    text = format!("{head}{}", edit(tail, &old, &new));
                }
                _ => {}
            }
            write_if_changed(&api.join("src").join(&name), &text);
        }
    }

    // The fixture kernel code, and a crate using it.
    let common =
        fs::read_to_string(workspace().join("common/kernel.rs")).expect("read common/kernel.rs");
    write_if_changed(&root.join("common/kernel.rs"), &common);
    let krate = root.join(variant.crate_name());
    write_if_changed(
        &krate.join("Cargo.toml"),
        &format!(
            "[package]\nname = \"{}\"\nversion.workspace = true\nedition.workspace = true\npublish = false\n\n\
             [lib]\ncrate-type = [\"cdylib\"]\n\n\
             [dependencies]\nplugin-api.workspace = true\nabi_stable.workspace = true\n",
            variant.crate_name()
        ),
    );
    write_if_changed(
        &krate.join("src/lib.rs"),
        &format!(
            "//! Generated by llmhost-tests: a good kernel plugin, built against a modified plugin-api.\n\
             include!(\"../../common/kernel.rs\");\n\n\
             fixture_kernel! {{\n    name = \"{}\",\n    requires = [],\n    score = |_cpu| 50,\n    matmul = |args| naive_matmul(args),\n}}\n",
            variant.plugin_name()
        ),
    );

    // The workspace: the plugin-api copy's `version.workspace` comes from here; the profile is
    // the fixture workspace's, so that dependencies built for it are reused.
    let fixture_manifest =
        fs::read_to_string(workspace().join("Cargo.toml")).expect("read the fixture Cargo.toml");
    let profile = &fixture_manifest[fixture_manifest
        .find("[profile.")
        .expect("the fixture workspace has a [profile.dev]")..];
    write_if_changed(
        &root.join("Cargo.toml"),
        &format!(
            "# Generated by llmhost-tests.\n[workspace]\nresolver = \"2\"\nmembers = [\"plugin-api\", \"{}\"]\n\n\
             [workspace.package]\nversion = \"{}\"\nedition = \"2021\"\nlicense = \"Apache-2.0\"\npublish = false\n\n\
             [workspace.dependencies]\nabi_stable = \"0.11\"\nplugin-api = {{ path = \"plugin-api\" }}\n\n{profile}",
            variant.crate_name(),
            variant.api_version()
        ),
    );
    // The same dependency versions as the fixture workspace, when it has a lock file.
    if let Ok(lock) = fs::read_to_string(workspace().join("Cargo.lock")) {
        if !root.join("Cargo.lock").exists() {
            write_if_changed(&root.join("Cargo.lock"), &lock);
        }
    }

    cargo_build(&root.join("Cargo.toml"), &[], &fixtures.marker_dir);
    let path = fixtures.lib(variant.crate_name());
    assert!(path.is_file(), "{} was not built", path.display());
    built
        .get_or_insert_with(HashMap::new)
        .insert(variant, path.clone());
    path
}

/// `text` with the first `old` replaced by `new`; panics when `old` is missing (plugin-api
/// changed under the test: update the test).
fn edit(text: &str, old: &str, new: &str) -> String {
    assert!(
        text.contains(old),
        "plugin-api no longer contains {old:?}: update llmhost-tests' fixtures::build_api_variant"
    );
    text.replacen(old, new, 1)
}

/// Writes `text` to `path` unless it already holds exactly that (keeping its mtime, so cargo
/// rebuilds nothing); writes through a temporary file and a rename, so a concurrent reader
/// sees the old or the new content, never half of it.
fn write_if_changed(path: &Path, text: &str) {
    if fs::read_to_string(path).is_ok_and(|old| old == text) {
        return;
    }
    fs::create_dir_all(path.parent().expect("a parent directory")).expect("create a directory");
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}
