//! `quantize_row` and `vec_dot` against ggml's own C reference code (testdata/quant/ and
//! testdata/vecdot/, written by scripts/gen_ggml_vectors.sh): the bytes of every quantized
//! row and the bits of every dot product must be identical.

mod common;

use common::{same_f32, vector_files, VectorFile};
use kernels_scalar::quants::{quantize_row, vec_dot, vec_dot_type};
use plugin_api::GgmlType;

#[test]
fn quantize_row_matches_ggml_reference_byte_for_byte() {
    let mut failures = Vec::new();
    let mut types = Vec::new();
    for path in vector_files("quant") {
        let mut f = VectorFile::open(&path, b"LHQZ");
        for rec in 0..f.records {
            let n = f.u32() as usize;
            let nbytes = f.u32() as usize;
            let input = f.f32s(n);
            let expected = f.bytes(nbytes);
            let mut got = vec![0u8; nbytes];
            quantize_row(f.dtype, &input, &mut got).unwrap();
            let bad: Vec<usize> = (0..nbytes).filter(|&i| got[i] != expected[i]).collect();
            if let Some(&i) = bad.first() {
                failures.push(format!(
                    "{} record {rec}: {} of {nbytes} bytes differ; first at {i}: got {:#04x}, expected {:#04x}",
                    f.name, bad.len(), got[i], expected[i]
                ));
            }
        }
        types.push(f.dtype);
        f.finish();
    }
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
    // Every type but F32 (a plain copy) has quantization vectors.
    for t in GgmlType::ALL {
        assert_eq!(
            types.contains(&t),
            t != GgmlType::F32,
            "{} coverage",
            t.name()
        );
    }
}

#[test]
fn vec_dot_matches_ggml_generic_bit_for_bit() {
    let mut failures = Vec::new();
    let mut types = Vec::new();
    for path in vector_files("vecdot") {
        let mut f = VectorFile::open(&path, b"LHVD");
        for rec in 0..f.records {
            let n = f.u32() as usize;
            let (wb, xb) = (f.u32() as usize, f.u32() as usize);
            let w = f.bytes(wb);
            let x = f.bytes(xb);
            let expected = f.f32s(1)[0];
            assert_eq!(vec_dot_type(f.dtype).row_bytes(n), Some(xb), "{}", f.name);
            let got = vec_dot(f.dtype, n, &w, &x).unwrap();
            if !same_f32(got, expected) {
                failures.push(format!(
                    "{} record {rec}: got {got:e} ({:#010x}), expected {expected:e} ({:#010x})",
                    f.name,
                    got.to_bits(),
                    expected.to_bits()
                ));
            }
        }
        types.push(f.dtype);
        f.finish();
    }
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
    use GgmlType::*;
    for t in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K] {
        assert!(types.contains(&t), "{} has no vec_dot vectors", t.name());
    }
}
