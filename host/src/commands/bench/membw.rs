//! Sustained memory read bandwidth, STREAM-style, in safe Rust: the ceiling decode speed is
//! held against (a decode step streams every weight once, so bytes per token × tokens per
//! second cannot exceed it).
//!
//! A buffer much larger than the last-level cache is filled (so its pages are real, not the
//! shared zero page, and are first touched by the threads that later read them), then the
//! threads of a pool pinned like the inference pool read disjoint slices of it at the same
//! time, summing u64s into independent accumulators. The time runs from a barrier all threads
//! pass before reading to a barrier all pass after; bandwidth = buffer bytes / that time. Best
//! of several runs, as STREAM reports.

use crate::pool::ThreadPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The sum of `data`. Integer addition is associative, so LLVM's loop vectoriser turns this
/// reduction into vector loads and adds into several independent vector accumulators
/// (checked in the binaries: on baseline x86-64, at opt-level 2 and 3, two interleaved `paddq`
/// chains over 16-byte `movdqu` loads; with AVX2 enabled, `vpaddq` on ymm registers). An
/// explicit array of scalar accumulators vectorises only at opt-level 3 (the SLP vectoriser),
/// so the plain fold is the form that vectorises in every profile. `#[inline(never)]` keeps
/// it one symbol to find in a disassembly.
#[inline(never)]
pub fn sum_u64(data: &[u64]) -> u64 {
    data.iter().fold(0u64, |s, &x| s.wrapping_add(x))
}

/// One thread count's result.
#[derive(Debug, Clone)]
pub struct Bandwidth {
    pub n_threads: usize,
    pub buffer_bytes: u64,
    /// Bytes per second of each run, in order.
    pub samples: Vec<f64>,
}

impl Bandwidth {
    pub fn best(&self) -> f64 {
        self.samples.iter().copied().fold(0.0, f64::max)
    }
}

/// The buffer, split into one slice per thread of `pool`; each thread fills its own slice
/// (first touch places its pages near the thread on NUMA machines). Non-zero content: pages
/// of zeros that were never written would all map the one shared zero page, and reading
/// that measures the cache.
pub fn make_buffer(pool: &ThreadPool, bytes: u64) -> anyhow::Result<Vec<u64>> {
    let n = usize::try_from(bytes / 8).map_err(|_| anyhow::anyhow!("buffer too large"))?;
    let mut buf: Vec<u64> = Vec::new();
    buf.try_reserve_exact(n).map_err(|_| {
        anyhow::anyhow!(
            "cannot allocate a {} MiB buffer for the bandwidth test: lower --bw-size-mib",
            bytes >> 20
        )
    })?;
    buf.resize(n, 0);
    let parts: Vec<Mutex<&mut [u64]>> = split_mut(&mut buf, pool.n_threads())
        .into_iter()
        .map(Mutex::new)
        .collect();
    pool.run_on_all(&|t, _, _| {
        let mut part = parts[t].lock().unwrap_or_else(|e| e.into_inner());
        let base = t as u64 * 0x9E37_79B9;
        for (i, x) in part.iter_mut().enumerate() {
            *x = base ^ i as u64;
        }
    })
    .map_err(|e| anyhow::anyhow!("filling the bandwidth buffer: {e}"))?;
    drop(parts);
    Ok(buf)
}

/// `data` in `n` contiguous slices of nearly equal length (slice `i` for thread `i`).
fn split_mut(data: &mut [u64], n: usize) -> Vec<&mut [u64]> {
    let n = n.max(1);
    let per = data.len().div_ceil(n).max(1);
    let mut parts: Vec<&mut [u64]> = data.chunks_mut(per).collect();
    while parts.len() < n {
        parts.push(&mut []);
    }
    parts
}

/// The range of `len` elements thread `t` of `n` reads: the same split as [`split_mut`].
fn part(len: usize, t: usize, n: usize) -> std::ops::Range<usize> {
    let per = len.div_ceil(n.max(1)).max(1);
    (t * per).min(len)..((t + 1) * per).min(len)
}

/// Reads `buf` `runs` times with every thread of `pool`, each its own slice, and returns
/// the bandwidth of each run.
pub fn measure(pool: &ThreadPool, buf: &[u64], runs: usize) -> anyhow::Result<Bandwidth> {
    let n = pool.n_threads();
    let checksum = AtomicU64::new(0);
    let elapsed = Mutex::new(Duration::ZERO);
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        pool.run_on_all(&|t, n, barrier| {
            let slice = &buf[part(buf.len(), t, n)];
            barrier.wait();
            let start = Instant::now();
            let s = sum_u64(std::hint::black_box(slice));
            checksum.fetch_add(s, Ordering::Relaxed);
            barrier.wait();
            if t == 0 {
                *elapsed.lock().unwrap_or_else(|e| e.into_inner()) = start.elapsed();
            }
        })
        .map_err(|e| anyhow::anyhow!("bandwidth run on {n} threads: {e}"))?;
        let secs = elapsed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_secs_f64()
            .max(1e-9);
        samples.push(std::mem::size_of_val(buf) as f64 / secs);
    }
    std::hint::black_box(checksum.load(Ordering::Relaxed));
    Ok(Bandwidth {
        n_threads: n,
        buffer_bytes: std::mem::size_of_val(buf) as u64,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_covers_every_element_and_the_tail() {
        let v: Vec<u64> = (1..=37).collect();
        assert_eq!(sum_u64(&v), 37 * 38 / 2);
        assert_eq!(sum_u64(&[]), 0);
        assert_eq!(sum_u64(&[u64::MAX, 2]), 1);
    }

    #[test]
    fn parts_cover_the_buffer_exactly_once() {
        for len in [0usize, 1, 5, 16, 17, 1000] {
            for n in 1..6 {
                let mut covered = vec![0u8; len];
                for t in 0..n {
                    for i in part(len, t, n) {
                        covered[i] += 1;
                    }
                }
                assert!(covered.iter().all(|&c| c == 1), "len {len} n {n}");
                let mut data = vec![0u64; len];
                let sizes: Vec<usize> = split_mut(&mut data, n).iter().map(|p| p.len()).collect();
                let expect: Vec<usize> = (0..n).map(|t| part(len, t, n).len()).collect();
                assert_eq!(sizes, expect, "len {len} n {n}");
            }
        }
    }

    #[test]
    fn measure_reads_a_small_buffer() {
        let pool = ThreadPool::new(2, None).unwrap();
        let buf = make_buffer(&pool, 1 << 20).unwrap();
        assert_eq!(buf.len(), (1 << 20) / 8);
        assert!(buf.iter().any(|&x| x != 0));
        let bw = measure(&pool, &buf, 3).unwrap();
        assert_eq!(bw.samples.len(), 3);
        assert!(bw.best() > 0.0);
    }
}
