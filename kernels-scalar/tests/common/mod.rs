//! Readers for the test-vector files of `testdata/` (formats in testdata/README.md).

#![allow(dead_code)] // each test crate uses part of this

use plugin_api::GgmlType;
use std::path::{Path, PathBuf};

/// The `.bin` files of `testdata/<sub>`, sorted by name.
pub fn vector_files(sub: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(sub);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    files.sort();
    files
}

/// A vector file: its type, its record count, and a cursor over the records.
pub struct VectorFile {
    pub name: String,
    pub dtype: GgmlType,
    pub records: u32,
    data: Vec<u8>,
    pos: usize,
}

impl VectorFile {
    pub fn open(path: &Path, magic: &[u8; 4]) -> VectorFile {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(&data[..4], magic, "{name}: bad magic");
        let mut f = VectorFile {
            name,
            dtype: GgmlType::F32,
            records: 0,
            data,
            pos: 4,
        };
        let t = f.u32();
        f.dtype = GgmlType::from_u32(t).unwrap_or_else(|| panic!("{}: unknown type {t}", f.name));
        f.records = f.u32();
        f
    }

    pub fn u32(&mut self) -> u32 {
        let b = self.bytes(4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        assert!(self.pos + n <= self.data.len(), "{}: truncated", self.name);
        let out = self.data[self.pos..self.pos + n].to_vec();
        self.pos += n;
        out
    }

    pub fn f32s(&mut self, n: usize) -> Vec<f32> {
        self.bytes(4 * n)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// Asserts every byte was read.
    pub fn finish(self) {
        assert_eq!(self.pos, self.data.len(), "{}: trailing bytes", self.name);
    }
}

/// Bit-for-bit equality, except that any NaN equals any NaN (payloads are not compared).
pub fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}
