//! Architecture plugins: one shared library per model family (Llama, Qwen2, Gemma, ...), each
//! describing the family's forward pass in terms of kernel ops. The host owns the model file
//! (mmap), the KV cache, the thread pool and the kernels; the plugin owns only its
//! hyper-parameters, which tensors it reads, and its scratch buffers.

use crate::{guard::guard, kernel::KvRef, pool::PoolRef, GgmlType, KernelPluginRef};
use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_trait::prelude::TD_Opaque,
    sabi_types::VersionStrings,
    sabi_types::{RMut, RRef},
    std_types::{RBox, ROption, RResult, RSlice, RSliceMut, RStr, RString, RVec},
    StableAbi,
};

/// What an architecture plugin says about itself.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ArchInfo {
    /// e.g. "llmhost-llama"
    pub name: RString,
    pub version: RString,
    /// The `general.architecture` values it handles, e.g. ["gemma", "gemma2", "gemma3"].
    pub architectures: RVec<RString>,
}

/// The GGUF metadata of a model, as the host parsed it. Integer getters accept any GGUF
/// integer type that fits; float getters accept floats and integers.
#[sabi_trait]
pub trait Metadata {
    fn get_u64(&self, key: RStr<'_>) -> ROption<u64>;
    fn get_i64(&self, key: RStr<'_>) -> ROption<i64>;
    fn get_f64(&self, key: RStr<'_>) -> ROption<f64>;
    fn get_bool(&self, key: RStr<'_>) -> ROption<bool>;
    fn get_str(&self, key: RStr<'_>) -> ROption<RString>;
    /// A numeric array (e.g. per-layer head counts), as i64.
    fn get_i64_array(&self, key: RStr<'_>) -> ROption<RVec<i64>>;
    #[sabi(last_prefix_field)]
    fn get_f64_array(&self, key: RStr<'_>) -> ROption<RVec<f64>>;
}

pub type MetadataRef<'a> = Metadata_TO<'a, RRef<'a, ()>>;

/// One tensor of the model file, zero-copy over the host's mmap (or a buffer the kernel
/// plugin repacked, then `layout != 0`).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    pub name: RStr<'a>,
    pub dtype: GgmlType,
    pub layout: u32,
    /// GGML order: `dims[0]` is the length of a row (contiguous), unused dims are 1.
    pub dims: [u64; 4],
    pub n_dims: u32,
    pub data: RSlice<'a, u8>,
}

/// The tokens of one forward step. Tokens may belong to several sequences: token `i` is
/// `tokens[i]` at position `positions[i]` of sequence `seq_ids[i]`. Within one sequence,
/// tokens come in increasing position order.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub tokens: RSlice<'a, u32>,
    pub positions: RSlice<'a, i32>,
    pub seq_ids: RSlice<'a, u32>,
    /// Whether to compute the logits of token `i`.
    pub want_logits: RSlice<'a, bool>,
}

/// The KV storage a model needs per token and layer.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    pub n_layer: u32,
    /// Floats per token and layer in K (n_head_kv · head_dim), and in V.
    pub k_dim: u32,
    pub v_dim: u32,
    /// Floats per head (K and V heads alike): the cache's head stride.
    pub head_dim: u32,
}

/// Keys and values of positions `0..len` of one sequence in one layer.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct KvView<'a> {
    pub k: KvRef<'a>,
    pub v: KvRef<'a>,
    pub len: usize,
}

/// The host's KV cache, as a model sees it during `forward`.
#[sabi_trait]
pub trait KvCache {
    /// Element type of the stored keys and values (F16 by default, or F32).
    fn dtype(&self) -> GgmlType;
    /// Stores the K and V rows of the token at `pos` of sequence `seq` in `layer`.
    fn store(
        &mut self,
        layer: u32,
        seq: u32,
        pos: u32,
        k: RSlice<'_, f32>,
        v: RSlice<'_, f32>,
    ) -> RResult<(), RString>;
    /// Positions `0..len` of sequence `seq` in `layer`, all stored before.
    #[sabi(last_prefix_field)]
    fn view(&self, layer: u32, seq: u32, len: u32) -> RResult<KvView<'_>, RString>;
}

pub type KvCacheMut<'a> = KvCache_TO<'a, RMut<'a, ()>>;

/// Hyper-parameters the host needs to drive a loaded model.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub architecture: RString,
    pub n_vocab: u32,
    pub n_ctx_train: u32,
    pub kv: KvShape,
}

/// Everything one forward step gets. Logits of the tokens with `want_logits` are written to
/// `logits`, `n_vocab` floats each, in batch order.
#[repr(C)]
#[derive(StableAbi)]
pub struct ForwardArgs<'a> {
    pub tensors: RSlice<'a, TensorRef<'a>>,
    pub batch: Batch<'a>,
    pub kv: KvCacheMut<'a>,
    pub kernels: KernelPluginRef,
    pub pool: PoolRef<'a>,
    pub logits: RSliceMut<'a, f32>,
}

/// A loaded model, as the host holds it.
#[sabi_trait]
pub trait Model: Send {
    fn info(&self) -> ModelInfo;
    #[sabi(last_prefix_field)]
    fn forward(&mut self, args: ForwardArgs<'_>) -> RResult<(), RString>;
}

pub type ModelBox = Model_TO<'static, RBox<()>>;

/// What `load` gets: the architecture name, the metadata, and the tensor table. The model
/// keeps tensor *indices* (or names), never the references: the same table comes back with
/// every `forward`, so the host stays the owner of the mapped file.
#[repr(C)]
#[derive(StableAbi)]
pub struct LoadArgs<'a> {
    pub architecture: RStr<'a>,
    pub metadata: MetadataRef<'a>,
    pub tensors: RSlice<'a, TensorRef<'a>>,
}

/// The root module of an architecture plugin.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = ArchPluginRef)))]
#[sabi(missing_field(panic))]
pub struct ArchPlugin {
    pub info: extern "C" fn() -> RResult<ArchInfo, RString>,
    #[sabi(last_prefix_field)]
    pub load: for<'a> extern "C" fn(LoadArgs<'a>) -> RResult<ModelBox, RString>,
}

