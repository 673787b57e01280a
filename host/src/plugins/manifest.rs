//! Reading a plugin's manifest out of the library file, without opening the library.
//!
//! Every llmhost plugin embeds a few lines of TOML in a section of its shared library
//! (`plugin_api::manifest`). The host finds that section by parsing the file as an object file
//! (ELF, Mach-O or PE) with the `object` crate, so nothing of the plugin runs before the host
//! has decided that it can run here.

use super::one_line;
use object::{Architecture, BinaryFormat, Object, ObjectSection, ReadCache};
use plugin_api::{manifest as section, CpuFeatures};
use serde::Deserialize;
use std::fmt;
use std::fs::File;
use std::path::Path;

/// What a plugin provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginKind {
    /// A kernel plugin (`plugin_api::KernelPlugin`).
    Kernel,
    /// An architecture plugin (`plugin_api::ArchPlugin`).
    Arch,
}

impl PluginKind {
    /// The manifest spelling: `"kernel"` or `"arch"`.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Kernel => "kernel",
            PluginKind::Arch => "arch",
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginKind::Kernel => "kernel",
            PluginKind::Arch => "architecture",
        })
    }
}

/// A plugin's manifest, as read from its library file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginManifest {
    pub kind: PluginKind,
    /// The plugin's name, e.g. `kernels-avx2`; plugins are told apart (and shadowed) by it.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// The plugin-api version it was built against.
    pub plugin_api: String,
    /// The instruction-set architecture of its code, as `plugin_api::Isa::name` spells it.
    pub isa: String,
    /// CPU features its code needs.
    pub requires: CpuFeatures,
}

/// Why a file yields no usable manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestError {
    /// The file is no llmhost plugin: not an object file, or one without a manifest section.
    NotAPlugin(String),
    /// The file could not be read.
    Unreadable(String),
    /// The file has a manifest section, but its content cannot be used. `name` is the
    /// plugin's name when the manifest still says it.
    Invalid {
        name: Option<String>,
        reason: String,
    },
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestError::NotAPlugin(why) => write!(f, "not an llmhost plugin: {why}"),
            ManifestError::Unreadable(why) => write!(f, "cannot be read: {why}"),
            ManifestError::Invalid { reason, .. } => {
                write!(f, "has an unusable manifest: {reason}")
            }
        }
    }
}

impl std::error::Error for ManifestError {}

/// The object-file format shared libraries have on this OS.
const NATIVE_FORMAT: BinaryFormat = if cfg!(any(target_os = "macos", target_os = "ios")) {
    BinaryFormat::MachO
} else if cfg!(windows) {
    BinaryFormat::Pe
} else {
    BinaryFormat::Elf
};

fn format_name(format: BinaryFormat) -> &'static str {
    match format {
        BinaryFormat::Elf => "ELF",
        BinaryFormat::MachO => "Mach-O",
        BinaryFormat::Pe => "PE",
        BinaryFormat::Coff => "COFF",
        BinaryFormat::Wasm => "WebAssembly",
        BinaryFormat::Xcoff => "XCOFF",
        _ => "unknown-format",
    }
}

/// The ISA name (`plugin_api::Isa::name`) of an object file's code, when llmhost knows it.
fn isa_name(arch: Architecture) -> Option<&'static str> {
    match arch {
        Architecture::X86_64 => Some("x86_64"),
        Architecture::Aarch64 => Some("aarch64"),
        _ => None,
    }
}

/// Reads and parses the manifest of the library at `path` without opening the library.
pub fn read_manifest(path: &Path) -> Result<PluginManifest, ManifestError> {
    let (text, file_isa) = read_manifest_section(path)?;
    let manifest = parse_manifest(&text)?;
    if let Some(file_isa) = file_isa {
        if file_isa != manifest.isa {
            return Err(ManifestError::Invalid {
                name: Some(manifest.name),
                reason: format!(
                    "it says isa = \"{}\" but its code is {file_isa}: the library is inconsistent, rebuild it",
                    manifest.isa
                ),
            });
        }
    }
    Ok(manifest)
}

/// The manifest text of the library at `path`, and the ISA of its code when known. Only the
/// headers and the manifest section are read, never the whole file.
pub fn read_manifest_section(path: &Path) -> Result<(String, Option<&'static str>), ManifestError> {
    let file = File::open(path).map_err(|e| ManifestError::Unreadable(e.to_string()))?;
    let cache = ReadCache::new(file);
    let obj = object::File::parse(&cache)
        .map_err(|e| ManifestError::NotAPlugin(format!("not a shared library: {e}")))?;
    let format = obj.format();
    let section_name = match format {
        BinaryFormat::Elf => section::ELF_SECTION,
        BinaryFormat::MachO => section::MACHO_SECTION,
        BinaryFormat::Pe => section::PE_SECTION,
        other => {
            return Err(ManifestError::NotAPlugin(format!(
                "a {} object file, not a shared library of this OS",
                format_name(other)
            )))
        }
    };
    let Some(sec) = obj.section_by_name(section_name) else {
        return Err(ManifestError::NotAPlugin(format!(
            "it has no {section_name} section"
        )));
    };
    let bytes = sec.data().map_err(|e| ManifestError::Invalid {
        name: None,
        reason: format!("its {section_name} section cannot be read ({e})"),
    })?;
    // Mach-O and PE pad sections with zeros.
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let text = std::str::from_utf8(&bytes[..end]).map_err(|_| ManifestError::Invalid {
        name: None,
        reason: format!("its {section_name} section is not UTF-8 text"),
    })?;
    if format != NATIVE_FORMAT {
        return Err(ManifestError::Invalid {
            name: lenient_name(text),
            reason: format!(
                "it is a {} library, this host loads {} libraries: use a build of the plugin for this OS",
                format_name(format),
                format_name(NATIVE_FORMAT)
            ),
        });
    }
    Ok((text.to_owned(), isa_name(obj.architecture())))
}

