//! Hands the host's [`ThreadPool`](crate::pool::ThreadPool) to plugins as the ABI's
//! [`PoolRef`]: kernels call `parallel_for` through it and the tasks run on the host's threads.

use crate::pool::ThreadPool;
use plugin_api::{
    abi_stable::{sabi_trait::prelude::TD_Opaque, sabi_types::RRef},
    pool::{TaskBody_TO, ThreadPool_TO},
    PoolRef,
};

/// The host pool seen through the plugin ABI.
pub struct PoolBridge<'p> {
    pool: &'p ThreadPool,
}

impl<'p> PoolBridge<'p> {
    pub fn new(pool: &'p ThreadPool) -> Self {
        PoolBridge { pool }
    }

    /// The reference to pass in op calls.
    pub fn as_pool_ref(&self) -> PoolRef<'_> {
        ThreadPool_TO::from_ptr(self, TD_Opaque)
    }
}

impl plugin_api::ThreadPool for PoolBridge<'_> {
    fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    fn parallel_for(&self, n_tasks: usize, body: TaskBody_TO<'_, RRef<'_, ()>>) {
        // Task bodies made by `plugin_api::parallel_for` catch their own panics, so this only
        // fails for a hand-made body; the pool has already caught the panic on its thread and
        // stays usable, and the plugin's op sees its own missing results.
        if let Err(panic) = self
            .pool
            .parallel_for(n_tasks, &|task, thread| body.run(task, thread))
        {
            tracing::error!("a plugin task panicked on pool thread: {}", panic.message());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn tasks_run_on_host_threads_once_each() {
        let pool = ThreadPool::new(2, None).unwrap();
        let bridge = PoolBridge::new(&pool);
        let pool_ref = bridge.as_pool_ref();
        let hits: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
        plugin_api::parallel_for(&pool_ref, hits.len(), |task, thread| {
            assert!(thread < 2);
            hits[task].fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn a_panicking_task_is_an_error_and_the_pool_survives() {
        let pool = ThreadPool::new(2, None).unwrap();
        let bridge = PoolBridge::new(&pool);
        let pool_ref = bridge.as_pool_ref();
        let err = plugin_api::parallel_for(&pool_ref, 8, |task, _| {
            if task == 3 {
                panic!("task three fails");
            }
        })
        .unwrap_err();
        assert!(err.contains("task three fails"), "{err}");
        let count = AtomicUsize::new(0);
        plugin_api::parallel_for(&pool_ref, 8, |_, _| {
            count.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }
}
