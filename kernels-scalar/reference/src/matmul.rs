//! Quantized matrix multiplication, the way ggml's CPU backend defines it: each activation
//! row is quantized once to the weight type's dot-product partner (`vec_dot_type`: Q8_0, Q8_1,
//! Q8_K, or F16/BF16/F32 for float weights), then every output is one `vec_dot` of a weight
//! row with a quantized activation row.

use crate::{check, quants, split::Rows};
use plugin_api::{parallel_for, GgmlType, MatmulArgs, PoolRef};
use std::sync::Mutex;

/// Output elements one task computes: big enough to amortise the task hand-out, small
/// enough to balance 2–64 threads on the smallest matrices.
const ROWS_PER_TASK: usize = 32;

/// Quantizes `n_batch` rows of `cols` floats (`stride` apart) to `dtype`, back to back.
pub fn quantize_rows(
    dtype: GgmlType,
    input: &[f32],
    n_batch: usize,
    cols: usize,
    stride: usize,
) -> Result<Vec<u8>, String> {
    let row_bytes = dtype
        .row_bytes(cols)
        .ok_or_else(|| format!("{cols} columns do not fill whole {} blocks", dtype.name()))?;
    let mut out = vec![0u8; n_batch * row_bytes];
    for (b, dst) in out
        .chunks_exact_mut(row_bytes.max(1))
        .take(n_batch)
        .enumerate()
    {
        quants::quantize_activations(dtype, &input[b * stride..][..cols], dst)?;
    }
    Ok(out)
}

/// The matmul entry point of the plugin.
pub fn matmul_op(mut a: MatmulArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
    check::matmul(&a)?;
    let w = a.weight;
    if w.rows == 0 || a.n_batch == 0 {
        return Ok(());
    }
    let x_type = quants::vec_dot_type(w.dtype);
    let xq = quantize_rows(
        x_type,
        a.input.as_slice(),
        a.n_batch,
        w.cols,
        a.input_stride,
    )?;
    let x_row_bytes = xq.len() / a.n_batch;
    let w_row_bytes = w.dtype.row_bytes(w.cols).expect("checked");
    let weights = w.data.as_slice();

    let pieces_per_row = w.rows.div_ceil(ROWS_PER_TASK);
    let out = Rows::chunked(
        a.output.as_mut_slice(),
        a.n_batch,
        w.rows,
        a.output_stride,
        ROWS_PER_TASK,
    );
    let first_error = Mutex::new(None::<String>);
    parallel_for(pool, out.len(), |task, _thread| {
        let b = task / pieces_per_row;
        let r0 = (task % pieces_per_row) * ROWS_PER_TASK;
        let x = &xq[b * x_row_bytes..][..x_row_bytes];
        let mut piece = out.row(task);
        for (i, y) in piece.iter_mut().enumerate() {
            let w_row = &weights[(r0 + i) * w_row_bytes..][..w_row_bytes];
            match quants::vec_dot(w.dtype, w.cols, w_row, x) {
                Ok(v) => *y = v,
                Err(e) => {
                    first_error.lock().unwrap().get_or_insert(e);
                    return;
                }
            }
        }
    })?;
    match first_error.into_inner().unwrap() {
        None => Ok(()),
        Some(e) => Err(e),
    }
}
