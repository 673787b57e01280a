//! Quantized matrix products: one driver for decode (a single activation row) and prompt
//! processing (a GEMM over hundreds of rows), shared by `matmul` and `fused_matmul`.
//!
//! 1. Each input row is (optionally RMS-normalised and) quantized once to the weights'
//!    `vec_dot_type`; products reading the same input share that quantized copy.
//! 2. The outputs are cut into tiles of up to [`MAX_ROW_BLOCK`] weight rows × [`COL_BLOCK`]
//!    activation rows, for every product at once, and the pool hands tiles out dynamically, so
//!    the whole op is one synchronisation point. A tile's weight rows (a few KiB) stay in L1/L2
//!    while the type's register-tiled kernel ([`crate::quants::TileFn`]) walks its activation
//!    rows; the quantized activations of a column block (≤ 64 rows, ~60 KiB) stay in L2.
//! 3. The epilogue adds the bias and, for residual connections, the previous output.

use crate::{cpu::Avx2, disjoint::DisjointSlice, norm, quants, quants::x8};
use abi_stable::std_types::{ROption, RSlice, RSliceMut};
use kernels_reference::{check, quants::vec_dot_type};
use plugin_api::{parallel_for, FusedMatmulArgs, GgmlType, MatmulArgs, PoolRef, WeightRef};

/// Activation rows per tile.
const COL_BLOCK: usize = 64;
/// Most weight rows per tile of a prompt (several activation rows).
const MAX_ROW_BLOCK: usize = 64;
/// Most weight rows per tile of decode (one activation row). Decode streams each weight from
/// memory once, and a tile's kernel prefetches each pass's successor rows, but nothing before
/// its first pass: longer tiles leave fewer such stalls. 256 rather than 64 made the legacy
/// decode tiles 15–22 % faster on rows of 896 (`bench_legacy_tiles` with `BENCH_ROWS`,
/// `BENCH_K`); 512 gained nothing more.
const MAX_DECODE_ROW_BLOCK: usize = 256;
/// Input rows one quantization task handles.
const QUANT_ROWS_PER_TASK: usize = 8;

/// How one product's dot products are computed.
#[derive(Clone, Copy)]
enum Kernel {
    Simd(quants::TileFn),
    /// A type without a SIMD path here (Q2_K, Q3_K, ...): the reference `vec_dot`.
    Scalar(GgmlType),
}

/// One `output (+)= weight · x (+ bias)` of the op.
struct Product<'a> {
    weight: WeightRef<'a>,
    kernel: Kernel,
    /// Index of its quantized input in [`Inputs`].
    input: usize,
    bias: Option<&'a [f32]>,
    out: DisjointSlice<'a, f32>,
    out_stride: usize,
    accumulate: bool,
    row_block: usize,
}

/// The quantized copies of the input, one per activation type the products need.
struct Inputs {
    types: Vec<GgmlType>,
    data: Vec<Vec<u8>>,
    row_bytes: Vec<usize>,
}

/// A tile of the task grid.
#[derive(Clone, Copy)]
struct Tile {
    product: u32,
    r0: u32,
    nr: u32,
    c0: u32,
    nc: u32,
}

/// The `matmul` entry point.
pub fn matmul_op(mut a: MatmulArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
    check_layout(&a.weight)?;
    let layout = std::mem::replace(&mut a.weight.layout, 0);
    check::matmul(&a)?;
    a.weight.layout = layout;
    let cpu = Avx2::get()?;
    let cols = a.weight.cols;
    let product = Product::new(
        a.weight,
        None,
        a.output.as_mut_slice(),
        a.output_stride,
        false,
    );
    run(
        cpu,
        a.input.as_slice(),
        a.input_stride,
        a.n_batch,
        cols,
        None,
        vec![product],
        pool,
    )
}

