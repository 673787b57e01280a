//! A loaded model ready to run: the GGUF file's tensors (zero-copy over the mmap, or repacked
//! once at load into the kernel plugin's preferred layout), the architecture plugin's model,
//! the chosen kernel plugin, and the host's KV cache. One [`Engine::forward`] is one step over
//! a batch of tokens that may span several sequences.

use crate::gguf::GgufFile;
use crate::kv_cache::{KvCache, DEFAULT_BLOCK_TOKENS};
use crate::plugins::{Kernels, PluginRegistry};
use crate::pool::ThreadPool;
use crate::pool_bridge::PoolBridge;
use abi_stable::std_types::{RSlice, RSliceMut};
use anyhow::{bail, Context};
use plugin_api::{
    Batch, ForwardArgs, GgmlType, ModelBox, ModelInfo, PreparedWeight, TensorRef, WeightRef,
};
use std::time::Instant;

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
    /// Let the kernel plugin repack weight matrices at load into its preferred layout
    /// (`prepare_weight`); the file pages of the repacked tensors are then released. Off:
    /// every weight stays zero-copy in the mmap.
    pub repack: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            n_ctx: None,
            kv_type: GgmlType::F16,
            kv_tokens: None,
            kv_sequences: 1,
            kv_block_tokens: DEFAULT_BLOCK_TOKENS,
            repack: true,
        }
    }
}

/// The one 2-D tensor never offered for repacking: see [`repack_weights`].
const EMBEDDING_TENSOR: &str = "token_embd.weight";

/// What [`Engine::load`] repacked for the kernel plugin.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepackStats {
    /// Whether repacking was on ([`EngineOptions::repack`]).
    pub enabled: bool,
    /// Tensors the kernel plugin repacked (0 when it kept every one as it is).
    pub repacked: usize,
    /// Tensors in the model file.
    pub total_tensors: usize,
    /// Bytes of the repacked buffers the engine holds.
    pub bytes: u64,
    /// Bytes of file pages released after repacking (whole pages only, so at most about
    /// `bytes`; 0 where the file is not mapped or the system cannot release pages).
    pub released_bytes: u64,
    /// Seconds spent repacking and releasing pages.
    pub seconds: f64,
}

