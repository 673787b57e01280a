//! Scaled dot-product attention over one sequence's KV cache: causal mask, sliding window,
//! grouped-query heads and logit soft-capping, in one pass with an online softmax (see
//! [`attend`] for the precision rules, which follow llama.cpp's CPU flash attention).

use crate::{check, split::Rows};
use half::f16;
use plugin_api::{parallel_for, AttentionArgs, GgmlType, KvRef, PoolRef};

/// Reads head `head` of (logical) token `token` from one side of the cache, contiguous or
/// paged, into `out`.
pub fn read_kv(kv: &KvRef<'_>, token: usize, head: usize, out: &mut [f32]) {
    let start = kv.row_offset(token, head);
    let data = kv.data.as_slice();
    match kv.dtype {
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(data[start..].chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        _ => {
            for (o, b) in out.iter_mut().zip(data[start..].chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
}

/// The keys visible to a query at `pos`: `start..end`.
pub fn visible_range(pos: usize, kv_len: usize, causal: bool, window: u32) -> (usize, usize) {
    let end = if causal {
        (pos + 1).min(kv_len)
    } else {
        kv_len
    };
    let start = if window > 0 {
        (pos + 1).saturating_sub(window as usize)
    } else {
        0
    };
    (start.min(end), end)
}

/// Attention of query `i`, head `h`, written to `out` (`head_dim` floats).
///
/// One pass over the visible keys with an online softmax (the running maximum rescales the
/// partial sums), all in f32 whatever the cache type. llama.cpp's CPU flash attention rounds
/// the query to f16 and accumulates values in f16 for an F16 cache; we measured that
/// emulating it does not bring our logits closer to llama.cpp's reference outputs (which
/// vary by ±0.2 across llama.cpp's own builds and settings), so the reference keeps the
/// more accurate arithmetic. Soft-capping divides the scale by the cap first, as ggml does.
fn attend(a: &AttentionArgs<'_>, i: usize, h: usize, out: &mut [f32]) {
    let d = a.head_dim;
    let kv_head = h / (a.n_head / a.n_head_kv);
    let q = &a.q.as_slice()[i * a.q_stride + h * d..][..d];
    let (start, end) = visible_range(a.q_pos[i] as usize, a.kv_len, a.causal, a.window);
    out.fill(0.0);
    if start == end {
        return;
    }
    let scale = if a.softcap > 0.0 {
        a.scale / a.softcap
    } else {
        a.scale
    };
    let mut row = vec![0f32; d];
    let (mut m, mut sum) = (f32::NEG_INFINITY, 0f32);
    for j in start..end {
        read_kv(&a.k, j, kv_head, &mut row);
        let mut s = q.iter().zip(&row).map(|(x, y)| x * y).sum::<f32>() * scale;
        if a.softcap > 0.0 {
            s = a.softcap * s.tanh();
        }
        let (mut ms, mut vs) = (1.0f32, 1.0f32);
        if s > m {
            ms = (m - s).exp();
            m = s;
            out.iter_mut().for_each(|o| *o *= ms);
        } else {
            vs = (s - m).exp();
        }
        read_kv(&a.v, j, kv_head, &mut row);
        for (o, v) in out.iter_mut().zip(&row) {
            *o += v * vs;
        }
        sum = sum * ms + vs;
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    out.iter_mut().for_each(|o| *o *= inv);
}

/// The attention entry point of the plugin: one task per (query, head).
pub fn attention_op(mut a: AttentionArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
    check::attention(&a)?;
    let (n_q, n_head, d, stride) = (a.n_q, a.n_head, a.head_dim, a.out_stride);
    let mut out_buf = std::mem::take(&mut a.out);
    let out = Rows::chunked(out_buf.as_mut_slice(), n_q, n_head * d, stride, d);
    let a = &a;
    parallel_for(pool, n_q * n_head, |task, _| {
        attend(a, task / n_head, task % n_head, &mut out.row(task));
    })
}
