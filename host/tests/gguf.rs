//! The GGUF reader on synthetic files: every value type round-trips, and every kind of broken
//! file ends in one clear, single-line error (never a panic or a huge allocation).

use llmhost::gguf::writer::{GgufWriter, RawTensor};
use llmhost::gguf::{Array, ErrorKind, GgufError, GgufFile, Value};
use plugin_api::abi_stable::sabi_trait::prelude::TD_Opaque;
use plugin_api::abi_stable::std_types::{RNone, RSome};
use plugin_api::arch::Metadata_TO;
use plugin_api::{GgmlType, MetadataRef};
use proptest::prelude::*;

const NAME: &str = "test.gguf";

fn open(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(bytes, NAME)
}

/// Opens `bytes` expecting an error of `kind` whose one-line message contains every needle.
#[track_caller]
fn expect_err(bytes: Vec<u8>, kind: ErrorKind, needles: &[&str]) -> String {
    let e = match open(bytes) {
        Ok(f) => panic!("expected a {kind:?} error, the file opened: {f:?}"),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert_eq!(e.kind(), kind, "wrong kind for: {msg}");
    assert_one_line(&msg);
    for n in needles {
        assert!(msg.contains(n), "message lacks {n:?}: {msg}");
    }
    msg
}

#[track_caller]
fn assert_one_line(msg: &str) {
    assert!(
        !msg.contains('\n') && !msg.contains('\r'),
        "not one line: {msg:?}"
    );
    assert!(
        msg.starts_with(&format!("{NAME}: ")),
        "does not name the file: {msg}"
    );
    // "<file>: <what> (...): <what to do>"
    assert!(msg.matches(": ").count() >= 2, "no advice: {msg}");
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A small valid file: a few keys and three tensors of different types.
fn valid() -> GgufWriter {
    GgufWriter::new(3)
        .kv("general.architecture", s("llama"))
        .kv("llama.block_count", Value::U32(2))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(vec!["a".into(), "bc".into(), "def".into()])),
        )
        .tensor(
            "token_embd.weight",
            GgmlType::F32,
            &[4, 3],
            f32_bytes(&[1.0; 12]),
        )
        .tensor(
            "blk.0.attn_q.weight",
            GgmlType::Q8_0,
            &[32, 2],
            vec![7u8; 68],
        )
        .tensor("output_norm.weight", GgmlType::F16, &[4], vec![1u8; 8])
}

fn every_value() -> Vec<(&'static str, Value)> {
    vec![
        ("u8", Value::U8(200)),
        ("i8", Value::I8(-100)),
        ("u16", Value::U16(60000)),
        ("i16", Value::I16(-30000)),
        ("u32", Value::U32(4_000_000_000)),
        ("i32", Value::I32(-2_000_000_000)),
        ("u64", Value::U64(u64::MAX)),
        ("i64", Value::I64(i64::MIN)),
        ("f32", Value::F32(-1.5e-7)),
        ("f64", Value::F64(std::f64::consts::PI)),
        ("bool.t", Value::Bool(true)),
        ("bool.f", Value::Bool(false)),
        ("str", s("héllo, wörld ✓")),
        ("str.empty", s("")),
        ("arr.u8", Value::Array(Array::U8(vec![0, 1, 255]))),
        ("arr.i8", Value::Array(Array::I8(vec![-128, 0, 127]))),
        ("arr.u16", Value::Array(Array::U16(vec![0, 65535]))),
        ("arr.i16", Value::Array(Array::I16(vec![-32768, 32767]))),
        ("arr.u32", Value::Array(Array::U32(vec![1, 2, u32::MAX]))),
        ("arr.i32", Value::Array(Array::I32(vec![-1, 0, 1]))),
        ("arr.u64", Value::Array(Array::U64(vec![u64::MAX, 0]))),
        (
            "arr.i64",
            Value::Array(Array::I64(vec![i64::MIN, i64::MAX])),
        ),
        ("arr.f32", Value::Array(Array::F32(vec![0.5, -2.25, 1e30]))),
        ("arr.f64", Value::Array(Array::F64(vec![1e-300, -0.0]))),
        (
            "arr.bool",
            Value::Array(Array::Bool(vec![true, false, true])),
        ),
        (
            "arr.str",
            Value::Array(Array::String(vec!["".into(), "x".into(), "ü".into()])),
        ),
        ("arr.empty", Value::Array(Array::F32(vec![]))),
        (
            "arr.nested",
            Value::Array(Array::Array(vec![
                Array::I32(vec![1, 2, 3]),
                Array::String(vec!["n".into()]),
                Array::Array(vec![Array::Bool(vec![true]), Array::U8(vec![])]),
                Array::Array(vec![]),
            ])),
        ),
    ]
}

