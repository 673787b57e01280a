//! # plugin-api: the stable ABI of llmhost
//!
//! Both the host and every plugin depend on this crate; it holds types and function tables,
//! no inference logic. Two kinds of plugin exist, each a shared library exporting one
//! `abi_stable` root module plus an embedded [manifest]:
//!
//! - **kernel plugins** ([`KernelPlugin`]): quantized matmul, attention and the small ops for
//!   one instruction set; the host picks the best-scoring one that can run on its CPU;
//! - **architecture plugins** ([`ArchPlugin`]): the forward pass of a model family.
//!
//! Ownership: everything that crosses is borrowed for the duration of the call, except
//! values a plugin returns (`RString`, `RVec`, [`ModelBox`], [`PreparedWeight`]), which the
//! host owns afterwards. Panics never cross: every exported function runs inside
//! [`guard::guard`]. Compatibility is checked twice: the manifest's `plugin_api` version before
//! the library is opened, and abi_stable's layout check when its root module is initialised.

// abi_stable_derive 0.11's #[sabi_trait] expands to impls inside a const block, which newer
// rustc lints as non-local; the expansion is the library's, not ours.
#![allow(non_local_definitions)]

pub mod arch;
pub mod cpu;
pub mod ggml_type;
pub mod guard;
pub mod kernel;
pub mod manifest;
pub mod pool;

pub use abi_stable;
pub use arch::{
    ArchImpl, ArchInfo, ArchModel, ArchPlugin, ArchPluginRef, Batch, ForwardArgs, KvCache,
    KvCacheMut, KvShape, KvView, LoadArgs, Metadata, MetadataRef, Model, ModelBox, ModelInfo,
    TensorRef,
};
pub use cpu::{CpuFeatures, CpuInfo, Isa};
pub use ggml_type::{GgmlType, QK_K};
pub use kernel::{
    AttentionArgs, BinaryArgs, BinaryOp, DequantizeArgs, FusedMatmulArgs, GluArgs, GluKind,
    KernelImpl, KernelInfo, KernelPlugin, KernelPluginRef, KvRef, MatmulArgs, MatmulTarget,
    OpResult, PreparedWeight, QuantizeArgs, RmsNormArgs, RopeArgs, RopeMode, SoftmaxArgs,
    UnaryArgs, UnaryOp, WeightRef,
};
pub use pool::{parallel_for, InlinePool, PoolRef, SpawningPool, TaskBody, ThreadPool};

/// The version of this crate: a plugin built against a different minor (0.x) or major version
/// is refused with a message naming both.
pub const PLUGIN_API_VERSION: &str = env!("CARGO_PKG_VERSION");
