//! What llama-bench says about a model, computed the same way from the GGUF file: its
//! description (`llama 135M Q4_1`), size (bytes of all tensors), parameter count, and what
//! llama-bench cannot say: the bytes of weights one decode step reads.

use crate::gguf::GgufFile;
use plugin_api::GgmlType;
use std::collections::HashMap;

/// The figures of one model file that every result row repeats.
#[derive(Debug, Clone)]
pub struct ModelDesc {
    /// `<architecture> <size label> <file type>`, e.g. `llama 135M Q4_1`.
    pub model_type: String,
    /// Bytes of tensor data (llama.cpp's `llama_model_size`: every tensor, metadata excluded).
    pub size: u64,
    /// Elements of every tensor (llama.cpp's `llama_model_n_params`).
    pub n_params: u64,
    /// Bytes of weights one single-token decode step reads (see [`weight_bytes_per_token`]).
    pub bytes_per_token: u64,
}

impl ModelDesc {
    pub fn of(file: &GgufFile) -> ModelDesc {
        let size = file.tensors().iter().map(|t| t.size).sum();
        let n_params = file.tensors().iter().map(|t| t.n_elements()).sum();
        let arch = file
            .metadata()
            .get_str("general.architecture")
            .unwrap_or("?");
        let label = match file.metadata().get_str("general.size_label") {
            Some(l) if !l.trim().is_empty() => l.trim().to_string(),
            _ => size_label(n_params),
        };
        let ftype = match file.metadata().get_u64("general.file_type") {
            Some(n) => ftype_name(n).map_or_else(|| format!("file type {n}"), str::to_string),
            None => format!("(guessed) {}", dominant_type(file)),
        };
        ModelDesc {
            model_type: format!("{arch} {label} {ftype}"),
            size,
            n_params,
            bytes_per_token: weight_bytes_per_token(file),
        }
    }
}

/// Bytes of weights a single-token decode step reads: every tensor except the token embedding,
/// of which one row is read (the token's), unless the output projection is tied to it (no
/// `output.weight`): then all of it is read once, as the output projection. Divided by the
/// time per token this is the weight-streaming rate, the figure to hold against the memory
/// bandwidth (decode of a small batch is bound by it).
pub fn weight_bytes_per_token(file: &GgufFile) -> u64 {
    let tied = file.tensor("output.weight").is_none();
    file.tensors()
        .iter()
        .map(|t| {
            if t.name == "token_embd.weight" && !tied {
                t.size / t.n_rows().max(1)
            } else {
                t.size
            }
        })
        .sum()
}

/// `135M`, `1.5B` from a parameter count, when the file has no `general.size_label`.
fn size_label(n_params: u64) -> String {
    let n = n_params as f64;
    if n >= 1e9 {
        format!("{:.1}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.0}M", n / 1e6)
    } else {
        format!("{:.0}K", n / 1e3)
    }
}

/// The type most of the weight bytes are in (matrices only), for files without
/// `general.file_type`.
fn dominant_type(file: &GgufFile) -> String {
    let mut bytes: HashMap<GgmlType, u64> = HashMap::new();
    for t in file.tensors().iter().filter(|t| t.dims.len() >= 2) {
        *bytes.entry(t.dtype).or_default() += t.size;
    }
    bytes
        .into_iter()
        .max_by_key(|&(_, b)| b)
        .map_or_else(|| "unknown".to_string(), |(t, _)| t.name().to_string())
}

/// llama.cpp's `llama_ftype_name` for `general.file_type` (enum `llama_ftype`), so the model
/// column reads the same in both tools.
fn ftype_name(n: u64) -> Option<&'static str> {
    Some(match n {
        0 => "all F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K - Medium",
        11 => "Q3_K - Small",
        12 => "Q3_K - Medium",
        13 => "Q3_K - Large",
        14 => "Q4_K - Small",
        15 => "Q4_K - Medium",
        16 => "Q5_K - Small",
        17 => "Q5_K - Medium",
        18 => "Q6_K",
        19 => "IQ2_XXS - 2.0625 bpw",
        20 => "IQ2_XS - 2.3125 bpw",
        21 => "Q2_K - Small",
        22 => "IQ3_XS - 3.3 bpw",
        23 => "IQ3_XXS - 3.0625 bpw",
        24 => "IQ1_S - 1.5625 bpw",
        25 => "IQ4_NL - 4.5 bpw",
        26 => "IQ3_S - 3.4375 bpw",
        27 => "IQ3_S mix - 3.66 bpw",
        28 => "IQ2_S - 2.5 bpw",
        29 => "IQ2_M - 2.7 bpw",
        30 => "IQ4_XS - 4.25 bpw",
        31 => "IQ1_M - 1.75 bpw",
        32 => "BF16",
        36 => "TQ1_0 - 1.69 bpw ternary",
        37 => "TQ2_0 - 2.06 bpw ternary",
        38 => "MXFP4 MoE",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::writer::GgufWriter;
    use crate::gguf::Value;

    fn file(tied: bool) -> GgufFile {
        let mut w = GgufWriter::new(3)
            .kv("general.architecture", Value::String("llama".into()))
            .kv("general.file_type", Value::U32(0))
            .tensor("token_embd.weight", GgmlType::F32, &[4, 10], [0u8; 160])
            .tensor("blk.0.attn_q.weight", GgmlType::F32, &[4, 4], [0u8; 64])
            .tensor("output_norm.weight", GgmlType::F32, &[4], [0u8; 16]);
        if !tied {
            w = w.tensor("output.weight", GgmlType::F32, &[4, 10], [0u8; 160]);
        }
        GgufFile::from_bytes(w.to_bytes(), "test.gguf").unwrap()
    }

    #[test]
    fn tied_embedding_is_read_whole_once_untied_one_row() {
        assert_eq!(weight_bytes_per_token(&file(true)), 160 + 64 + 16);
        assert_eq!(weight_bytes_per_token(&file(false)), 16 + 64 + 16 + 160);
    }

    #[test]
    fn description_reads_like_llama_bench() {
        let d = ModelDesc::of(&file(true));
        assert_eq!(d.model_type, "llama 0K all F32");
        assert_eq!(d.size, 240);
        assert_eq!(d.n_params, 60);
        assert_eq!(size_label(134_515_008), "135M");
        assert_eq!(size_label(1_543_714_304), "1.5B");
        assert_eq!(size_label(119_104), "119K");
    }
}