pub struct Engine<'f> {
    /// Every tensor of the file in GGUF's layout, zero-copy over the mapping.
    tensors: Vec<TensorRef<'f>>,
    /// Indexed like `tensors`: the kernel plugin's repacked copy, where it made one.
    prepared: Vec<Option<PreparedWeight>>,
    repack: RepackStats,
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
    /// Hands the file's metadata and tensors (GGUF's layout) to the architecture plugin that
    /// handles its `general.architecture`, lets the kernel plugin repack the weight matrices
    /// (when `options.repack`), and sizes the KV cache.
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
        let (prepared, repack) = if options.repack {
            repack_weights(file, &kernels)?
        } else {
            tracing::debug!("weight repacking is off: every weight stays zero-copy in the mmap");
            (
                std::iter::repeat_with(|| None)
                    .take(tensors.len())
                    .collect(),
                RepackStats {
                    total_tensors: tensors.len(),
                    ..RepackStats::default()
                },
            )
        };
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
            prepared,
            repack,
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

    /// What the kernel plugin repacked at load, how big it is and how long it took.
    pub fn repack_stats(&self) -> &RepackStats {
        &self.repack
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
        // The tensor table with the repacked buffers in place of their file bytes: a few
        // hundred small copies per step, only when something was repacked.
        let patched: Vec<TensorRef<'_>>;
        let tensors: &[TensorRef<'_>] = if self.repack.repacked == 0 {
            &self.tensors
        } else {
            patched = self
                .tensors
                .iter()
                .zip(&self.prepared)
                .map(|(&t, p)| match p {
                    Some(p) => TensorRef {
                        layout: p.layout,
                        data: RSlice::from_slice(&p.data),
                        ..t
                    },
                    None => t,
                })
                .collect();
            &patched
        };
        let bridge = PoolBridge::new(pool);
        let args = ForwardArgs {
            tensors: RSlice::from_slice(tensors),
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

/// Offers every weight matrix of `file` to the kernel plugin's `prepare_weight`, keeps what it
/// repacked, and releases the file pages of each repacked tensor as soon as its copy exists
/// (its mapped bytes are no longer read): the resident size stays about that of the file, at
/// its peak too. The tensors are independent, so every core repacks.
fn repack_weights(
    file: &GgufFile,
    kernels: &Kernels,
) -> anyhow::Result<(Vec<Option<PreparedWeight>>, RepackStats)> {
    let t0 = Instant::now();
    let tensors = file.tensors();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(tensors.len())
        .max(1);
    let mut results: Vec<(usize, anyhow::Result<Option<PreparedWeight>>, u64)> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(t) = tensors.get(i) else { break };
                            let p = prepare_tensor(file, kernels, t);
                            let mut released = 0;
                            if let Ok(Some(_)) = &p {
                                match file.release_tensor_pages(t) {
                                    Ok(n) => released = n,
                                    Err(e) => tracing::debug!(
                                        "releasing the file pages of tensor '{}': {e}",
                                        t.name
                                    ),
                                }
                            }
                            done.push((i, p, released));
                        }
                        done
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("a repacking thread panicked"))
                .collect()
        });
    results.sort_by_key(|(i, _, _)| *i);
    let mut stats = RepackStats {
        enabled: true,
        total_tensors: tensors.len(),
        ..RepackStats::default()
    };
    let mut prepared = Vec::with_capacity(tensors.len());
    for (_, p, released) in results {
        let p = p?;
        if let Some(p) = &p {
            stats.repacked += 1;
            stats.bytes += p.data.len() as u64;
            stats.released_bytes += released;
        }
        prepared.push(p);
    }
    stats.seconds = t0.elapsed().as_secs_f64();
    if stats.repacked == 0 {
        tracing::debug!(
            "kernel plugin {} repacked none of the {} tensors: every weight stays zero-copy in the mmap",
            kernels.name(),
            stats.total_tensors
        );
    } else {
        tracing::info!(
            "repacked {} of {} tensors for {} in {:.2} s ({}{})",
            stats.repacked,
            stats.total_tensors,
            kernels.name(),
            stats.seconds,
            mib(stats.bytes),
            if stats.released_bytes > 0 {
                ", their file pages released"
            } else {
                ""
            }
        );
    }
    Ok((prepared, stats))
}

/// The kernel plugin's repacked copy of tensor `t`, if it makes one.
fn prepare_tensor(
    file: &GgufFile,
    kernels: &Kernels,
    t: &crate::gguf::TensorInfo,
) -> anyhow::Result<Option<PreparedWeight>> {
    // Only matrices go through matmul. The embedding table does not: the architecture plugins
    // read its rows one token at a time through `dequantize`, which needs GGUF's layout. (It
    // also serves as the output matrix of models with tied embeddings; that matmul then takes
    // it in GGUF's layout, which every kernel accepts.)
    if t.dims.len() != 2 || t.name == EMBEDDING_TENSOR {
        return Ok(None);
    }
    let (rows, cols) = (t.dims[1] as usize, t.dims[0] as usize);
    let weight = WeightRef {
        dtype: t.dtype,
        layout: 0,
        rows,
        cols,
        data: RSlice::from_slice(file.tensor_data(t)),
    };
    let p = kernels.prepare_weight(weight).with_context(|| {
        format!(
            "repacking tensor '{}' ({} {rows}x{cols}) of {} (--no-repack skips repacking)",
            t.name,
            t.dtype.name(),
            file.name()
        )
    })?;
    if p.as_ref().is_some_and(|p| p.layout == 0) {
        bail!(
            "kernel plugin '{}' repacked tensor '{}' into layout 0, which means GGUF's own: a bug in the plugin (--no-repack skips repacking)",
            kernels.name(),
            t.name
        );
    }
    Ok(p)
}

/// `652 MiB`, `3.4 MiB`.
fn mib(bytes: u64) -> String {
    let m = bytes as f64 / (1024.0 * 1024.0);
    if m >= 10.0 {
        format!("{m:.0} MiB")
    } else {
        format!("{m:.1} MiB")
    }
}
