//! Weight repacking at load (`EngineOptions::repack`, the kernel plugins' `prepare_weight`) on
//! a tiny synthetic Llama model with Q4_K matrices (one Q6_K, an output matrix of 100 rows,
//! which is no multiple of 8), written to a file and mapped as a real model is.
//!
//! - Every kernel plugin this build made that runs here: the logits with repacking on and off
//!   agree (relative to the largest logit, within [`TOLERANCE`]); a plugin that repacked
//!   nothing reports 0 tensors. The stats are printed (`--nocapture`).
//! - An in-process plugin that "repacks" Q4_K by reversing the order of the rows (so reading
//!   the repacked bytes as GGUF's layout, or the file's bytes as the repacked layout, gives
//!   other numbers): the host offers it every matrix but `token_embd.weight`, keeps what it
//!   returns, hands it back in `forward` with its layout, and releases the file pages.
//! - A plugin whose `prepare_weight` fails stops the load with a line naming the tensor and
//!   the plugin.

use llmhost::engine::{Engine, EngineOptions, RepackStats, Step};
use llmhost::gguf::writer::GgufWriter;
use llmhost::gguf::{GgufFile, Value};
use llmhost::plugins::{Kernels, PluginRegistry, PluginSources};
use llmhost::pool::ThreadPool;
use llmhost_tests::models::plugin_dir;
use plugin_api::abi_stable::std_types::{RSlice, RVec};
use plugin_api::{
    AttentionArgs, BinaryArgs, CpuFeatures, CpuInfo, DequantizeArgs, GgmlType, GluArgs, Isa,
    KernelImpl, KernelInfo, MatmulArgs, PoolRef, PreparedWeight, QuantizeArgs, RmsNormArgs,
    RopeArgs, SoftmaxArgs, UnaryArgs, WeightRef,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

const N_EMBD: usize = 256;
const N_HEAD: usize = 4;
const N_HEAD_KV: usize = 2;
const HEAD_DIM: usize = N_EMBD / N_HEAD;
const N_FF: usize = 512;
const N_LAYER: usize = 2;
const N_VOCAB: usize = 100;

/// Largest |repacked − not repacked| over the largest |logit| of a step.
const TOLERANCE: f32 = 1e-3;

/// Tokens of the prompt step; one decode step follows.
const PROMPT: [u32; 8] = [1, 5, 7, 42, 3, 99, 17, 8];
const NEXT: u32 = 64;

/// xorshift64: a fixed model for every run.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// `rows` × `cols` uniform weights in ±`scale`, quantized to `dtype` row by row.
fn matrix(rng: &mut Rng, dtype: GgmlType, cols: usize, rows: usize, scale: f32) -> Vec<u8> {
    let row_bytes = dtype.row_bytes(cols).expect("whole blocks");
    let mut out = vec![0u8; rows * row_bytes];
    for row in out.chunks_exact_mut(row_bytes) {
        let values: Vec<f32> = (0..cols).map(|_| rng.uniform() * scale).collect();
        kernels_reference::quants::quantize_row(dtype, &values, row).expect("quantize");
    }
    out
}

fn norm(rng: &mut Rng) -> Vec<u8> {
    (0..N_EMBD)
        .flat_map(|_| (1.0 + 0.1 * rng.uniform()).to_le_bytes())
        .collect()
}

/// The model: every matrix Q4_K (the embeddings too) but `blk.1.ffn_down` (Q6_K).
fn write_model(path: &Path) {
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let u32v = |n: usize| Value::U32(n as u32);
    let q4 = GgmlType::Q4_K;
    let (e, kv) = (N_EMBD as u64, (N_HEAD_KV * HEAD_DIM) as u64);
    let mut w = GgufWriter::new(3)
        .kv("general.architecture", Value::String("llama".into()))
        .kv("llama.embedding_length", u32v(N_EMBD))
        .kv("llama.block_count", u32v(N_LAYER))
        .kv("llama.feed_forward_length", u32v(N_FF))
        .kv("llama.attention.head_count", u32v(N_HEAD))
        .kv("llama.attention.head_count_kv", u32v(N_HEAD_KV))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv("llama.context_length", u32v(128))
        .tensor(
            "token_embd.weight",
            q4,
            &[e, N_VOCAB as u64],
            matrix(&mut rng, q4, N_EMBD, N_VOCAB, 1.0),
        )
        .tensor("output_norm.weight", GgmlType::F32, &[e], norm(&mut rng))
        .tensor(
            "output.weight",
            q4,
            &[e, N_VOCAB as u64],
            matrix(&mut rng, q4, N_EMBD, N_VOCAB, 0.2),
        );
    for i in 0..N_LAYER {
        let down = if i == 1 { GgmlType::Q6_K } else { q4 };
        let s = 1.0 / (N_EMBD as f32).sqrt();
        w = w
            .tensor(
                &format!("blk.{i}.attn_norm.weight"),
                GgmlType::F32,
                &[e],
                norm(&mut rng),
            )
            .tensor(
                &format!("blk.{i}.attn_q.weight"),
                q4,
                &[e, e],
                matrix(&mut rng, q4, N_EMBD, N_EMBD, 4.0 * s),
            )
            .tensor(
                &format!("blk.{i}.attn_k.weight"),
                q4,
                &[e, kv],
                matrix(&mut rng, q4, N_EMBD, kv as usize, 4.0 * s),
            )
            .tensor(
                &format!("blk.{i}.attn_v.weight"),
                q4,
                &[e, kv],
                matrix(&mut rng, q4, N_EMBD, kv as usize, s),
            )
            .tensor(
                &format!("blk.{i}.attn_output.weight"),
                q4,
                &[e, e],
                matrix(&mut rng, q4, N_EMBD, N_EMBD, s),
            )
            .tensor(
                &format!("blk.{i}.ffn_norm.weight"),
                GgmlType::F32,
                &[e],
                norm(&mut rng),
            )
            .tensor(
                &format!("blk.{i}.ffn_gate.weight"),
                q4,
                &[e, N_FF as u64],
                matrix(&mut rng, q4, N_EMBD, N_FF, s),
            )
            .tensor(
                &format!("blk.{i}.ffn_up.weight"),
                q4,
                &[e, N_FF as u64],
                matrix(&mut rng, q4, N_EMBD, N_FF, s),
            )
            .tensor(
                &format!("blk.{i}.ffn_down.weight"),
                down,
                &[N_FF as u64, e],
                matrix(&mut rng, down, N_FF, N_EMBD, 1.0 / (N_FF as f32).sqrt()),
            );
    }
    w.write(path).expect("write the model");
}

/// The model file, written once per test process (to a temporary name, then renamed: the
/// bytes are always the same, and a process that has the file mapped keeps its copy).
fn model() -> &'static Path {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = llmhost_tests::fixtures::target_dir().join("tmp");
        std::fs::create_dir_all(&dir).expect("create the target's tmp directory");
        let path = dir.join("repack-tiny-llama.gguf");
        let tmp = dir.join(format!("repack-tiny-llama.gguf.{}", std::process::id()));
        write_model(&tmp);
        std::fs::rename(&tmp, &path).expect("rename the model into place");
        path
    })
}

