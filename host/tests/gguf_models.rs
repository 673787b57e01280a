//! The GGUF reader on the three real correctness models. Every expected number here was read
//! with the `gguf` Python package (llama.cpp's gguf-py, `GGUFReader`), not with our reader.

use llmhost::gguf::{GgufFile, Value};
use plugin_api::GgmlType;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

mod common;
use common as models;

/// What gguf-py reports for one tensor: type, shape (ggml order), bytes, absolute data
/// offset, and either the first three floats (F32) or the first 8 bytes in hex.
struct Tensor {
    name: &'static str,
    dtype: GgmlType,
    dims: &'static [u64],
    n_elements: u64,
    size: u64,
    offset: u64,
    head: Head,
}

enum Head {
    /// As f64: the f32 values gguf-py printed, exactly.
    F32([f64; 3]),
    Hex(&'static str),
}

struct Expected {
    model: &'static str,
    architecture: &'static str,
    n_kv: usize,
    n_tensors: usize,
    data_offset: u64,
    file_size: u64,
    total_tensor_bytes: u64,
    type_counts: &'static [(GgmlType, usize)],
    last_key: &'static str,
    n_tokens: usize,
    first_tokens: [&'static str; 3],
    tensors: &'static [Tensor],
}

fn check(e: &Expected) -> GgufFile {
    let path: PathBuf = models::model_path(e.model);
    let f = GgufFile::open(&path).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture().unwrap(), e.architecture);
    assert_eq!(f.metadata().len(), e.n_kv);
    assert_eq!(f.tensors().len(), e.n_tensors);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.data_offset(), e.data_offset);
    assert_eq!(f.file_size(), e.file_size);

    let keys: Vec<&str> = f.metadata().iter().map(|(k, _)| k).collect();
    assert_eq!(
        &keys[..3],
        ["general.architecture", "general.type", "general.name"]
    );
    assert_eq!(*keys.last().unwrap(), e.last_key);

    let total: u64 = f.tensors().iter().map(|t| t.size).sum();
    assert_eq!(total, e.total_tensor_bytes);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in f.tensors() {
        *counts.entry(t.dtype.name()).or_default() += 1;
    }
    let want: BTreeMap<&str, usize> = e.type_counts.iter().map(|(t, n)| (t.name(), *n)).collect();
    assert_eq!(counts, want);

    let m = f.metadata();
    assert_eq!(m.get_array_len("tokenizer.ggml.tokens"), Some(e.n_tokens));
    assert_eq!(
        &m.get_str_array("tokenizer.ggml.tokens").unwrap()[..3],
        e.first_tokens
    );

    for want in e.tensors {
        let t = f
            .tensor(want.name)
            .unwrap_or_else(|| panic!("no tensor {}", want.name));
        assert_eq!(t.dtype, want.dtype, "{}", want.name);
        assert_eq!(t.dims, want.dims, "{}", want.name);
        assert_eq!(t.n_elements(), want.n_elements, "{}", want.name);
        assert_eq!(t.size, want.size, "{}", want.name);
        assert_eq!(t.offset, want.offset, "{}", want.name);
        let data = f.tensor_data(t);
        assert_eq!(data.len() as u64, want.size);
        match want.head {
            Head::F32(v) => {
                let got: Vec<f64> = data[..12]
                    .chunks_exact(4)
                    .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
                    .collect();
                assert_eq!(got, v, "{}", want.name);
            }
            Head::Hex(h) => {
                let got: String = data[..8].iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(got, h, "{}", want.name);
            }
        }
    }
    // The last tensor ends exactly at the end of the file.
    let end = f.tensors().iter().map(|t| t.offset + t.size).max().unwrap();
    assert_eq!(end, e.file_size);
    f
}

