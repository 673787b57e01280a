//! The host's safe handle on a loaded kernel plugin: calls the op table and turns each
//! `RResult` into a Rust `Result` whose error names the plugin and the op. Thin on purpose:
//! shapes are checked by the plugin (and by the caller that builds the arguments).

use super::one_line;
use plugin_api::abi_stable::sabi_trait::prelude::TD_Opaque;
use plugin_api::pool::ThreadPool_TO;
use plugin_api::{
    AttentionArgs, BinaryArgs, CpuInfo, DequantizeArgs, GluArgs, KernelInfo, KernelPluginRef,
    MatmulArgs, PoolRef, PreparedWeight, QuantizeArgs, RmsNormArgs, RopeArgs, SoftmaxArgs,
    ThreadPool, UnaryArgs, WeightRef,
};
use std::fmt;
use std::path::{Path, PathBuf};

/// An error returned by a plugin function, or a panic it caught at its boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginCallError {
    /// The plugin's name.
    pub plugin: String,
    /// The function that failed: `"matmul"`, `"load"`, ...
    pub op: &'static str,
    /// What the plugin said, on one line (`"plugin panicked: ..."` for a panic).
    pub message: String,
}

impl PluginCallError {
    pub(crate) fn new(plugin: &str, op: &'static str, message: &str) -> PluginCallError {
        // The plugin-side guard prefixes its messages with the function's name.
        let message = message
            .strip_prefix(op)
            .and_then(|m| m.strip_prefix(": "))
            .unwrap_or(message);
        PluginCallError {
            plugin: plugin.to_owned(),
            op,
            message: one_line(message),
        }
    }

    /// Whether the plugin panicked (rather than returning an error).
    pub fn is_panic(&self) -> bool {
        self.message.starts_with("plugin panicked")
    }
}

impl fmt::Display for PluginCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "plugin '{}' failed in {}: {}",
            self.plugin, self.op, self.message
        )
    }
}

impl std::error::Error for PluginCallError {}

/// A loaded kernel plugin. Cheap to clone; the library stays loaded for the life of the
/// process, so a `Kernels` never dangles.
#[derive(Clone)]
pub struct Kernels {
    root: KernelPluginRef,
    info: KernelInfo,
    name: String,
    path: PathBuf,
    score: u32,
}

impl fmt::Debug for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernels")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("score", &self.score)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

macro_rules! ops {
    ($($(#[$doc:meta])* $op:ident: $args:ident;)*) => {
        $(
            $(#[$doc])*
            pub fn $op<P: ThreadPool>(&self, args: $args<'_>, pool: &P) -> Result<(), PluginCallError> {
                let f = self.root.$op();
                let pool: PoolRef<'_> = ThreadPool_TO::from_ptr(pool, TD_Opaque);
                f(args, &pool)
                    .into_result()
                    .map_err(|e| self.error(stringify!($op), &e))
            }
        )*
    };
}

impl Kernels {
    /// Asks the plugin for its `info()` and `score(cpu)`; either failing (error or panic) is
    /// an error naming the function.
    pub(crate) fn init(
        root: KernelPluginRef,
        name: &str,
        path: &Path,
        cpu: &CpuInfo,
    ) -> Result<Kernels, PluginCallError> {
        let info = root.info()()
            .into_result()
            .map_err(|e| PluginCallError::new(name, "info", &e))?;
        let score = root.score()(cpu)
            .into_result()
            .map_err(|e| PluginCallError::new(name, "score", &e))?;
        Ok(Kernels {
            root,
            info,
            name: name.to_owned(),
            path: path.to_owned(),
            score,
        })
    }

    /// A kernel plugin linked into this process instead of loaded from a library (tests, an
    /// embedder's own kernels): `root` as `plugin_api::kernel::root_module::<K>()` makes it.
    /// Its `info()` and `score(cpu)` are asked as for a loaded one; it takes the name its
    /// `info()` gives.
    pub fn in_process(root: KernelPluginRef, cpu: &CpuInfo) -> Result<Kernels, PluginCallError> {
        const WHERE: &str = "(in process)";
        let mut k = Kernels::init(root, WHERE, Path::new(WHERE), cpu)?;
        k.name = k.info.name.to_string();
        Ok(k)
    }

    fn error(&self, op: &'static str, message: &str) -> PluginCallError {
        PluginCallError::new(&self.name, op, message)
    }

    /// The plugin's name, as its manifest says it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the plugin said about itself at load.
    pub fn info(&self) -> &KernelInfo {
        &self.info
    }

    /// Its score on the host's CPU at load; 0 means it cannot run here.
    pub fn score(&self) -> u32 {
        self.score
    }

    /// The library file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw op table, for handing to an architecture plugin's `forward`.
    pub fn root(&self) -> KernelPluginRef {
        self.root
    }

    // Each op takes the host's pool as any `ThreadPool` (the host's own pool, `InlinePool`, or
    // a `PoolRef`) and wraps it in a `PoolRef` borrowed for just this call: `PoolRef<'a>` is
    // invariant in `'a`, and the op table ties the pool's lifetime to the arguments'.
    ops! {
        /// `output = weight · input` for a batch of rows.
        matmul: MatmulArgs;
        attention: AttentionArgs;
        rms_norm: RmsNormArgs;
        rope: RopeArgs;
        softmax: SoftmaxArgs;
        unary: UnaryArgs;
        binary: BinaryArgs;
        glu: GluArgs;
        dequantize: DequantizeArgs;
        quantize: QuantizeArgs;
    }

    /// Lets the plugin repack a weight once at load; `None` keeps it as it is.
    pub fn prepare_weight(
        &self,
        weight: WeightRef<'_>,
    ) -> Result<Option<PreparedWeight>, PluginCallError> {
        let f = self.root.prepare_weight();
        f(weight)
            .into_result()
            .map(|w| w.into_option())
            .map_err(|e| self.error("prepare_weight", &e))
    }
}
