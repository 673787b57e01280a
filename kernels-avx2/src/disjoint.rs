//! Parallel tasks writing disjoint parts of one output buffer.
//!
//! The pool runs tasks on several threads at once, each filling its own rows of a shared
//! output. Splitting the buffer into `&mut` pieces up front (as `kernels-scalar` does, with a
//! mutex per piece) costs an allocation and a lock per piece; in the matmul's hot path we
//! instead hand every task the same raw view and rely on the task grid being disjoint.

use std::marker::PhantomData;

/// A `&mut [T]` shared by parallel tasks that write non-overlapping ranges of it.
pub struct DisjointSlice<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: the view only hands out ranges through `range_mut`, whose contract makes concurrent
// ranges disjoint; `T: Send` lets those ranges be written from other threads.
unsafe impl<T: Send> Sync for DisjointSlice<'_, T> {}
// SAFETY: as above; the view owns the exclusive borrow for `'a`.
unsafe impl<T: Send> Send for DisjointSlice<'_, T> {}

impl<'a, T> DisjointSlice<'a, T> {
    pub fn new(slice: &'a mut [T]) -> Self {
        DisjointSlice {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _borrow: PhantomData,
        }
    }

    /// `len` elements from `start`.
    ///
    /// # Safety
    /// No other live reference (from another call, on any thread) may overlap the range.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn range_mut(&self, start: usize, len: usize) -> &mut [T] {
        assert!(
            start <= self.len && len <= self.len - start,
            "range {start}+{len} outside a buffer of {}",
            self.len
        );
        // SAFETY: in bounds (checked above) of the slice borrowed for 'a; exclusivity is the
        // caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}
