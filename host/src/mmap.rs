//! Read-only memory maps of whole files: the one place in the host where a model file's bytes
//! come from. Everything that reads them (the GGUF parser, the tensors handed to plugins)
//! works on the safe `&[u8]` this module hands out.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A read-only mapping of a whole file. It owns the mapping; the bytes stay valid (and at the
/// same address) until it is dropped. Cheap to open: no byte is read until it is touched.
pub struct MappedFile {
    map: memmap2::Mmap,
    path: PathBuf,
}

impl MappedFile {
    /// Maps the file at `path` read-only. An empty file maps to an empty slice.
    pub fn open(path: &Path) -> std::io::Result<MappedFile> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if usize::try_from(len).is_err() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("the file is {len} bytes, more than this machine can map"),
            ));
        }
        // SAFETY: `Mmap::map` is unsafe only because the file could change under the `&[u8]`
        // it hands out. The mapping is read-only (PROT_READ) and nothing in llmhost writes to
        // model files, so this process never mutates the bytes; the slice borrows `self`, so
        // it cannot outlive the mapping. The remaining risk is another process truncating or
        // rewriting the file while it is mapped (the mapping is shared with the page cache):
        // reads past the new end then fault (SIGBUS) and rewritten bytes show through. That is
        // the contract llama.cpp and every mmap-based loader accept; users must not modify a
        // model file while llmhost has it open.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(MappedFile {
            map,
            path: path.to_owned(),
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The path it was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedFile")
            .field("path", &self.path)
            .field("len", &self.map.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn maps_a_file_and_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        std::fs::File::create(&p)
            .unwrap()
            .write_all(b"hello mmap")
            .unwrap();
        let m = MappedFile::open(&p).unwrap();
        assert_eq!(m.bytes(), b"hello mmap");
        assert_eq!(m.path(), p);

        let e = dir.path().join("empty.bin");
        std::fs::File::create(&e).unwrap();
        let m = MappedFile::open(&e).unwrap();
        assert!(m.bytes().is_empty());

        assert!(MappedFile::open(&dir.path().join("missing")).is_err());
    }
}