/// The `fused_matmul` entry point.
pub fn fused_matmul_op(mut a: FusedMatmulArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
    let cpu = Avx2::get()?;
    let (n, cols) = (a.n_batch, a.cols);
    let input = a.input.as_slice();
    let norm_weight = match a.norm {
        ROption::RSome(w) if w.len() != cols => {
            return Err(format!(
                "norm weight has {} values for rows of {cols}",
                w.len()
            ))
        }
        ROption::RSome(w) => Some(w.as_slice()),
        ROption::RNone => None,
    };
    let mut products = Vec::with_capacity(a.targets.len());
    for (i, t) in a.targets.as_mut_slice().iter_mut().enumerate() {
        if t.weight.cols != cols {
            return Err(format!(
                "target {i}: weight has {} columns, the input {cols}",
                t.weight.cols
            ));
        }
        // The shape checks of a plain matmul, on this target's buffers.
        check_layout(&t.weight).map_err(|e| format!("target {i}: {e}"))?;
        check::matmul(&MatmulArgs {
            weight: WeightRef {
                layout: 0,
                ..t.weight
            },
            input: RSlice::from_slice(input),
            input_stride: a.input_stride,
            n_batch: n,
            output: RSliceMut::from_mut_slice(t.output.as_mut_slice()),
            output_stride: t.output_stride,
        })
        .map_err(|e| format!("target {i}: {e}"))?;
        let bias = match &t.bias {
            ROption::RSome(b) if b.len() != t.weight.rows => {
                return Err(format!(
                    "target {i}: bias has {} values for {} rows",
                    b.len(),
                    t.weight.rows
                ))
            }
            ROption::RSome(b) => Some(b.as_slice()),
            ROption::RNone => None,
        };
        products.push(Product::new(
            t.weight,
            bias,
            t.output.as_mut_slice(),
            t.output_stride,
            t.accumulate,
        ));
    }
    run(
        cpu,
        input,
        a.input_stride,
        n,
        cols,
        norm_weight.map(|w| (w, a.norm_eps)),
        products,
        pool,
    )
}

/// The constraints of a weight's layout. A repacked weight (`prepare_weight`) has the GGUF
/// size, so past these it gets the reference shape checks as if GGUF-native.
fn check_layout(w: &WeightRef<'_>) -> Result<(), String> {
    if w.layout == 0 {
        return Ok(());
    }
    match x8::layout_type(w.layout) {
        Some(t) if t == w.dtype && x8::can_repack(w.dtype, w.rows, w.cols) => Ok(()),
        Some(t) => Err(format!(
            "weight layout {} (repacked {}) needs a {} matrix with rows in multiples of 8 and \
             whole blocks, not {} of {} × {}",
            w.layout,
            t.name(),
            t.name(),
            w.dtype.name(),
            w.rows,
            w.cols
        )),
        None => Err(format!(
            "weight layout {} is neither GGUF-native nor one this plugin's prepare_weight \
             makes",
            w.layout
        )),
    }
}

