//! A loaded model ready to run: the GGUF file's tensors (zero-copy over the mmap), the
//! architecture plugin's model, the chosen kernel plugin, and the host's KV cache. One
//! [`Engine::forward`] is one step over a batch of tokens that may span several sequences.

use crate::gguf::GgufFile;
use crate::kv_cache::KvCache;
use crate::plugins::{Kernels, PluginRegistry};
use crate::pool::ThreadPool;
use crate::pool_bridge::PoolBridge;
use abi_stable::std_types::{RSlice, RSliceMut};
use anyhow::{bail, Context};
use plugin_api::{Batch, ForwardArgs, GgmlType, ModelBox, ModelInfo, TensorRef};

/// Default context when neither the user nor the model says otherwise.
pub const DEFAULT_CTX: usize = 4096;

/// How to set up a model.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Tokens of context per sequence; `None`: the model's training context, at most
    /// [`DEFAULT_CTX`].
    pub n_ctx: Option<usize>,
    /// Element type of the KV cache: F16 (default, as llama.cpp) or F32.
    pub kv_type: GgmlType,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            n_ctx: None,
            kv_type: GgmlType::F16,
        }
    }
}

pub struct Engine<'f> {
    tensors: Vec<TensorRef<'f>>,
    model: ModelBox,
    info: ModelInfo,
    kernels: Kernels,
    arch_plugin: String,
    kv: KvCache,
    n_ctx: usize,
}

/// One step's tokens: token `i` is `tokens[i]` at `positions[i]` of sequence `seq_ids[i]`.
pub struct Step<'a> {
    pub tokens: &'a [u32],
    pub positions: &'a [i32],
    pub seq_ids: &'a [u32],
    pub want_logits: &'a [bool],
}

impl<'f> Engine<'f> {
    /// Hands the file's metadata and tensors to the architecture plugin that handles its
    /// `general.architecture`, and sizes the KV cache.
    pub fn load(
        file: &'f GgufFile,
        registry: &PluginRegistry,
        kernels: Kernels,
        options: &EngineOptions,
    ) -> anyhow::Result<Engine<'f>> {
        let architecture = file.architecture()?;
        let plugin = registry.arch_for(architecture)?;
        let tensors: Vec<TensorRef<'f>> =
            file.tensors().iter().map(|t| file.tensor_ref(t)).collect();
        let model = plugin
            .load(architecture, file.metadata(), &tensors)
            .with_context(|| format!("loading {}", file.name()))?;
        let info = model.info();
        let n_ctx = match options.n_ctx {
            Some(0) => bail!("the context size must be at least 1 token"),
            Some(n) => n,
            None => (info.n_ctx_train as usize).clamp(1, DEFAULT_CTX),
        };
        let kv = KvCache::new(info.kv, n_ctx, options.kv_type, info.kv.head_dim as usize)
            .with_context(|| format!("allocating the KV cache for {n_ctx} tokens"))?;
        Ok(Engine {
            tensors,
            model,
            info,
            kernels,
            arch_plugin: plugin.name().to_string(),
            kv,
            n_ctx,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn n_vocab(&self) -> usize {
        self.info.n_vocab as usize
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    pub fn arch_plugin(&self) -> &str {
        &self.arch_plugin
    }

    pub fn kv_cache(&mut self) -> &mut KvCache {
        &mut self.kv
    }

    /// Runs one step; `logits` receives `n_vocab` floats for each token with `want_logits`,
    /// in batch order.
    pub fn forward(
        &mut self,
        pool: &ThreadPool,
        step: &Step<'_>,
        logits: &mut [f32],
    ) -> anyhow::Result<()> {
        if let Some(&p) = step
            .positions
            .iter()
            .find(|&&p| p < 0 || p as usize >= self.n_ctx)
        {
            bail!(
                "position {p} is outside the context of {} tokens: raise -c/--ctx-size",
                self.n_ctx
            );
        }
        let bridge = PoolBridge::new(pool);
        let args = ForwardArgs {
            tensors: RSlice::from_slice(&self.tensors),
            batch: Batch {
                tokens: RSlice::from_slice(step.tokens),
                positions: RSlice::from_slice(step.positions),
                seq_ids: RSlice::from_slice(step.seq_ids),
                want_logits: RSlice::from_slice(step.want_logits),
            },
            kv: self.kv.as_abi(),
            kernels: self.kernels.root(),
            pool: bridge.as_pool_ref(),
            logits: RSliceMut::from_mut_slice(logits),
        };
        self.model
            .forward(args)
            .into_result()
            .map_err(|e| anyhow::anyhow!("plugin '{}' failed in forward: {e}", self.arch_plugin))
    }
}
