//! `dequantize_row` against independently computed vectors (testdata/dequant/): the numpy
//! implementation of the `gguf` package (`*.gguf.bin`) and ggml's C reference
//! (`*.ggml.bin`). Every value must match bit for bit (any NaN matches any NaN).

mod common;

use common::{same_f32, vector_files, VectorFile};
use kernels_scalar::quants::dequantize_row;
use plugin_api::GgmlType;
use std::collections::BTreeSet;

#[test]
fn dequantize_row_matches_every_vector_bit_for_bit() {
    let mut failures = Vec::new();
    let mut covered: BTreeSet<(&'static str, String)> = BTreeSet::new();
    for path in vector_files("dequant") {
        let mut f = VectorFile::open(&path, b"LHDQ");
        let source = f.name.split('.').nth(1).unwrap_or("?").to_string();
        for rec in 0..f.records {
            let n = f.u32() as usize;
            let nbytes = f.u32() as usize;
            let src = f.bytes(nbytes);
            let expected = f.f32s(n);
            let mut got = vec![0.0f32; n];
            dequantize_row(f.dtype, &src, &mut got).unwrap();
            let bad: Vec<usize> = (0..n).filter(|&i| !same_f32(got[i], expected[i])).collect();
            if let Some(&i) = bad.first() {
                failures.push(format!(
                    "{} record {rec}: {} of {n} values differ; first at {i}: got {} ({:#010x}), expected {} ({:#010x})",
                    f.name, bad.len(), got[i], got[i].to_bits(), expected[i], expected[i].to_bits()
                ));
            }
        }
        covered.insert((f.dtype.name(), source));
        f.finish();
    }
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));

    // Every type has a vector, except Q8_1, which nothing in ggml dequantizes.
    for t in GgmlType::ALL {
        let has = covered.iter().any(|(name, _)| *name == t.name());
        assert_eq!(has, t != GgmlType::Q8_1, "{} coverage", t.name());
    }
    // gguf covers everything it implements.
    let gguf: Vec<&str> = covered
        .iter()
        .filter(|(_, s)| s == "gguf")
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(gguf.len(), 13, "gguf vectors: {gguf:?}");
}
