//! The plugin manifest: a few lines of TOML embedded in a section of the plugin library
//! (`.llmhost_manifest` on ELF, `__DATA,__llmhost_mf` on Mach-O, `.llmhmf` on PE), which the
//! host reads by parsing the file, never by loading it. This is how the host knows, before
//! opening a library, that it is an llmhost plugin, which ABI it speaks, and which CPU
//! features its code needs: opening an AVX-512 library on a CPU without AVX-512 must be
//! impossible, because a library's initialisers run the moment it is opened.
//!
//! ```toml
//! manifest = 1
//! kind = "kernel"            # or "arch"
//! name = "kernels-avx2"
//! version = "0.1.0"          # the plugin's version
//! plugin_api = "0.1.0"       # the plugin-api version it was built against
//! isa = "x86_64"
//! requires = ["avx2", "fma", "f16c"]
//! ```

/// Section names the manifest lives in, per object format.
pub const ELF_SECTION: &str = ".llmhost_manifest";
pub const MACHO_SECTION: &str = "__llmhost_mf";
pub const PE_SECTION: &str = ".llmhmf";

/// Version of the manifest format.
pub const MANIFEST_FORMAT: u32 = 1;

/// Copies a string into a fixed-size byte array at compile time (for the manifest static).
pub const fn str_to_array<const N: usize>(s: &str) -> [u8; N] {
    let bytes = s.as_bytes();
    assert!(bytes.len() == N, "manifest length mismatch");
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// The target architecture, as a literal usable in `concat!`.
#[cfg(target_arch = "x86_64")]
#[doc(hidden)]
#[macro_export]
macro_rules! __llmhost_target_isa {
    () => {
        "x86_64"
    };
}
#[cfg(target_arch = "aarch64")]
#[doc(hidden)]
#[macro_export]
macro_rules! __llmhost_target_isa {
    () => {
        "aarch64"
    };
}
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[doc(hidden)]
#[macro_export]
macro_rules! __llmhost_target_isa {
    () => {
        "other"
    };
}

/// The plugin-api version as a literal usable in `concat!`; a unit test keeps it equal to
/// `CARGO_PKG_VERSION` of this crate.
#[doc(hidden)]
#[macro_export]
macro_rules! __llmhost_plugin_api_version {
    () => {
        "0.1.0"
    };
}

/// Embeds a manifest in the calling library. `$text` must be a `concat!`-able expression.
/// The exported `llmhost_plugin_manifest` function is never called: it references the static
/// so that the linker keeps the section in the shared library.
#[doc(hidden)]
#[macro_export]
macro_rules! __llmhost_embed_manifest {
    ($text:expr) => {
        const __LLMHOST_MANIFEST_TEXT: &str = $text;
        #[used]
        #[cfg_attr(
            any(target_os = "macos", target_os = "ios"),
            link_section = "__DATA,__llmhost_mf"
        )]
        #[cfg_attr(windows, link_section = ".llmhmf")]
        #[cfg_attr(
            not(any(target_os = "macos", target_os = "ios", windows)),
            link_section = ".llmhost_manifest"
        )]
        static __LLMHOST_MANIFEST: [u8; __LLMHOST_MANIFEST_TEXT.len()] =
            $crate::manifest::str_to_array(__LLMHOST_MANIFEST_TEXT);

        #[no_mangle]
        pub extern "C" fn llmhost_plugin_manifest() -> usize {
            __LLMHOST_MANIFEST.as_ptr() as usize
        }
    };
}

/// Exports a kernel plugin: its manifest (with the CPU features it requires, by canonical
/// name as in [`CpuFeatures::ALL`](crate::CpuFeatures::ALL)) and its root module built from
/// `$impl: KernelImpl`. The plugin crate must depend on `abi_stable` too.
///
/// ```ignore
/// plugin_api::export_kernel_plugin!(impl = Avx2Kernels, name = "kernels-avx2", requires = ["avx2", "fma", "f16c"]);
/// ```
#[macro_export]
macro_rules! export_kernel_plugin {
    (impl = $impl:ty, name = $name:expr, requires = [$($feat:expr),* $(,)?] $(,)?) => {
        $crate::__llmhost_embed_manifest!(concat!(
            "manifest = 1\n",
            "kind = \"kernel\"\n",
            "name = \"", $name, "\"\n",
            "version = \"", env!("CARGO_PKG_VERSION"), "\"\n",
            "plugin_api = \"", $crate::__llmhost_plugin_api_version!(), "\"\n",
            "isa = \"", $crate::__llmhost_target_isa!(), "\"\n",
            "requires = [", $("\"", $feat, "\", ",)* "]\n",
        ));
        $(const _: () = assert!(
            $crate::CpuFeatures::is_known_name($feat),
            concat!("unknown CPU feature name in export_kernel_plugin!: ", $feat)
        );)*

        #[::abi_stable::export_root_module]
        pub fn llmhost_kernel_plugin_root() -> $crate::KernelPluginRef {
            $crate::kernel::root_module::<$impl>()
        }
    };
}

/// Exports an architecture plugin: its manifest and its root module built from
/// `$impl: ArchImpl`. The plugin crate must depend on `abi_stable` too.
#[macro_export]
macro_rules! export_arch_plugin {
    (impl = $impl:ty, name = $name:expr $(,)?) => {
        $crate::__llmhost_embed_manifest!(concat!(
            "manifest = 1\n",
            "kind = \"arch\"\n",
            "name = \"",
            $name,
            "\"\n",
            "version = \"",
            env!("CARGO_PKG_VERSION"),
            "\"\n",
            "plugin_api = \"",
            $crate::__llmhost_plugin_api_version!(),
            "\"\n",
            "isa = \"",
            $crate::__llmhost_target_isa!(),
            "\"\n",
            "requires = []\n",
        ));

        #[::abi_stable::export_root_module]
        pub fn llmhost_arch_plugin_root() -> $crate::ArchPluginRef {
            $crate::arch::root_module::<$impl>()
        }
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn manifest_api_version_matches_crate_version() {
        assert_eq!(
            crate::__llmhost_plugin_api_version!(),
            env!("CARGO_PKG_VERSION"),
            "update __llmhost_plugin_api_version! when bumping plugin-api's version"
        );
    }
}