struct Stack {
    file: GgufFile,
    registry: PluginRegistry,
    pool: ThreadPool,
}

fn stack() -> Stack {
    let file = GgufFile::open(model()).unwrap_or_else(|e| panic!("{e}"));
    let cpu = llmhost::cpu::detect();
    let registry = PluginRegistry::discover(&cpu, &PluginSources::only([plugin_dir()]));
    Stack {
        file,
        registry,
        pool: ThreadPool::new(2, None).expect("thread pool"),
    }
}

fn load<'f>(s: &'f Stack, kernels: &Kernels, repack: bool) -> Result<Engine<'f>, String> {
    Engine::load(
        &s.file,
        &s.registry,
        kernels.clone(),
        &EngineOptions {
            n_ctx: Some(32),
            repack,
            ..EngineOptions::default()
        },
    )
    .map_err(|e| format!("{e:#}"))
}

/// The logits of the prompt (every position) and of one decode step after it.
fn logits(engine: &mut Engine<'_>, pool: &ThreadPool) -> Vec<f32> {
    let n_vocab = engine.n_vocab();
    let n = PROMPT.len();
    let mut out = vec![0f32; (n + 1) * n_vocab];
    let positions: Vec<i32> = (0..n as i32).collect();
    let (prompt, next) = out.split_at_mut(n * n_vocab);
    engine
        .forward(
            pool,
            &Step {
                tokens: &PROMPT,
                positions: &positions,
                seq_ids: &[0; PROMPT.len()],
                want_logits: &[true; PROMPT.len()],
            },
            prompt,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    engine
        .forward(
            pool,
            &Step {
                tokens: &[NEXT],
                positions: &[n as i32],
                seq_ids: &[0],
                want_logits: &[true],
            },
            next,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    out
}

/// Per step row, the largest |a − b| over the largest |b|; the worst row.
fn relative_deviation(a: &[f32], b: &[f32]) -> f32 {
    a.chunks(N_VOCAB)
        .zip(b.chunks(N_VOCAB))
        .map(|(ra, rb)| {
            let scale = rb.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
            let dev = ra
                .iter()
                .zip(rb)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            dev / scale
        })
        .fold(0f32, f32::max)
}

/// Loads the model with repacking on and off on `kernels`, checks the logits agree within
/// `tolerance`, and returns the stats of the repacked load.
fn compare(s: &Stack, kernels: &Kernels, tolerance: f32) -> RepackStats {
    let mut plain = load(s, kernels, false).unwrap_or_else(|e| panic!("{e}"));
    let off = plain.repack_stats().clone();
    assert!(
        !off.enabled && off.repacked == 0 && off.bytes == 0,
        "{off:?}"
    );
    let want = logits(&mut plain, &s.pool);
    drop(plain);
    let mut repacked = load(s, kernels, true).unwrap_or_else(|e| panic!("{e}"));
    let stats = repacked.repack_stats().clone();
    let got = logits(&mut repacked, &s.pool);
    assert!(
        want.iter().all(|x| x.is_finite()),
        "{}: logits not finite",
        kernels.name()
    );
    let dev = relative_deviation(&got, &want);
    println!(
        "{}: repacked {} of {} tensors ({} bytes, {} bytes of file pages released) in {:.4} s; logits deviate by {dev:.2e} of the largest",
        kernels.name(),
        stats.repacked,
        stats.total_tensors,
        stats.bytes,
        stats.released_bytes,
        stats.seconds
    );
    assert!(stats.enabled, "{stats:?}");
    assert_eq!(stats.total_tensors, s.file.tensors().len());
    assert!(
        dev <= tolerance,
        "{}: logits with and without repacking differ by {dev:e} of the largest (tolerance {tolerance:e})",
        kernels.name()
    );
    if stats.repacked == 0 {
        assert_eq!((stats.bytes, stats.released_bytes), (0, 0), "{stats:?}");
    } else {
        assert!(stats.bytes > 0, "{stats:?}");
    }
    stats
}

#[test]
fn every_kernel_plugin_gives_the_same_logits_with_and_without_repacking() {
    let s = stack();
    let usable: Vec<&Kernels> = s
        .registry
        .kernels()
        .iter()
        .filter(|k| k.score() > 0)
        .collect();
    assert!(!usable.is_empty(), "no kernel plugin runs here");
    for k in usable {
        let stats = compare(&s, k, TOLERANCE);
        if k.name() == "kernels-scalar" {
            // The reference kernels keep every weight as GGUF has it.
            assert_eq!(stats.repacked, 0, "{stats:?}");
        }
    }
}

/// Q4_K rows in reverse order: a layout no kernel would read right by accident.
const REVERSED_ROWS: u32 = 0x7E57;

/// Matmuls [`RowReversing`] ran on a weight in [`REVERSED_ROWS`].
static REVERSED_MATMULS: AtomicUsize = AtomicUsize::new(0);

fn reverse_rows(w: &WeightRef<'_>) -> Result<Vec<u8>, String> {
    let row_bytes = w.dtype.row_bytes(w.cols).ok_or("not whole blocks")?;
    let data = w.data.as_slice();
    if data.len() != w.rows * row_bytes {
        return Err(format!("{} bytes for {} rows", data.len(), w.rows));
    }
    Ok(data
        .chunks_exact(row_bytes)
        .rev()
        .flatten()
        .copied()
        .collect())
}

/// The reference kernels, plus a `prepare_weight` that reverses the rows of every Q4_K matrix
/// (`FAIL`: fails instead).
struct RowReversing<const FAIL: bool>;

impl<const FAIL: bool> KernelImpl for RowReversing<FAIL> {
    fn info() -> KernelInfo {
        KernelInfo {
            name: if FAIL {
                "test-failing"
            } else {
                "test-row-reversing"
            }
            .into(),
            isa: Isa::current(),
            required: CpuFeatures::EMPTY,
            version: "0".into(),
            weight_types: RVec::from(kernels_reference::weight_types()),
        }
    }

    fn score(_cpu: &CpuInfo) -> u32 {
        1
    }

    fn matmul(args: MatmulArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
        use kernels_reference::matmul::matmul_op;
        match args.weight.layout {
            0 => matmul_op(args, pool),
            REVERSED_ROWS => {
                REVERSED_MATMULS.fetch_add(1, Ordering::Relaxed);
                // Reversing twice restores GGUF's order.
                let restored = reverse_rows(&args.weight)?;
                let weight = WeightRef {
                    layout: 0,
                    data: RSlice::from_slice(&restored),
                    ..args.weight
                };
                matmul_op(
                    MatmulArgs {
                        weight,
                        input: args.input,
                        input_stride: args.input_stride,
                        n_batch: args.n_batch,
                        output: args.output,
                        output_stride: args.output_stride,
                    },
                    pool,
                )
            }
            other => Err(format!("unknown weight layout {other}")),
        }
    }

    fn attention(args: AttentionArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
        kernels_reference::attention::attention_op(args, pool)
    }

    fn rms_norm(args: RmsNormArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
        kernels_reference::norm::rms_norm_op(args, pool)
    }

    fn rope(args: RopeArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
        kernels_reference::rope::rope_op(args, pool)
    }

    fn softmax(args: SoftmaxArgs<'_>, _pool: &PoolRef<'_>) -> Result<(), String> {
        kernels_reference::elementwise::softmax_op(args)
    }

    fn unary(args: UnaryArgs<'_>, _pool: &PoolRef<'_>) -> Result<(), String> {
        kernels_reference::elementwise::unary_op(args)
    }

    fn binary(args: BinaryArgs<'_>, _pool: &PoolRef<'_>) -> Result<(), String> {
        kernels_reference::elementwise::binary_op(args)
    }

    fn glu(args: GluArgs<'_>, _pool: &PoolRef<'_>) -> Result<(), String> {
        kernels_reference::elementwise::glu_op(args)
    }

    fn dequantize(mut args: DequantizeArgs<'_>, _pool: &PoolRef<'_>) -> Result<(), String> {
        kernels_reference::quants::dequantize_row(
            args.dtype,
            args.src.as_slice(),
            args.dst.as_mut_slice(),
        )
    }

    fn quantize(mut args: QuantizeArgs<'_>, _pool: &PoolRef<'_>) -> Result<(), String> {
        kernels_reference::quants::quantize_row(
            args.dtype,
            args.src.as_slice(),
            args.dst.as_mut_slice(),
        )
    }

    fn prepare_weight(w: WeightRef<'_>) -> Result<Option<PreparedWeight>, String> {
        if w.dtype != GgmlType::Q4_K || w.layout != 0 {
            return Ok(None);
        }
        if FAIL {
            return Err("out of test memory".into());
        }
        Ok(Some(PreparedWeight {
            layout: REVERSED_ROWS,
            data: RVec::from(reverse_rows(&w)?),
        }))
    }
}

fn in_process<const FAIL: bool>() -> Kernels {
    let root = plugin_api::kernel::root_module::<RowReversing<FAIL>>();
    Kernels::in_process(root, &llmhost::cpu::detect()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn repacked_weights_reach_the_kernels_in_forward_and_their_pages_are_released() {
    let s = stack();
    let kernels = in_process::<false>();
    // The same reference arithmetic either way: only the order of the rows in memory differs.
    let stats = compare(&s, &kernels, 1e-6);
    // The forward passes took the repacked copies (the file's bytes would have given the
    // same logits in layout 0).
    assert!(REVERSED_MATMULS.load(Ordering::Relaxed) > 0);
    // Every Q4_K matrix but the embedding table (read row by row, never offered).
    let offered: Vec<_> = s
        .file
        .tensors()
        .iter()
        .filter(|t| t.dims.len() == 2 && t.dtype == GgmlType::Q4_K && t.name != "token_embd.weight")
        .collect();
    assert_eq!(offered.len(), 7 * N_LAYER, "the model as written");
    assert_eq!(stats.repacked, offered.len(), "{stats:?}");
    assert_eq!(
        stats.bytes,
        offered.iter().map(|t| t.size).sum::<u64>(),
        "{stats:?}"
    );
    if cfg!(unix) {
        // Each tensor spans at least 9 pages of 4 KiB; the partial pages at its ends stay.
        assert!(
            stats.released_bytes > stats.bytes / 2 && stats.released_bytes <= stats.bytes,
            "{stats:?}"
        );
    }
}

#[test]
fn a_failing_prepare_weight_stops_the_load_naming_tensor_and_plugin() {
    let s = stack();
    let kernels = in_process::<true>();
    let e = load(&s, &kernels, true).err().expect("the load fails");
    println!("{e}");
    assert!(!e.contains('\n'), "{e}");
    for needle in [
        "output.weight",
        "test-failing",
        "prepare_weight",
        "out of test memory",
        "--no-repack",
    ] {
        assert!(e.contains(needle), "{needle:?} not in: {e}");
    }
    // Without repacking the plugin is never asked.
    let mut engine = load(&s, &kernels, false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(engine.repack_stats().repacked, 0);
    assert!(logits(&mut engine, &s.pool).iter().all(|x| x.is_finite()));
}