#[test]
fn every_value_type_round_trips_in_v2_and_v3() {
    for version in [2, 3] {
        let mut w = GgufWriter::new(version);
        for (k, v) in every_value() {
            w = w.kv(k, v);
        }
        let f = open(w.to_bytes()).unwrap();
        assert_eq!(f.version(), version);
        assert_eq!(f.metadata().len(), every_value().len());
        let got: Vec<(String, Value)> = f
            .metadata()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect();
        let want: Vec<(String, Value)> = every_value()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(got, want, "v{version}: values or their order differ");
        assert!(f.tensors().is_empty());
        assert_eq!(f.alignment(), 32);
    }
}

#[test]
fn tensors_round_trip_with_default_and_custom_alignment() {
    for align in [None, Some(1u32), Some(8), Some(64), Some(4096)] {
        let mut w = GgufWriter::new(3).kv("general.architecture", s("llama"));
        if let Some(a) = align {
            w = w.kv("general.alignment", Value::U32(a));
        }
        let q4k = vec![3u8; GgmlType::Q4_K.block_bytes() * 2];
        let w = w
            .tensor("a", GgmlType::F32, &[3], f32_bytes(&[1.0, 2.0, 3.0]))
            .tensor("b", GgmlType::Q4_K, &[256, 1, 2, 1], q4k.clone())
            .tensor("c", GgmlType::Q4_0, &[64], vec![9u8; 36]);
        let f = open(w.to_bytes()).unwrap();
        let a = u64::from(align.unwrap_or(32));
        assert_eq!(f.alignment(), a);
        assert_eq!(f.data_offset() % a, 0);
        assert_eq!(f.tensors().len(), 3);
        let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        for t in f.tensors() {
            assert_eq!((t.offset - f.data_offset()) % a, 0, "{} misaligned", t.name);
        }

        let ta = f.tensor("a").unwrap();
        assert_eq!(ta.dtype, GgmlType::F32);
        assert_eq!(ta.dims, [3]);
        assert_eq!(ta.dims4(), [3, 1, 1, 1]);
        assert_eq!(ta.n_elements(), 3);
        assert_eq!(ta.size, 12);
        assert_eq!(f.tensor_data(ta), f32_bytes(&[1.0, 2.0, 3.0]));

        let tb = f.tensor("b").unwrap();
        assert_eq!(tb.dims4(), [256, 1, 2, 1]);
        assert_eq!(tb.n_elements(), 512);
        assert_eq!(tb.size, 2 * 144);
        assert_eq!(f.tensor_data(tb), q4k);

        let tc = f.tensor("c").unwrap();
        assert_eq!(tc.size, 18 * 2);
        assert_eq!(f.tensor_data(tc), vec![9u8; 36]);
        assert!(f.tensor("missing").is_none());

        let r = f.tensor_ref(tb);
        assert_eq!(r.name.as_str(), "b");
        assert_eq!(r.n_dims, 4);
        assert_eq!(r.dims, [256, 1, 2, 1]);
        assert_eq!(r.data.len(), 288);
        assert_eq!(r.layout, 0);
        assert_eq!(f.file_size(), f.bytes().len() as u64);
    }
}

#[test]
fn a_foreign_tensor_info_gets_an_empty_slice() {
    let f = open(valid().to_bytes()).unwrap();
    let mut t = f.tensors()[0].clone();
    t.offset = u64::MAX - 3;
    assert!(f.tensor_data(&t).is_empty());
    t.offset = 0;
    t.size = u64::MAX;
    assert!(f.tensor_data(&t).is_empty());
}