#[test]
fn smollm2_135m() {
    use GgmlType::*;
    let f = check(&Expected {
        model: "smollm2-135m",
        architecture: "llama",
        n_kv: 33,
        n_tensors: 272,
        data_offset: 1785664,
        file_size: 98362432,
        total_tensor_bytes: 96576768,
        type_counts: &[(Q4_1, 210), (F32, 61), (Q8_0, 1)],
        last_key: "general.quantization_version",
        n_tokens: 49152,
        first_tokens: ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        tensors: &[
            Tensor {
                name: "token_embd.weight",
                dtype: Q8_0,
                dims: &[576, 49152],
                n_elements: 28311552,
                size: 30081024,
                offset: 1785664,
                head: Head::Hex("3219d60d13f7e5ee"),
            },
            Tensor {
                name: "blk.0.attn_k.weight",
                dtype: Q4_1,
                dims: &[576, 192],
                n_elements: 110592,
                size: 69120,
                offset: 33530176,
                head: Head::Hex("4931e8bdb8db9687"),
            },
            Tensor {
                name: "blk.0.attn_q.weight",
                dtype: Q4_1,
                dims: &[576, 576],
                n_elements: 331776,
                size: 207360,
                offset: 33806656,
                head: Head::Hex("0f30d8b945876540"),
            },
            Tensor {
                name: "blk.29.ffn_down.weight",
                dtype: Q4_1,
                dims: &[1536, 576],
                n_elements: 884736,
                size: 552960,
                offset: 80630848,
                head: Head::Hex("e229d8b5f29c4cd9"),
            },
            Tensor {
                name: "output_norm.weight",
                dtype: F32,
                dims: &[576],
                n_elements: 576,
                size: 2304,
                offset: 98360128,
                head: Head::F32([1.7578125, 1.8203125, 1.78125]),
            },
        ],
    });
    let m = f.metadata();
    assert_eq!(m.get("llama.block_count"), Some(&Value::U32(30)));
    assert_eq!(m.get_u64("llama.context_length"), Some(8192));
    assert_eq!(m.get_u64("llama.embedding_length"), Some(576));
    assert_eq!(m.get_u64("llama.attention.head_count"), Some(9));
    assert_eq!(m.get_u64("llama.attention.head_count_kv"), Some(3));
    assert_eq!(m.get_f64("llama.rope.freq_base"), Some(100000.0));
    assert_eq!(
        m.get("llama.attention.layer_norm_rms_epsilon"),
        Some(&Value::F32(1e-5)) // gguf-py: 9.999999747378752e-06
    );
    assert_eq!(m.get_bool("tokenizer.ggml.add_bos_token"), Some(false));
    assert_eq!(m.get_str("tokenizer.ggml.model"), Some("gpt2"));
    assert_eq!(m.get_str("tokenizer.ggml.pre"), Some("smollm"));
    assert_eq!(m.get_array_len("tokenizer.ggml.merges"), Some(48900));
    assert_eq!(
        &m.get_str_array("tokenizer.ggml.merges").unwrap()[..3],
        ["Ġ t", "Ġ a", "i n"]
    );
    assert_eq!(
        m.get_i64_array("tokenizer.ggml.token_type").unwrap()[..3],
        [3, 3, 3]
    );
    assert_eq!(m.get_u64("tokenizer.ggml.eos_token_id"), Some(2));
}

#[test]
fn gemma3_270m() {
    use GgmlType::*;
    let f = check(&Expected {
        model: "gemma3-270m",
        architecture: "gemma3",
        n_kv: 33,
        n_tensors: 236,
        data_offset: 6525120,
        file_size: 253113024,
        total_tensor_bytes: 246587904,
        type_counts: &[(F32, 109), (Q5_0, 81), (Q4_K, 27), (Q8_0, 10), (Q6_K, 9)],
        last_key: "general.file_type",
        n_tokens: 262144,
        first_tokens: ["<pad>", "<eos>", "<bos>"],
        tensors: &[
            Tensor {
                name: "output_norm.weight",
                dtype: F32,
                dims: &[640],
                n_elements: 640,
                size: 2560,
                offset: 6525120,
                head: Head::F32([7.125, 9.5625, 47.0]),
            },
            Tensor {
                name: "token_embd.weight",
                dtype: Q8_0,
                dims: &[640, 262144],
                n_elements: 167772160,
                size: 178257920,
                offset: 6527680,
                head: Head::Hex("f210f447c7ddec30"),
            },
            Tensor {
                name: "blk.0.attn_k_norm.weight",
                dtype: F32,
                dims: &[256],
                n_elements: 256,
                size: 1024,
                offset: 184898240,
                head: Head::F32([1.2392578125, 1.65625, 1.44921875]),
            },
            Tensor {
                name: "blk.0.attn_q.weight",
                dtype: Q5_0,
                dims: &[640, 1024],
                n_elements: 655360,
                size: 450560,
                offset: 185270464,
                head: Head::Hex("c017720b47dd3e64"),
            },
            Tensor {
                name: "blk.0.ffn_down.weight",
                dtype: Q6_K,
                dims: &[2048, 640],
                n_elements: 1310720,
                size: 1075200,
                offset: 185896128,
                head: Head::Hex("da277d901132d472"),
            },
            Tensor {
                name: "blk.17.ffn_up.weight",
                dtype: Q5_0,
                dims: &[640, 2048],
                n_elements: 1310720,
                size: 901120,
                offset: 252206784,
                head: Head::Hex("981f1cc3cf75071d"),
            },
        ],
    });
    let m = f.metadata();
    assert_eq!(m.get_u64("gemma3.block_count"), Some(18));
    assert_eq!(m.get_u64("gemma3.attention.key_length"), Some(256));
    assert_eq!(m.get_u64("gemma3.attention.sliding_window"), Some(512));
    assert_eq!(m.get_u64("gemma3.attention.head_count_kv"), Some(1));
    assert_eq!(m.get_f64("gemma3.rope.freq_base"), Some(1000000.0));
    assert_eq!(m.get_str("tokenizer.ggml.model"), Some("llama"));
    assert_eq!(m.get_bool("tokenizer.ggml.add_bos_token"), Some(true));
    let scores = m.get_f32_array("tokenizer.ggml.scores").unwrap();
    assert_eq!(scores.len(), 262144);
    assert_eq!(scores[..3], [-1000.0, -1000.0, -1000.0]);
    assert_eq!(m.get_u64("general.file_type"), Some(15));
}

