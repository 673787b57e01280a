//! Argument validation shared by the entry points of every kernel plugin: an op given
//! inconsistent shapes returns one clear error instead of reading out of bounds. SIMD plugins
//! call these too, so all plugins reject exactly the same inputs.

use crate::split::span;
use plugin_api::{
    AttentionArgs, BinaryArgs, GgmlType, GluArgs, KvRef, MatmulArgs, RmsNormArgs, RopeArgs,
    SoftmaxArgs,
};

fn need(what: &str, have: usize, need: Option<usize>) -> Result<(), String> {
    match need {
        Some(n) if have >= n => Ok(()),
        Some(n) => Err(format!("{what} holds {have} elements, the shape needs {n}")),
        None => Err(format!("{what}: shape overflows usize")),
    }
}

fn stride_at_least(what: &str, stride: usize, row: usize, n_rows: usize) -> Result<(), String> {
    if n_rows > 1 && stride < row {
        return Err(format!(
            "{what} stride {stride} is smaller than its row length {row}"
        ));
    }
    Ok(())
}

pub fn matmul(a: &MatmulArgs<'_>) -> Result<(), String> {
    let w = &a.weight;
    if w.layout != 0 {
        return Err(format!("weight layout {} is not GGUF-native", w.layout));
    }
    let row_bytes = w.dtype.row_bytes(w.cols).ok_or_else(|| {
        format!(
            "{} weight rows of {} elements are not a whole number of {}-element blocks",
            w.dtype.name(),
            w.cols,
            w.dtype.block_size()
        )
    })?;
    need("weight", w.data.len(), w.rows.checked_mul(row_bytes))?;
    stride_at_least("input", a.input_stride, w.cols, a.n_batch)?;
    stride_at_least("output", a.output_stride, w.rows, a.n_batch)?;
    need(
        "input",
        a.input.len(),
        span(a.n_batch, w.cols, a.input_stride),
    )?;
    need(
        "output",
        a.output.len(),
        span(a.n_batch, w.rows, a.output_stride),
    )
}

/// One side of the cache holds `len` tokens of `heads` heads of `dim` elements: contiguous,
/// rows `0..len` lie in `data`; paged, the block table covers `len` tokens and every block it
/// names for them lies in `data`, so that kernels may read any of their rows unchecked.
fn kv(what: &str, kv: &KvRef<'_>, len: usize, heads: usize, dim: usize) -> Result<(), String> {
    let elem = match kv.dtype {
        GgmlType::F32 => 4,
        GgmlType::F16 => 2,
        t => return Err(format!("{what} cache type {} is not F32 or F16", t.name())),
    };
    if len == 0 {
        return Ok(());
    }
    let row = dim * elem;
    if heads > 1 && kv.head_stride < row {
        return Err(format!(
            "{what} head stride {} < head size {row} bytes",
            kv.head_stride
        ));
    }
    let token = (heads - 1) * kv.head_stride + row;
    if len > 1 && kv.token_stride < token {
        return Err(format!(
            "{what} token stride {} < token size {token} bytes",
            kv.token_stride
        ));
    }
    // Bytes up to the end of physical row `rows - 1`.
    let end = |rows: usize| {
        (rows - 1)
            .checked_mul(kv.token_stride)
            .and_then(|b| b.checked_add(token))
    };
    if kv.block_tokens == 0 {
        return need(what, kv.data.len(), end(len));
    }
    let block_tokens = kv.block_tokens;
    let used = len.div_ceil(block_tokens);
    if kv.blocks.len() < used {
        let have = kv.blocks.len();
        return Err(format!(
            "{what} block table holds {have} blocks of {block_tokens} tokens, kv_len {len} needs \
             {used}"
        ));
    }
    // Whole blocks, as the pool hands them out: the highest block id read bounds them all.
    let top = kv.blocks[..used].iter().copied().max().unwrap_or(0) as usize;
    match (top + 1).checked_mul(block_tokens).and_then(end) {
        Some(bytes) if bytes <= kv.data.len() => Ok(()),
        bytes => Err(format!(
            "{what} block {top} of {block_tokens} tokens ends at byte {}, past the {}-byte cache",
            bytes.map_or("(overflow)".into(), |b| b.to_string()),
            kv.data.len()
        )),
    }
}

pub fn attention(a: &AttentionArgs<'_>) -> Result<(), String> {
    if a.n_head == 0 || a.n_head_kv == 0 || a.head_dim == 0 {
        return Err("n_head, n_head_kv and head_dim must be positive".into());
    }
    if !a.n_head.is_multiple_of(a.n_head_kv) {
        return Err(format!(
            "n_head {} is not a multiple of n_head_kv {}",
            a.n_head, a.n_head_kv
        ));
    }
    if a.q_pos.len() != a.n_q {
        return Err(format!("{} positions for {} queries", a.q_pos.len(), a.n_q));
    }
    let row = a.n_head * a.head_dim;
    stride_at_least("q", a.q_stride, row, a.n_q)?;
    stride_at_least("out", a.out_stride, row, a.n_q)?;
    need("q", a.q.len(), span(a.n_q, row, a.q_stride))?;
    need("out", a.out.len(), span(a.n_q, row, a.out_stride))?;
    kv("k", &a.k, a.kv_len, a.n_head_kv, a.head_dim)?;
    kv("v", &a.v, a.kv_len, a.n_head_kv, a.head_dim)?;
    if let Some(p) = a.q_pos.iter().find(|&&p| p < 0) {
        return Err(format!("negative query position {p}"));
    }
    Ok(())
}

pub fn rms_norm(a: &RmsNormArgs<'_>) -> Result<(), String> {
    let n = a.rows.checked_mul(a.dim);
    need("x", a.x.len(), n)?;
    need("out", a.out.len(), n)?;
    if let Some(w) = a.weight.as_ref().into_option() {
        need("weight", w.len(), Some(a.dim))?;
    }
    Ok(())
}

pub fn rope(a: &RopeArgs<'_>) -> Result<(), String> {
    if a.n_rot > a.head_dim || !a.n_rot.is_multiple_of(2) {
        return Err(format!(
            "n_rot {} must be even and at most head_dim {}",
            a.n_rot, a.head_dim
        ));
    }
    if a.positions.len() != a.n_tokens {
        return Err(format!(
            "{} positions for {} tokens",
            a.positions.len(),
            a.n_tokens
        ));
    }
    let row = a.n_heads * a.head_dim;
    stride_at_least("x", a.token_stride, row, a.n_tokens)?;
    need("x", a.x.len(), span(a.n_tokens, row, a.token_stride))
}

pub fn softmax(a: &SoftmaxArgs<'_>) -> Result<(), String> {
    need("x", a.x.len(), a.rows.checked_mul(a.cols))
}

pub fn binary(a: &BinaryArgs<'_>) -> Result<(), String> {
    let n = a.rows.checked_mul(a.cols);
    need("a", a.a.len(), n)?;
    if a.b.len() != a.cols && Some(a.b.len()) != n {
        return Err(format!(
            "b holds {} elements: need one row ({}) or all rows ({})",
            a.b.len(),
            a.cols,
            a.rows * a.cols
        ));
    }
    Ok(())
}

pub fn glu(a: &GluArgs<'_>) -> Result<(), String> {
    if a.gate.len() != a.up.len() {
        return Err(format!(
            "gate holds {} elements, up {}",
            a.gate.len(),
            a.up.len()
        ));
    }
    Ok(())
}