#[test]
fn metadata_getters_convert_what_fits() {
    let w = GgufWriter::new(3)
        .kv("u8", Value::U8(7))
        .kv("i32.neg", Value::I32(-5))
        .kv("i64.pos", Value::I64(9))
        .kv("u64.big", Value::U64(u64::MAX))
        .kv("f32", Value::F32(0.25))
        .kv("bool", Value::Bool(true))
        .kv("str", s("x"))
        .kv(
            "a.str",
            Value::Array(Array::String(vec!["p".into(), "q".into()])),
        )
        .kv("a.i32", Value::Array(Array::I32(vec![-1, 2])))
        .kv("a.u64.big", Value::Array(Array::U64(vec![1, u64::MAX])))
        .kv("a.f64", Value::Array(Array::F64(vec![0.5, 1.5])))
        .kv("a.bool", Value::Array(Array::Bool(vec![true])));
    let f = open(w.to_bytes()).unwrap();
    let m = f.metadata();
    assert_eq!(m.get("u8"), Some(&Value::U8(7)));
    assert_eq!(m.get_u64("u8"), Some(7));
    assert_eq!(m.get_u64("i32.neg"), None);
    assert_eq!(m.get_u64("i64.pos"), Some(9));
    assert_eq!(m.get_u64("u64.big"), Some(u64::MAX));
    assert_eq!(m.get_u64("f32"), None);
    assert_eq!(m.get_i64("i32.neg"), Some(-5));
    assert_eq!(m.get_i64("u64.big"), None);
    assert_eq!(m.get_f64("f32"), Some(0.25));
    assert_eq!(m.get_f64("i32.neg"), Some(-5.0));
    assert_eq!(m.get_f64("str"), None);
    assert_eq!(m.get_bool("bool"), Some(true));
    assert_eq!(m.get_bool("u8"), None);
    assert_eq!(m.get_str("str"), Some("x"));
    assert_eq!(m.get_str("u8"), None);
    assert_eq!(m.get_str("absent"), None);
    assert_eq!(
        m.get_str_array("a.str"),
        Some(&["p".to_owned(), "q".to_owned()][..])
    );
    assert_eq!(m.get_str_array("a.i32"), None);
    assert_eq!(m.get_f32_array("a.i32"), Some(vec![-1.0, 2.0]));
    assert_eq!(m.get_f32_array("a.f64"), Some(vec![0.5, 1.5]));
    assert_eq!(m.get_f32_array("a.str"), None);
    assert_eq!(m.get_f32_array("a.bool"), None);
    assert_eq!(m.get_i64_array("a.i32"), Some(vec![-1, 2]));
    assert_eq!(m.get_i64_array("a.u64.big"), None);
    assert_eq!(m.get_i64_array("a.f64"), None);
    assert_eq!(m.get_array_len("a.str"), Some(2));
    assert_eq!(m.get_array_len("str"), None);

    // The same metadata through the ABI view plugins get.
    let view: MetadataRef<'_> = Metadata_TO::from_ptr(m, TD_Opaque);
    assert_eq!(view.get_u64("u8".into()), RSome(7));
    assert_eq!(view.get_i64("i32.neg".into()), RSome(-5));
    assert_eq!(view.get_f64("f32".into()), RSome(0.25));
    assert_eq!(view.get_bool("bool".into()), RSome(true));
    assert_eq!(view.get_str("str".into()), RSome("x".into()));
    assert_eq!(view.get_str("absent".into()), RNone);
    assert_eq!(
        view.get_i64_array("a.i32".into()),
        RSome(vec![-1, 2].into())
    );
    assert_eq!(
        view.get_f64_array("a.i32".into()),
        RSome(vec![-1.0, 2.0].into())
    );
    assert_eq!(view.get_f64_array("a.str".into()), RNone);
}

#[test]
fn architecture_is_read_or_clearly_missing() {
    let f = open(valid().to_bytes()).unwrap();
    assert_eq!(f.architecture().unwrap(), "llama");

    let f = open(GgufWriter::new(3).to_bytes()).unwrap();
    let e = f.architecture().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::MissingKey);
    let msg = e.to_string();
    assert_one_line(&msg);
    assert!(msg.contains("key 'general.architecture'"), "{msg}");

    let f = open(
        GgufWriter::new(3)
            .kv("general.architecture", Value::U32(1))
            .to_bytes(),
    )
    .unwrap();
    let e = f.architecture().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WrongType);
    assert!(e.to_string().contains("u32, expected a string"), "{e}");
}

