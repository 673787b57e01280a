//! The host's thread pool as plugins see it. Threads belong to the host: kernels split their
//! work with [`ThreadPool::parallel_for`] and never spawn threads of their own.

use crate::guard::catch_panic;
use abi_stable::{sabi_trait, sabi_trait::prelude::TD_Opaque, sabi_types::RRef};
use std::sync::Mutex;

/// One unit of work handed to the pool: called once per task index, on any pool thread.
#[sabi_trait]
pub trait TaskBody: Sync {
    /// `task` is in `0..n_tasks`; `thread` is the index of the pool thread running it.
    fn run(&self, task: usize, thread: usize);
}

/// The host's persistent thread pool.
#[sabi_trait]
pub trait ThreadPool: Sync {
    /// Number of threads that may run tasks (the calling thread included).
    fn n_threads(&self) -> usize;

    /// Runs `body` for every task in `0..n_tasks` and returns when all have finished.
    /// Tasks are handed out dynamically, so tasks may differ in cost.
    #[sabi(last_prefix_field)]
    fn parallel_for(&self, n_tasks: usize, body: TaskBody_TO<'_, RRef<'_, ()>>);
}

/// The pool reference every op receives.
pub type PoolRef<'a> = ThreadPool_TO<'a, RRef<'a, ()>>;

/// Wraps a Rust closure into a pool task and runs it. A panic inside `f` never unwinds through
/// the host's pool threads: it is caught on the thread that ran the task, the remaining tasks
/// still run, and the first panic message comes back as `Err` on the caller.
pub fn parallel_for<F>(pool: &PoolRef<'_>, n_tasks: usize, f: F) -> Result<(), String>
where
    F: Fn(usize, usize) + Sync,
{
    struct Guarded<F> {
        f: F,
        panic: Mutex<Option<String>>,
    }
    impl<F: Fn(usize, usize) + Sync> TaskBody for Guarded<F> {
        fn run(&self, task: usize, thread: usize) {
            if let Err(message) = catch_panic(|| (self.f)(task, thread)) {
                let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(message);
            }
        }
    }

    if n_tasks == 0 {
        return Ok(());
    }
    let guarded = Guarded {
        f,
        panic: Mutex::new(None),
    };
    if n_tasks == 1 || pool.n_threads() <= 1 {
        // Not worth a wake-up of the pool.
        for task in 0..n_tasks {
            guarded.run(task, 0);
        }
    } else {
        pool.parallel_for(n_tasks, TaskBody_TO::from_ptr(&guarded, TD_Opaque));
    }
    match guarded
        .panic
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
    {
        None => Ok(()),
        Some(msg) => Err(format!("panic in a parallel task: {msg}")),
    }
}

/// The text of a panic payload (`&str` or `String`), or a placeholder.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// A pool that runs everything on the calling thread: for tests and single-threaded callers.
pub struct InlinePool;

impl ThreadPool for InlinePool {
    fn n_threads(&self) -> usize {
        1
    }

    fn parallel_for(&self, n_tasks: usize, body: TaskBody_TO<'_, RRef<'_, ()>>) {
        for task in 0..n_tasks {
            body.run(task, 0);
        }
    }
}

impl InlinePool {
    /// A [`PoolRef`] to a static inline pool, for any borrow lifetime of the op arguments.
    pub fn pool_ref<'a>() -> PoolRef<'a> {
        static INLINE: InlinePool = InlinePool;
        ThreadPool_TO::from_ptr(&INLINE, TD_Opaque)
    }
}

/// A pool that runs tasks on `n` threads spawned for each call, handing tasks out through an
/// atomic counter: for tests of kernel plugins, so that their splitting of work and output is
/// exercised on real threads without the host's pool.
pub struct SpawningPool(pub usize);

impl ThreadPool for SpawningPool {
    fn n_threads(&self) -> usize {
        self.0.max(1)
    }

    fn parallel_for(&self, n_tasks: usize, body: TaskBody_TO<'_, RRef<'_, ()>>) {
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for thread in 0..self.0.max(1) {
                let (next, body) = (&next, &body);
                s.spawn(move || loop {
                    let task = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if task >= n_tasks {
                        break;
                    }
                    body.run(task, thread);
                });
            }
        });
    }
}

impl SpawningPool {
    /// This pool as the [`PoolRef`] ops take.
    pub fn pool_ref(&self) -> PoolRef<'_> {
        ThreadPool_TO::from_ptr(self, TD_Opaque)
    }
}
