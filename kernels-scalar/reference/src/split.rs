//! Safe splitting of an output buffer into disjoint rows that parallel tasks can fill.
//!
//! Each row sits behind its own (uncontended) mutex, so tasks running on different pool
//! threads can write their rows without `unsafe`; the lock costs nanoseconds against rows of
//! hundreds of elements.

use std::sync::{Mutex, MutexGuard};

/// `n_rows` rows of `row_len` elements, `stride` elements apart, carved out of `buf`.
pub struct Rows<'a, T> {
    rows: Vec<Mutex<&'a mut [T]>>,
}

impl<'a, T> Rows<'a, T> {
    /// Splits `buf`; the caller has checked that `buf` holds all rows.
    pub fn new(buf: &'a mut [T], n_rows: usize, row_len: usize, stride: usize) -> Self {
        debug_assert!(stride >= row_len);
        let mut rows = Vec::with_capacity(n_rows);
        let mut rest = buf;
        for r in 0..n_rows {
            let (row, tail) = rest.split_at_mut(row_len);
            rows.push(Mutex::new(row));
            rest = if r + 1 < n_rows {
                &mut tail[stride - row_len..]
            } else {
                tail
            };
        }
        Rows { rows }
    }

    /// Each of `n_rows` rows cut further into pieces of at most `chunk` elements; piece `c` of
    /// row `r` is `row(r * pieces_per_row + c)` with `pieces_per_row = row_len.div_ceil(chunk)`.
    pub fn chunked(
        buf: &'a mut [T],
        n_rows: usize,
        row_len: usize,
        stride: usize,
        chunk: usize,
    ) -> Self {
        let whole = Rows::new(buf, n_rows, row_len, stride);
        let mut rows = Vec::with_capacity(n_rows * row_len.div_ceil(chunk.max(1)));
        for row in whole.rows {
            let row = row.into_inner().unwrap_or_else(|e| e.into_inner());
            rows.extend(row.chunks_mut(chunk.max(1)).map(Mutex::new));
        }
        Rows { rows }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Row `i`, for the one task that owns it.
    pub fn row(&self, i: usize) -> MutexGuard<'_, &'a mut [T]> {
        self.rows[i].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Number of elements a buffer must hold for `n_rows` rows of `row_len`, `stride` apart.
pub fn span(n_rows: usize, row_len: usize, stride: usize) -> Option<usize> {
    if n_rows == 0 {
        return Some(0);
    }
    (n_rows - 1).checked_mul(stride)?.checked_add(row_len)
}