impl RootModule for ArchPluginRef {
    declare_root_module_statics! {ArchPluginRef}
    const BASE_NAME: &'static str = "llmhost_arch";
    const NAME: &'static str = "llmhost architecture plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// A model in plain Rust; the export wraps it so that panics become errors.
pub trait ArchModel: Send + 'static {
    fn info(&self) -> ModelInfo;
    fn forward(&mut self, args: ForwardArgs<'_>) -> Result<(), String>;
}

/// What an architecture plugin implements, in plain Rust.
pub trait ArchImpl: 'static {
    type Model: ArchModel;
    fn info() -> ArchInfo;
    fn load(args: LoadArgs<'_>) -> Result<Self::Model, String>;
}

/// Runs every call into a plugin's model inside the panic guard. A model whose method
/// panicked is poisoned: its scratch state may be half-written, so later calls fail cleanly.
struct GuardedModel<M> {
    model: M,
    poisoned: bool,
}

impl<M: ArchModel> Model for GuardedModel<M> {
    fn info(&self) -> ModelInfo {
        self.model.info()
    }

    fn forward(&mut self, args: ForwardArgs<'_>) -> RResult<(), RString> {
        if self.poisoned {
            return RResult::RErr("forward: model is unusable after an earlier panic".into());
        }
        let result = guard("forward", || self.model.forward(args));
        if let RResult::RErr(e) = &result {
            if e.contains("plugin panicked") {
                self.poisoned = true;
            }
        }
        result
    }
}

extern "C" fn info_shim<A: ArchImpl>() -> RResult<ArchInfo, RString> {
    guard("info", || Ok(A::info()))
}

extern "C" fn load_shim<A: ArchImpl>(args: LoadArgs<'_>) -> RResult<ModelBox, RString> {
    guard("load", || {
        let model = A::load(args)?;
        Ok(Model_TO::from_value(
            GuardedModel {
                model,
                poisoned: false,
            },
            TD_Opaque,
        ))
    })
}

/// Builds the root module of architecture plugin `A`.
pub fn root_module<A: ArchImpl>() -> ArchPluginRef {
    use abi_stable::prefix_type::PrefixTypeTrait;
    ArchPlugin {
        info: info_shim::<A>,
        load: load_shim::<A>,
    }
    .leak_into_prefix()
}