impl<'a> Product<'a> {
    fn new(
        weight: WeightRef<'a>,
        bias: Option<&'a [f32]>,
        out: &'a mut [f32],
        out_stride: usize,
        accumulate: bool,
    ) -> Self {
        let tile = match weight.layout {
            0 => quants::tile_fn(weight.dtype),
            // Checked by `check_layout`.
            layout => x8::tile_fn(layout),
        };
        let kernel = match tile {
            Some(f) => Kernel::Simd(f),
            None => Kernel::Scalar(weight.dtype),
        };
        Product {
            weight,
            kernel,
            input: 0,
            bias,
            out: DisjointSlice::new(out),
            out_stride,
            accumulate,
            row_block: MAX_ROW_BLOCK,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    cpu: Avx2,
    input: &[f32],
    input_stride: usize,
    n: usize,
    cols: usize,
    norm: Option<(&[f32], f32)>,
    mut products: Vec<Product<'_>>,
    pool: &PoolRef<'_>,
) -> Result<(), String> {
    products.retain(|p| p.weight.rows > 0);
    if n == 0 || products.is_empty() {
        return Ok(());
    }
    // 1. Quantize the input once per activation type.
    let mut inputs = Inputs {
        types: Vec::new(),
        data: Vec::new(),
        row_bytes: Vec::new(),
    };
    for p in &mut products {
        let t = vec_dot_type(p.weight.dtype);
        p.input = match inputs.types.iter().position(|&u| u == t) {
            Some(i) => i,
            None => {
                let row_bytes = t.row_bytes(cols).ok_or_else(|| {
                    format!("{cols} columns do not fill whole {} blocks", t.name())
                })?;
                inputs.types.push(t);
                inputs.data.push(vec![0u8; n * row_bytes]);
                inputs.row_bytes.push(row_bytes);
                inputs.types.len() - 1
            }
        };
    }
    quantize_inputs(cpu, input, input_stride, n, cols, norm, &mut inputs, pool)?;

    // 2. The task grid: every product's outputs in tiles.
    let threads = pool.n_threads().max(1);
    let n_col_blocks = n.div_ceil(COL_BLOCK);
    let mut tiles = Vec::new();
    for (pi, p) in products.iter_mut().enumerate() {
        let rows = p.weight.rows;
        // Aim for ~8 tiles per thread per product so dynamic hand-out balances the threads,
        // in multiples of 8 rows (the kernels' register blocking divides 8).
        let want_tiles = 8 * threads;
        let per_col_block = want_tiles.div_ceil(n_col_blocks).max(1);
        let max_rows = if n == 1 {
            MAX_DECODE_ROW_BLOCK
        } else {
            MAX_ROW_BLOCK
        };
        p.row_block = rows
            .div_ceil(per_col_block)
            .next_multiple_of(8)
            .clamp(8, max_rows);
        for r0 in (0..rows).step_by(p.row_block) {
            for c0 in (0..n).step_by(COL_BLOCK) {
                tiles.push(Tile {
                    product: pi as u32,
                    r0: r0 as u32,
                    nr: p.row_block.min(rows - r0) as u32,
                    c0: c0 as u32,
                    nc: COL_BLOCK.min(n - c0) as u32,
                });
            }
        }
    }

    // 3. Compute the tiles.
    let products = &products;
    let inputs = &inputs;
    parallel_for(pool, tiles.len(), |task, _thread| {
        compute_tile(
            cpu,
            cols,
            &products[tiles[task].product as usize],
            inputs,
            tiles[task],
        );
    })
}

fn compute_tile(cpu: Avx2, cols: usize, p: &Product<'_>, inputs: &Inputs, t: Tile) {
    let (r0, nr, c0, nc) = (t.r0 as usize, t.nr as usize, t.c0 as usize, t.nc as usize);
    let w_row_bytes = p.weight.dtype.row_bytes(cols).expect("checked");
    let x_row_bytes = inputs.row_bytes[p.input];
    let w = &p.weight.data.as_slice()[r0 * w_row_bytes..];
    let x = &inputs.data[p.input][c0 * x_row_bytes..];
    // Decode tiles (one activation row) need a row of results, not a 16 KiB block to clear.
    let mut row_acc = [0f32; MAX_DECODE_ROW_BLOCK];
    let mut block_acc;
    let acc: &mut [f32] = if nc == 1 {
        &mut row_acc
    } else {
        block_acc = [0f32; MAX_ROW_BLOCK * COL_BLOCK];
        &mut block_acc
    };
    match p.kernel {
        Kernel::Simd(tile) => tile(cpu, cols, w, w_row_bytes, nr, x, x_row_bytes, nc, acc, nr),
        Kernel::Scalar(dtype) => {
            for c in 0..nc {
                for r in 0..nr {
                    acc[c * nr + r] = kernels_reference::quants::vec_dot(
                        dtype,
                        cols,
                        &w[r * w_row_bytes..][..w_row_bytes],
                        &x[c * x_row_bytes..][..x_row_bytes],
                    )
                    .expect("shapes checked");
                }
            }
        }
    }
    for c in 0..nc {
        let vals = &acc[c * nr..][..nr];
        // SAFETY: tiles partition (weight rows × activation rows) of each product, and
        // `out_stride >= rows` (checked), so this row piece is written by this task alone.
        let dst = unsafe { p.out.range_mut((c0 + c) * p.out_stride + r0, nr) };
        match (p.bias, p.accumulate) {
            (None, false) => dst.copy_from_slice(vals),
            (None, true) => dst.iter_mut().zip(vals).for_each(|(d, v)| *d += v),
            (Some(b), acc) => {
                let b = &b[r0..][..nr];
                for ((d, v), b) in dst.iter_mut().zip(vals).zip(b) {
                    *d = if acc { *d + (v + b) } else { v + b };
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn quantize_inputs(
    cpu: Avx2,
    input: &[f32],
    stride: usize,
    n: usize,
    cols: usize,
    norm: Option<(&[f32], f32)>,
    inputs: &mut Inputs,
    pool: &PoolRef<'_>,
) -> Result<(), String> {
    let types = inputs.types.clone();
    let row_bytes = inputs.row_bytes.clone();
    let outs: Vec<DisjointSlice<'_, u8>> = inputs
        .data
        .iter_mut()
        .map(|d| DisjointSlice::new(d))
        .collect();
    let error = std::sync::Mutex::new(None::<String>);
    let n_tasks = n.div_ceil(QUANT_ROWS_PER_TASK);
    parallel_for(pool, n_tasks, |task, _| {
        let mut normed = Vec::new();
        let first = task * QUANT_ROWS_PER_TASK;
        for b in first..n.min(first + QUANT_ROWS_PER_TASK) {
            let mut x = &input[b * stride..][..cols];
            if let Some((w, eps)) = norm {
                normed.resize(cols, 0.0);
                norm::rms_norm_row(cpu, x, Some(w), eps, &mut normed);
                x = &normed;
            }
            for (i, &t) in types.iter().enumerate() {
                // SAFETY: row `b` of each buffer belongs to the task that owns row `b`.
                let dst = unsafe { outs[i].range_mut(b * row_bytes[i], row_bytes[i]) };
                if let Err(e) = quants::quantize_activations(cpu, t, x, dst) {
                    error.lock().unwrap().get_or_insert(e);
                }
            }
        }
    })?;
    match error.into_inner().unwrap() {
        None => Ok(()),
        Some(e) => Err(e),
    }
}