/// The manifest as written, checked field by field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[allow(dead_code)] // checked before deserialising
    manifest: u32,
    kind: String,
    name: String,
    version: String,
    plugin_api: String,
    isa: String,
    requires: Vec<String>,
}

/// The `name` of a manifest that may be invalid otherwise, for messages.
fn lenient_name(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    table.get("name")?.as_str().map(str::to_owned)
}

/// Parses manifest text (`plugin_api::manifest` describes the format).
pub fn parse_manifest(text: &str) -> Result<PluginManifest, ManifestError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| ManifestError::Invalid {
        name: None,
        reason: format!("it is not valid TOML ({})", one_line(e.message())),
    })?;
    let name = table
        .get("name")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let invalid = |reason: String| ManifestError::Invalid {
        name: name.clone(),
        reason,
    };
    match table.get("manifest").and_then(|v| v.as_integer()) {
        None => return Err(invalid("it has no integer `manifest` format number".into())),
        Some(n) if n == i64::from(section::MANIFEST_FORMAT) => {}
        Some(n) => {
            return Err(invalid(format!(
                "it uses manifest format {n}, this host reads format {}: use a newer llmhost or rebuild the plugin against this host's plugin-api {}",
                section::MANIFEST_FORMAT,
                plugin_api::PLUGIN_API_VERSION
            )))
        }
    }
    let raw = RawManifest::deserialize(toml::Value::Table(table))
        .map_err(|e| invalid(one_line(e.message())))?;
    let kind = match raw.kind.as_str() {
        "kernel" => PluginKind::Kernel,
        "arch" => PluginKind::Arch,
        other => {
            return Err(invalid(format!(
                "unknown kind \"{other}\" (this host loads \"kernel\" and \"arch\" plugins): it needs a newer llmhost"
            )))
        }
    };
    let mut requires = CpuFeatures::EMPTY;
    let mut unknown = Vec::new();
    for feature in &raw.requires {
        match CpuFeatures::from_name(feature) {
            Some(f) => requires.insert(f),
            None => unknown.push(format!("\"{feature}\"")),
        }
    }
    if !unknown.is_empty() {
        return Err(invalid(format!(
            "it requires CPU feature{} {} that this host does not know: it needs a newer llmhost, or fix the plugin's requires list",
            if unknown.len() == 1 { "" } else { "s" },
            unknown.join(", ")
        )));
    }
    Ok(PluginManifest {
        kind,
        name: raw.name,
        version: raw.version,
        plugin_api: raw.plugin_api,
        isa: raw.isa,
        requires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "manifest = 1\nkind = \"kernel\"\nname = \"kernels-avx2\"\nversion = \"0.1.0\"\nplugin_api = \"0.1.0\"\nisa = \"x86_64\"\nrequires = [\"avx2\", \"fma\", ]\n";

    #[test]
    fn parses_the_format_the_macros_write() {
        let m = parse_manifest(GOOD).unwrap();
        assert_eq!(m.kind, PluginKind::Kernel);
        assert_eq!(m.name, "kernels-avx2");
        assert_eq!(m.plugin_api, "0.1.0");
        assert_eq!(m.requires, CpuFeatures::AVX2.union(CpuFeatures::FMA));
    }

    #[test]
    fn unknown_feature_kind_field_and_format_are_refused_with_the_name() {
        for (from, to, expect) in [
            (
                "\"fma\"",
                "\"avx1024\"",
                "\"avx1024\" that this host does not know",
            ),
            ("\"kernel\"", "\"codec\"", "unknown kind \"codec\""),
            ("manifest = 1", "manifest = 2", "manifest format 2"),
            ("isa =", "colour = \"red\"\nisa =", "unknown field `colour`"),
        ] {
            let err = parse_manifest(&GOOD.replace(from, to)).unwrap_err();
            let ManifestError::Invalid { name, reason } = &err else {
                panic!("{err:?}")
            };
            assert_eq!(name.as_deref(), Some("kernels-avx2"));
            assert!(reason.contains(expect), "{reason}");
            assert!(!err.to_string().contains('\n'));
        }
        let err = parse_manifest("name = ").unwrap_err();
        assert!(err.to_string().contains("not valid TOML"), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn a_text_file_is_not_a_plugin() {
        let dir = std::env::temp_dir().join(format!("llmhost-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("libgarbage.so");
        std::fs::write(&path, "this is not a library\n").unwrap();
        let err = read_manifest(&path).unwrap_err();
        assert!(matches!(err, ManifestError::NotAPlugin(_)), "{err:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
