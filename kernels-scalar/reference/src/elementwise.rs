//! Element-wise ops: activations, softmax, add/mul with row broadcast, gated units. The
//! formulas are ggml's (`ggml_silu_f32`, `ggml_gelu_f32` tanh form, `ggml_vec_soft_max_f32`).

use crate::check;
use plugin_api::{BinaryArgs, BinaryOp, GluArgs, GluKind, SoftmaxArgs, UnaryArgs, UnaryOp};

const GELU_COEF_A: f32 = 0.044715;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// The tanh form of GELU in f32 (`ggml_gelu_f32`).
pub fn gelu_exact(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh())
}

/// GELU as ggml's CPU backend defines it (`GGML_GELU_FP16`, always on): 0 below -10, the
/// identity above 10, and in between a table look-up at `x` rounded to f16 holding the
/// f16-rounded [`gelu_exact`]. Gemma's feed-forward goes through it in every layer, so
/// matching it matters for agreeing with llama.cpp.
pub fn gelu(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        let xh = half::f16::from_f32(x).to_f32();
        half::f16::from_f32(gelu_exact(xh)).to_f32()
    }
}

/// Softmax of one row in place, after multiplying by `scale`.
pub fn softmax_row(x: &mut [f32], scale: f32) {
    x.iter_mut().for_each(|v| *v *= scale);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    x.iter_mut().for_each(|v| *v *= inv);
}

pub fn softmax_op(mut a: SoftmaxArgs<'_>) -> Result<(), String> {
    check::softmax(&a)?;
    if a.cols == 0 {
        return Ok(());
    }
    for row in a.x.as_mut_slice().chunks_exact_mut(a.cols).take(a.rows) {
        softmax_row(row, a.scale);
    }
    Ok(())
}

pub fn unary_op(mut a: UnaryArgs<'_>) -> Result<(), String> {
    let p = a.param;
    let x = a.x.as_mut_slice();
    match a.op {
        UnaryOp::Silu => x.iter_mut().for_each(|v| *v = silu(*v)),
        UnaryOp::Gelu => x.iter_mut().for_each(|v| *v = gelu(*v)),
        UnaryOp::Scale => x.iter_mut().for_each(|v| *v *= p),
        UnaryOp::Softcap => {
            if p <= 0.0 {
                return Err(format!("soft-cap must be positive, got {p}"));
            }
            x.iter_mut().for_each(|v| *v = (*v / p).tanh() * p)
        }
    }
    Ok(())
}

pub fn binary_op(mut a: BinaryArgs<'_>) -> Result<(), String> {
    check::binary(&a)?;
    if a.cols == 0 {
        return Ok(());
    }
    let f = match a.op {
        BinaryOp::Add => |x: f32, y: f32| x + y,
        BinaryOp::Mul => |x: f32, y: f32| x * y,
    };
    let b = a.b.as_slice();
    for (r, row) in
        a.a.as_mut_slice()
            .chunks_exact_mut(a.cols)
            .take(a.rows)
            .enumerate()
    {
        let b_row = if b.len() == a.cols {
            b
        } else {
            &b[r * a.cols..][..a.cols]
        };
        row.iter_mut().zip(b_row).for_each(|(x, &y)| *x = f(*x, y));
    }
    Ok(())
}

pub fn glu_op(mut a: GluArgs<'_>) -> Result<(), String> {
    check::glu(&a)?;
    let act = match a.kind {
        GluKind::Silu => silu,
        GluKind::Gelu => gelu,
    };
    for (g, &u) in a.gate.as_mut_slice().iter_mut().zip(a.up.as_slice()) {
        *g = act(*g) * u;
    }
    Ok(())
}
