//! A loaded model ready to run: the GGUF file's tensors (zero-copy over the mmap), the
//! architecture plugin's model, the chosen kernel plugin, and the host's KV cache. One
//! [`Engine::forward`] is one step over a batch of tokens that may span several sequences.

use crate::gguf::GgufFile;
use crate::kv_cache::{KvCache, DEFAULT_BLOCK_TOKENS};
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
    /// Tokens the KV cache's block pool holds over all sequences (rounded up to whole
    /// blocks); `None`: room for `kv_sequences` full contexts.
    pub kv_tokens: Option<usize>,
    /// How many full contexts the pool holds when `kv_tokens` is `None` (at least 1).
    pub kv_sequences: usize,
    /// Tokens per KV cache block.
    pub kv_block_tokens: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            n_ctx: None,
            kv_type: GgmlType::F16,
            kv_tokens: None,
            kv_sequences: 1,
            kv_block_tokens: DEFAULT_BLOCK_TOKENS,
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
        let kv_tokens = match options.kv_tokens {
            Some(0) => bail!("the KV cache must hold at least 1 token"),
            Some(n) => n,
            None => n_ctx
                .checked_mul(options.kv_sequences.max(1))
                .with_context(|| format!("{} sequences of {n_ctx} tokens", options.kv_sequences))?,
        };
        if options.kv_block_tokens == 0 {
            bail!("KV cache blocks must hold at least 1 token");
        }
        let kv = KvCache::paged(
            info.kv,
            n_ctx,
            options.kv_type,
            info.kv.head_dim as usize,
            options.kv_block_tokens,
            kv_tokens.div_ceil(options.kv_block_tokens),
        )
        .with_context(|| {
            format!("allocating the KV cache for {kv_tokens} tokens ({n_ctx} per sequence)")
        })?;
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
