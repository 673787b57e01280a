//! Small op calls through the host's wrapper, with known answers.

use llmhost::plugins::{Kernels, PluginCallError};
use plugin_api::abi_stable::std_types::{RNone, RSlice, RSliceMut};
use plugin_api::{GgmlType, InlinePool, MatmulArgs, RmsNormArgs, WeightRef};

/// `[[1, 2, 3], [4, 5, 6]] · [1, 1, 1]`, which is `[6, 15]`.
pub fn matmul_2x3(kernels: &Kernels) -> Result<Vec<f32>, PluginCallError> {
    let weight: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let input = [1.0f32; 3];
    let mut output = [0.0f32; 2];
    kernels.matmul(
        MatmulArgs {
            weight: WeightRef {
                dtype: GgmlType::F32,
                layout: 0,
                rows: 2,
                cols: 3,
                data: RSlice::from_slice(&weight),
            },
            input: RSlice::from_slice(&input),
            input_stride: 3,
            n_batch: 1,
            output: RSliceMut::from_mut_slice(&mut output),
            output_stride: 2,
        },
        &InlinePool,
    )?;
    Ok(output.to_vec())
}

/// RMSNorm of `[3, 4]` with eps 0: `[3, 4] / sqrt(12.5)`.
pub fn rms_norm_3_4(kernels: &Kernels) -> Result<Vec<f32>, PluginCallError> {
    let x = [3.0f32, 4.0];
    let mut out = [0.0f32; 2];
    kernels.rms_norm(
        RmsNormArgs {
            x: RSlice::from_slice(&x),
            out: RSliceMut::from_mut_slice(&mut out),
            weight: RNone,
            rows: 1,
            dim: 2,
            eps: 0.0,
        },
        &InlinePool,
    )?;
    Ok(out.to_vec())
}

/// Asserts that `line` is one line containing every one of `parts`.
pub fn assert_one_line(line: &str, parts: &[&str]) {
    assert!(!line.contains('\n'), "not one line: {line:?}");
    assert!(!line.trim().is_empty(), "empty message");
    for part in parts {
        assert!(line.contains(part), "{line:?} does not mention {part:?}");
    }
}