#[test]
fn opens_through_the_memory_map() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    let bytes = valid().to_bytes();
    std::fs::write(&p, &bytes).unwrap();
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.file_size(), bytes.len() as u64);
    assert_eq!(f.tensors().len(), 3);
    let t = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(f.tensor_data(t), vec![7u8; 68]);
    assert_eq!(f.name(), p.display().to_string());

    let missing = dir.path().join("missing.gguf");
    let e = GgufFile::open(&missing).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    let msg = e.to_string();
    assert!(msg.starts_with(&missing.display().to_string()), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn the_writer_pads_and_places_data() {
    let (bytes, layout) = valid().to_bytes_with_layout();
    assert_eq!(&bytes[..4], b"GGUF");
    assert_eq!(layout.data_offset % 32, 0);
    assert_eq!(layout.kv_offsets.len(), 3);
    assert_eq!(layout.kv_offsets[0], 24);
    assert_eq!(layout.tensor_info_offsets.len(), 3);
    let f = open(bytes).unwrap();
    assert_eq!(f.data_offset(), layout.data_offset);
    let offs: Vec<u64> = f.tensors().iter().map(|t| t.offset).collect();
    assert_eq!(offs, layout.tensor_data_offsets);
}

// ---------------------------------------------------------------------------------------------
// Broken files: one test each.

fn patch(bytes: &mut [u8], at: u64, with: &[u8]) {
    let at = at as usize;
    bytes[at..at + with.len()].copy_from_slice(with);
}

fn raw(name: &str, n_dims: u32, dims: &[u64], ggml_type: u32, offset: Option<u64>) -> RawTensor {
    RawTensor {
        name: name.as_bytes().to_vec(),
        n_dims,
        dims: dims.to_vec(),
        ggml_type,
        offset,
        data: Vec::new(),
    }
}

#[test]
fn bad_magic() {
    expect_err(
        valid().magic(*b"GGML").to_bytes(),
        ErrorKind::NotGguf,
        &["starts with \"GGML\"", "at byte 0", "not a GGUF"],
    );
    expect_err(
        b"{\"x\":1}".to_vec(),
        ErrorKind::NotGguf,
        &["instead of \"GGUF\""],
    );
}

#[test]
fn empty_file() {
    expect_err(Vec::new(), ErrorKind::Truncated, &["magic", "at byte 0"]);
}

#[test]
fn big_endian() {
    let mut b = valid().to_bytes();
    patch(&mut b, 4, &3u32.to_be_bytes());
    expect_err(
        b,
        ErrorKind::BigEndian,
        &["big-endian", "version 3", "at byte 4"],
    );
}

#[test]
fn unsupported_versions() {
    expect_err(
        valid()
            .to_bytes()
            .into_iter()
            .enumerate()
            .map(|(i, x)| if i == 4 { 1 } else { x })
            .collect(),
        ErrorKind::UnsupportedVersion,
        &["GGUF version 1", "at byte 4", "versions 2 and 3"],
    );
    expect_err(
        GgufWriter::new(4).to_bytes(),
        ErrorKind::UnsupportedVersion,
        &["GGUF version 4 is not supported"],
    );
    expect_err(
        GgufWriter::new(0).to_bytes(),
        ErrorKind::UnsupportedVersion,
        &["GGUF version 0"],
    );
}

#[test]
fn truncated_in_the_header() {
    let b = valid().to_bytes();
    for (cut, what) in [
        (2, "magic"),
        (6, "version"),
        (10, "tensor count"),
        (20, "metadata count"),
    ] {
        expect_err(
            b[..cut].to_vec(),
            ErrorKind::Truncated,
            &[&format!("inside the {what}"), "truncated"],
        );
    }
}

/// Keys and values big enough that cutting inside the last ones still leaves room for the
/// counts in the header.
fn kv_file() -> GgufWriter {
    GgufWriter::new(3)
        .kv("first", s(&"x".repeat(300)))
        .kv("second.key", s("a string value"))
}

#[test]
fn truncated_inside_a_key() {
    let (b, layout) = kv_file().to_bytes_with_layout();
    let key_at = layout.kv_offsets[1];
    // In the key's length, then in its bytes.
    expect_err(
        b[..key_at as usize + 4].to_vec(),
        ErrorKind::Truncated,
        &["key #1", &format!("at byte {key_at}"), "inside the key"],
    );
    expect_err(
        b[..key_at as usize + 12].to_vec(),
        ErrorKind::Truncated,
        &["key #1", &format!("at byte {key_at}"), "key (length 10)"],
    );
}

#[test]
fn truncated_inside_a_value() {
    let (b, layout) = kv_file().to_bytes_with_layout();
    let type_at = layout.kv_offsets[1] + 8 + 10;
    // In the type, the string length, the string bytes.
    for (cut, what) in [
        (2, "value type"),
        (4 + 3, "inside the string value"),
        (4 + 8 + 5, "string value (length 14)"),
    ] {
        let cut = type_at + cut;
        expect_err(
            b[..cut as usize].to_vec(),
            ErrorKind::Truncated,
            &["key 'second.key'", what],
        );
    }
}

#[test]
fn truncated_inside_tensor_infos() {
    let (b, layout) = valid().to_bytes_with_layout();
    let t1 = layout.tensor_info_offsets[1] as usize;
    // The file keeps far more bytes than the minimum the counts need, so it is a truncation.
    let name_len = "blk.0.attn_q.weight".len();
    expect_err(
        b[..t1 + 3].to_vec(),
        ErrorKind::Truncated,
        &["tensor #1", "tensor name"],
    );
    expect_err(
        b[..t1 + 8 + name_len + 2].to_vec(),
        ErrorKind::Truncated,
        &["tensor 'blk.0.attn_q.weight'", "dimension count"],
    );
    expect_err(
        b[..t1 + 8 + name_len + 4 + 12].to_vec(),
        ErrorKind::Truncated,
        &["tensor 'blk.0.attn_q.weight'", "dimensions"],
    );
    expect_err(
        b[..t1 + 8 + name_len + 4 + 16 + 4 + 3].to_vec(),
        ErrorKind::Truncated,
        &["tensor 'blk.0.attn_q.weight'", "data offset"],
    );
}

#[test]
fn truncated_inside_tensor_data() {
    let b = valid().to_bytes();
    // The last tensor (output_norm.weight, 8 bytes) loses its last byte.
    expect_err(
        b[..b.len() - 1].to_vec(),
        ErrorKind::Truncated,
        &[
            "tensor 'output_norm.weight'",
            "ends inside the tensor's data",
        ],
    );
    // Every shorter prefix fails too, and never panics.
    for cut in 0..b.len() {
        let e = open(b[..cut].to_vec()).unwrap_err();
        assert_one_line(&e.to_string());
    }
    assert!(open(b).is_ok());
}

#[test]
fn huge_string_length() {
    let (mut b, layout) = valid().to_bytes_with_layout();
    patch(&mut b, layout.kv_offsets[0], &(1u64 << 60).to_le_bytes());
    expect_err(
        b,
        ErrorKind::ImplausibleSize,
        &[
            "key #0",
            "length 1152921504606846976",
            "at byte 24",
            "more than the whole file",
        ],
    );
}

#[test]
fn huge_array_count() {
    let mut payload = 0u32.to_le_bytes().to_vec(); // u8 elements
    payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
    payload.extend_from_slice(&[1, 2, 3]);
    expect_err(
        valid().raw_kv(b"big.array", 9, &payload).to_bytes(),
        ErrorKind::ImplausibleSize,
        &[
            "key 'big.array'",
            "array of 1152921504606846976 u8 elements",
        ],
    );
    // Strings take at least 8 bytes each: a count that fits the bytes left as u8 does not
    // fit as strings.
    let mut payload = 8u32.to_le_bytes().to_vec();
    payload.extend_from_slice(&(1u64 << 61).to_le_bytes());
    expect_err(
        valid().raw_kv(b"big.strings", 9, &payload).to_bytes(),
        ErrorKind::ImplausibleSize,
        &["key 'big.strings'", "string elements"],
    );
}

#[test]
fn huge_tensor_and_kv_counts() {
    expect_err(
        valid().tensor_count(1 << 62).to_bytes(),
        ErrorKind::ImplausibleSize,
        &[
            "4611686018427387904 tensors",
            "at byte 8",
            "more than the whole file",
        ],
    );
    expect_err(
        valid().kv_count(u64::MAX).to_bytes(),
        ErrorKind::ImplausibleSize,
        &["18446744073709551615 metadata entries"],
    );
    // Plausible against the file size, yet past its end: the tables run out of bytes. (The
    // string makes the infos end on a multiple of 32: no padding is read as a tensor.)
    let b = GgufWriter::new(3)
        .kv("pad", s(&"x".repeat(1009)))
        .tensor_count(5)
        .to_bytes();
    assert_eq!(b.len(), 1056);
    expect_err(
        b,
        ErrorKind::Truncated,
        &["tensor #0", "inside the tensor name", "at byte 1056"],
    );
}

#[test]
fn out_of_bounds_tensor_offset() {
    expect_err(
        valid()
            .raw_tensor(raw("far", 1, &[16], 0, Some(1 << 40)))
            .to_bytes(),
        ErrorKind::BadTensorOffset,
        &[
            "tensor 'far'",
            "data offset 1099511627776",
            "past the end of the file",
        ],
    );
    // An offset so large that data start + offset overflows.
    expect_err(
        valid()
            .raw_tensor(raw("wrap", 1, &[16], 0, Some(u64::MAX - 31)))
            .to_bytes(),
        ErrorKind::BadTensorOffset,
        &["tensor 'wrap'"],
    );
}

#[test]
fn misaligned_tensor_offset() {
    let (b, layout) = GgufWriter::new(3)
        .raw_tensor(raw("odd", 1, &[16], 0, Some(8)))
        .to_bytes_with_layout();
    let offset_field = layout.tensor_info_offsets[0] + 8 + 3 + 4 + 8 + 4;
    expect_err(
        b,
        ErrorKind::BadTensorOffset,
        &[
            "tensor 'odd'",
            "data offset 8 is not a multiple of the alignment 32",
            &format!("at byte {offset_field}"),
        ],
    );
}

#[test]
fn unknown_tensor_type() {
    expect_err(
        valid()
            .raw_tensor(raw("mystery", 1, &[16], 99, None))
            .to_bytes(),
        ErrorKind::UnknownTensorType,
        &[
            "tensor 'mystery'",
            "unknown ggml type 99",
            "does not support",
        ],
    );
    expect_err(
        valid()
            .raw_tensor(raw("iq", 1, &[256], 23, None))
            .to_bytes(),
        ErrorKind::UnknownTensorType,
        &["tensor 'iq'", "ggml type 23 (IQ4_XS)"],
    );
}

#[test]
fn zero_dimensions() {
    expect_err(
        valid()
            .raw_tensor(raw("scalar", 0, &[], 0, None))
            .to_bytes(),
        ErrorKind::BadShape,
        &["tensor 'scalar'", "0 dimensions (must be 1 to 4)"],
    );
}

#[test]
fn five_dimensions() {
    expect_err(
        valid()
            .raw_tensor(raw("t5", 5, &[1, 1, 1, 1, 16], 0, None))
            .to_bytes(),
        ErrorKind::BadShape,
        &["tensor 't5'", "5 dimensions"],
    );
    // A huge n_dims is refused before any dimension is read.
    expect_err(
        valid()
            .raw_tensor(raw("t", u32::MAX, &[], 0, None))
            .to_bytes(),
        ErrorKind::BadShape,
        &["4294967295 dimensions"],
    );
}

#[test]
fn zero_dim() {
    expect_err(
        valid()
            .raw_tensor(raw("empty", 2, &[16, 0], 0, None))
            .to_bytes(),
        ErrorKind::BadShape,
        &["tensor 'empty'", "dimension 1 is 0"],
    );
}

#[test]
fn element_count_overflow() {
    expect_err(
        valid()
            .raw_tensor(raw("huge", 3, &[1 << 32, 1 << 32, 2], 0, None))
            .to_bytes(),
        ErrorKind::BadShape,
        &["tensor 'huge'", "element count", "overflows"],
    );
    // Elements that fit, bytes that do not.
    expect_err(
        valid()
            .raw_tensor(raw("fat", 2, &[1 << 32, 1 << 30], 0, None))
            .to_bytes(),
        ErrorKind::BadShape,
        &["tensor 'fat'", "byte size", "overflows"],
    );
}

#[test]
fn row_not_a_whole_number_of_blocks() {
    expect_err(
        valid()
            .raw_tensor(raw("q", 2, &[33, 2], GgmlType::Q8_0 as u32, None))
            .to_bytes(),
        ErrorKind::BadShape,
        &[
            "tensor 'q'",
            "row length 33 is not a multiple of the Q8_0 block size 32",
        ],
    );
}

#[test]
fn overlapping_tensors() {
    let sixteen = |name, offset| RawTensor {
        data: vec![0u8; 64],
        ..raw(name, 1, &[16], 0, Some(offset))
    };
    let w = GgufWriter::new(3)
        .raw_tensor(sixteen("first", 0))
        .raw_tensor(sixteen("second", 32));
    expect_err(
        w.to_bytes(),
        ErrorKind::OverlappingTensors,
        &["tensor 'second'", "overlaps that of tensor 'first'"],
    );
    // Touching is fine.
    let w = GgufWriter::new(3)
        .raw_tensor(sixteen("first", 0))
        .raw_tensor(sixteen("second", 64));
    assert!(open(w.to_bytes()).is_ok());
}

#[test]
fn duplicate_key() {
    let (b, layout) = valid()
        .kv("llama.block_count", Value::U32(3))
        .to_bytes_with_layout();
    expect_err(
        b,
        ErrorKind::DuplicateKey,
        &[
            "key 'llama.block_count'",
            "appears twice",
            &format!("at byte {}", layout.kv_offsets[3]),
        ],
    );
}

#[test]
fn duplicate_tensor() {
    expect_err(
        valid()
            .tensor("output_norm.weight", GgmlType::F32, &[2], vec![0u8; 8])
            .to_bytes(),
        ErrorKind::DuplicateTensor,
        &["tensor 'output_norm.weight'", "appears twice"],
    );
}

#[test]
fn invalid_utf8_key() {
    expect_err(
        valid()
            .raw_kv(b"bad\xff\xfekey", 4, &1u32.to_le_bytes())
            .to_bytes(),
        ErrorKind::InvalidUtf8,
        &["key 'bad", "key'", "not valid UTF-8 (bad byte 3 of 8)"],
    );
}

#[test]
fn invalid_utf8_string_value_and_tensor_name() {
    let mut payload = 3u64.to_le_bytes().to_vec();
    payload.extend_from_slice(b"a\xc0b");
    expect_err(
        valid().raw_kv(b"general.name", 8, &payload).to_bytes(),
        ErrorKind::InvalidUtf8,
        &["key 'general.name'", "string value is not valid UTF-8"],
    );
    let mut t = raw("x", 1, &[16], 0, None);
    t.name = b"blk.\x80".to_vec();
    expect_err(
        valid().raw_tensor(t).to_bytes(),
        ErrorKind::InvalidUtf8,
        &["tensor 'blk.", "tensor name is not valid UTF-8"],
    );
}

#[test]
fn non_power_of_two_alignment() {
    expect_err(
        valid().kv("general.alignment", Value::U32(48)).to_bytes(),
        ErrorKind::BadAlignment,
        &[
            "key 'general.alignment'",
            "alignment 48 is not a non-zero power of two",
        ],
    );
    expect_err(
        valid().kv("general.alignment", Value::U32(0)).to_bytes(),
        ErrorKind::BadAlignment,
        &["alignment 0"],
    );
    expect_err(
        valid().kv("general.alignment", Value::U64(32)).to_bytes(),
        ErrorKind::BadAlignment,
        &["alignment is a u64, expected a u32"],
    );
}

#[test]
fn unknown_value_type() {
    expect_err(
        valid().raw_kv(b"weird", 13, &[0; 8]).to_bytes(),
        ErrorKind::UnknownValueType,
        &["key 'weird'", "unknown value type 13"],
    );
    let mut payload = 77u32.to_le_bytes().to_vec();
    payload.extend_from_slice(&0u64.to_le_bytes());
    expect_err(
        valid().raw_kv(b"weird.array", 9, &payload).to_bytes(),
        ErrorKind::UnknownValueType,
        &["key 'weird.array'", "unknown array element type 77"],
    );
}

#[test]
fn bool_that_is_not_0_or_1() {
    expect_err(
        valid().raw_kv(b"flag", 7, &[2]).to_bytes(),
        ErrorKind::InvalidValue,
        &["key 'flag'", "bool value 2"],
    );
}

#[test]
fn arrays_nested_too_deep() {
    let mut a = Array::U8(vec![]);
    for _ in 0..llmhost::gguf::MAX_ARRAY_DEPTH {
        a = Array::Array(vec![a]);
    }
    // MAX_ARRAY_DEPTH + 1 levels in all.
    expect_err(
        valid().kv("deep", Value::Array(a.clone())).to_bytes(),
        ErrorKind::InvalidValue,
        &["key 'deep'", "nested more than"],
    );
    // One level less is fine.
    let Array::Array(mut inner) = a else {
        unreachable!()
    };
    let ok = valid().kv("deep", Value::Array(inner.remove(0))).to_bytes();
    assert!(open(ok).is_ok());
}

#[test]
fn hostile_names_stay_on_one_line() {
    let msg = expect_err(
        valid()
            .kv("evil\nkey\r'x'", Value::U8(1))
            .kv("evil\nkey\r'x'", Value::U8(1))
            .to_bytes(),
        ErrorKind::DuplicateKey,
        &["evil\\nkey\\r\\'x\\'"],
    );
    assert!(msg.len() < 400, "{msg}");
    let long = "k".repeat(10_000);
    let msg = expect_err(
        valid()
            .kv(&long, Value::U8(1))
            .kv(&long, Value::U8(1))
            .to_bytes(),
        ErrorKind::DuplicateKey,
        &["kkk..."],
    );
    assert!(msg.len() < 400, "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Random damage never panics.

fn check_never_panics(bytes: Vec<u8>) {
    match open(bytes) {
        Ok(f) => {
            // Whatever opened is usable.
            for t in f.tensors() {
                let d = f.tensor_data(t);
                assert_eq!(d.len() as u64, t.size);
            }
            let _ = f.architecture();
            assert_eq!(f.metadata().iter().count(), f.metadata().len());
        }
        Err(e) => assert_one_line(&e.to_string()),
    }
}

fn fuzz_base() -> Vec<u8> {
    valid()
        .kv("arr.nested", every_value().pop().unwrap().1)
        .kv("f", Value::F32(1.0))
        .kv("b", Value::Bool(true))
        .to_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn random_byte_mutations_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut b = fuzz_base();
        for (i, v) in edits {
            let i = i.index(b.len());
            b[i] = v;
        }
        if let Some(c) = cut {
            let c = c.index(b.len());
            b.truncate(c);
        }
        check_never_panics(b);
    }

    #[test]
    fn random_u64_overwrites_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u64>()), 1..4),
    ) {
        // Lengths, counts, dims and offsets are u64s: overwrite 8 bytes at a time.
        let mut b = fuzz_base();
        for (i, v) in edits {
            let i = i.index(b.len() - 8);
            b[i..i + 8].copy_from_slice(&v.to_le_bytes());
        }
        check_never_panics(b);
    }

    #[test]
    fn random_bytes_never_panic(mut b in prop::collection::vec(any::<u8>(), 0..512)) {
        if b.len() >= 8 && b[0] % 2 == 0 {
            // Often give it a valid header so the parser gets further.
            b[..4].copy_from_slice(b"GGUF");
            b[4..8].copy_from_slice(&3u32.to_le_bytes());
        }
        check_never_panics(b);
    }
}

#[test]
fn files_and_errors_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<GgufFile>();
    send_sync::<GgufError>();
}