#[test]
fn qwen25_coder_05b() {
    use GgmlType::*;
    let path = models::model_path("qwen2.5-coder-0.5b");
    // Warm the page cache, then time a cold-parse open (the mapping is new each time).
    drop(GgufFile::open(&path).unwrap());
    let t0 = Instant::now();
    let opened = GgufFile::open(&path).unwrap();
    let took = t0.elapsed();
    eprintln!("open {}: {took:?}", path.display());
    // Milliseconds in practice (~150k tokens and merges to copy); generous for slow CI.
    assert!(took.as_secs_f64() < 2.0, "open took {took:?}");
    drop(opened);

    let f = check(&Expected {
        model: "qwen2.5-coder-0.5b",
        architecture: "qwen2",
        n_kv: 26,
        n_tensors: 291,
        data_offset: 5947776,
        file_size: 491400064,
        total_tensor_bytes: 485452288,
        type_counts: &[(Q5_0, 133), (F32, 121), (Q8_0, 13), (Q6_K, 12), (Q4_K, 12)],
        last_key: "general.quantization_version",
        n_tokens: 151936,
        first_tokens: ["!", "\"", "#"],
        tensors: &[
            Tensor {
                name: "output.weight",
                dtype: Q8_0,
                dims: &[896, 151936],
                n_elements: 136134656,
                size: 144643072,
                offset: 5947776,
                head: Head::Hex("d80bbb69603383dd"),
            },
            Tensor {
                name: "token_embd.weight",
                dtype: Q5_0,
                dims: &[896, 151936],
                n_elements: 136134656,
                size: 93592576,
                offset: 150590848,
                head: Head::Hex("c897f16e55c919b3"),
            },
            Tensor {
                name: "blk.0.ffn_down.weight",
                dtype: Q6_K,
                dims: &[4864, 896],
                n_elements: 4358144,
                size: 3575040,
                offset: 244187008,
                head: Head::Hex("52f2402624d21b22"),
            },
            Tensor {
                name: "blk.0.attn_q.bias",
                dtype: F32,
                dims: &[896],
                n_elements: 896,
                size: 3584,
                offset: 254389376,
                head: Head::F32([-0.0299072265625, -0.0079345703125, -0.08544921875]),
            },
            Tensor {
                name: "blk.23.attn_v.weight",
                dtype: Q5_0,
                dims: &[896, 128],
                n_elements: 114688,
                size: 78848,
                offset: 417463936,
                head: Head::Hex("f31b98f78f142c0c"),
            },
            Tensor {
                name: "output_norm.weight",
                dtype: F32,
                dims: &[896],
                n_elements: 896,
                size: 3584,
                offset: 491396480,
                head: Head::F32([7.0625, 7.125, 7.0]),
            },
        ],
    });
    let m = f.metadata();
    assert_eq!(m.get_u64("qwen2.block_count"), Some(24));
    assert_eq!(m.get_u64("qwen2.feed_forward_length"), Some(4864));
    assert_eq!(m.get_u64("qwen2.attention.head_count"), Some(14));
    assert_eq!(m.get_u64("qwen2.attention.head_count_kv"), Some(2));
    assert_eq!(m.get_u64("tokenizer.ggml.eos_token_id"), Some(151645));
    assert_eq!(m.get_u64("tokenizer.ggml.bos_token_id"), Some(151643));
    assert_eq!(m.get_str("tokenizer.ggml.pre"), Some("qwen2"));
    assert_eq!(m.get_array_len("tokenizer.ggml.merges"), Some(151387));
    assert_eq!(
        &m.get_str_array("tokenizer.ggml.merges").unwrap()[..3],
        ["Ġ Ġ", "ĠĠ ĠĠ", "i n"]
    );
    assert!(m
        .get_str("tokenizer.chat_template")
        .unwrap()
        .starts_with("{%- if tools %}\n    {{- '<|im_start|>system\\n' }}"));
    assert_eq!(
        m.get("general.name"),
        Some(&Value::String("Qwen2.5 Coder 0.5B Instruct AWQ".into()))
    );
}
