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

    /// Gives back to the kernel this process's resident pages of `bytes()[offset..offset +
    /// len]`: only the whole pages inside the range (its start rounded up, its end rounded
    /// down to the page size), so bytes just outside it stay resident. The bytes themselves do
    /// not change: a later read of a released page faults it in again from the file. Returns
    /// how many bytes were released (0 for a range without a whole page). Unix only; a no-op
    /// elsewhere.
    pub fn release_pages(&self, offset: usize, len: usize) -> std::io::Result<usize> {
        let map_len = self.map.len();
        let end = offset.checked_add(len).filter(|&end| end <= map_len);
        let Some(end) = end else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bytes {offset}..+{len} are outside the mapping of {map_len} bytes"),
            ));
        };
        #[cfg(unix)]
        {
            let page = page_size();
            // Round in address space: the mapping starts on a page boundary, but do not
            // rely on it.
            let base = self.map.as_ptr() as usize;
            let first = (base + offset).next_multiple_of(page) - base;
            let last = (base + end) / page * page - base;
            if last <= first {
                return Ok(0);
            }
            // SAFETY: MADV_DONTNEED is "unchecked" because on memory a process wrote (an
            // anonymous or a written private mapping) it silently replaces the contents under
            // any live `&[u8]`. This mapping is read-only (PROT_READ), file-backed and never
            // written, so every page it drops is a clean copy of the file: the next access
            // re-reads the same bytes from the unchanged file (the contract of `open`: nobody
            // modifies a mapped model file). Slices borrowed from `bytes()` therefore keep
            // seeing the same values; nothing relies on the pages staying resident, only on
            // their contents. `first..last` is page-aligned and inside the mapping (checked
            // above), as madvise requires.
            unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    first,
                    last - first,
                )?;
            }
            Ok(last - first)
        }
        #[cfg(not(unix))]
        {
            let _ = end;
            Ok(0)
        }
    }
}

/// The size of a memory page (4096 where the system will not say).
#[cfg(unix)]
fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf only reads a system constant; _SC_PAGESIZE exists on every Unix
        // and touches no memory of ours.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n)
            .ok()
            .filter(|n| n.is_power_of_two())
            .unwrap_or(4096)
    })
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

    #[test]
    fn released_pages_read_back_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pages.bin");
        #[cfg(unix)]
        let page = page_size();
        #[cfg(not(unix))]
        let page = 4096;
        let data: Vec<u8> = (0..5 * page + 123)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        std::fs::write(&p, &data).unwrap();
        let m = MappedFile::open(&p).unwrap();
        assert_eq!(m.bytes(), &data[..]);
        let whole = |n: usize| if cfg!(unix) { n * page } else { 0 };
        // From byte 100 for three pages: pages 1 and 2 are whole inside it.
        assert_eq!(m.release_pages(100, 3 * page).unwrap(), whole(2));
        assert_eq!(m.bytes(), &data[..]);
        // Exactly aligned; the whole file (its partial last page stays).
        assert_eq!(m.release_pages(page, page).unwrap(), whole(1));
        assert_eq!(m.release_pages(0, data.len()).unwrap(), whole(5));
        assert_eq!(m.bytes(), &data[..]);
        // Nothing whole inside: empty, less than a page, straddling one boundary.
        assert_eq!(m.release_pages(10, 0).unwrap(), 0);
        assert_eq!(m.release_pages(10, page - 20).unwrap(), 0);
        assert_eq!(m.release_pages(page - 10, page).unwrap(), 0);
        // Outside the mapping.
        assert!(m.release_pages(data.len() - 1, 2).is_err());
        assert!(m.release_pages(usize::MAX, 2).is_err());
        assert_eq!(m.bytes(), &data[..]);
    }
}
