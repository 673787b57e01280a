//! The host's persistent compute thread pool.
//!
//! Two ways to use it (DESIGN.md, "Threads belong to the host"):
//!
//! - [`ThreadPool::parallel_for`]: fork-join over `n_tasks` tasks handed out by an atomic
//!   counter (dynamic chunking: fast threads take more tasks).
//! - [`ThreadPool::run_on_all`]: every thread runs the same closure once, at the same time, and
//!   synchronises between dependent steps with a cheap [`Barrier`]. This is llama.cpp's model
//!   ("every thread walks the op list"): one wake-up per forward pass instead of one per op.
//!
//! In both, the calling thread takes part as thread 0, so a pool of `n` threads spawns `n - 1`.
//!
//! # How a borrowed closure reaches persistent threads without `unsafe`
//!
//! `f` is borrowed from the caller's stack (`&dyn Fn`), yet runs on threads that were started
//! long before it existed. Safe Rust cannot express that: the only std tool for lending stack
//! data to other threads, `std::thread::scope`, spawns new threads each time, and erasing the
//! lifetime by hand needs `unsafe` (forbidden in the host outside the mmap and plugin-loader
//! modules). So the hand-off is delegated to **`rayon-core`**, whose
//! [`ThreadPool::in_place_scope`](rayon_core::ThreadPool::in_place_scope) +
//! [`Scope::spawn_broadcast`](rayon_core::Scope::spawn_broadcast) run a borrowed closure once
//! on every worker of a persistent pool and block until all have finished with it (rayon keeps
//! the `unsafe` for this inside, audited and widely used). Our code has no `unsafe`.
//!
//! What stays ours, and what is rayon's:
//!
//! - **Ours**: the task counter, the [`Barrier`] (spin → `yield_now` → park on a `Condvar`,
//!   timings in [`SpinConfig`]), the caller's wait for the workers at the end of a call
//!   (spin → yield before falling back to rayon's blocking latch), panic capture, pinning
//!   (workers are our own `std::thread`s, started through rayon's `spawn_handler`), and join on
//!   drop.
//! - **Rayon's**: how an idle worker waits for the next call. Rayon workers that find no work
//!   call `yield_now()` for 32 rounds and then sleep on a condition variable, so an idle pool
//!   uses no CPU and an oversubscribed machine is yielded to, but the length of that spin is not
//!   tunable. That is the only wait not under [`SpinConfig`]; it is paid once per call, which is
//!   why the hot path of a forward pass should be one `run_on_all` with barriers inside rather
//!   than one `parallel_for` per op (see the overhead numbers in the pool tests).
//!
//! # Panics
//!
//! A panic in `f` on any thread is caught there (`catch_unwind`), the call finishes, and the
//! call returns `Err(PoolPanic)` on the calling thread (the first panic; call
//! [`PoolPanic::resume`] to re-raise it). The pool stays usable. After a panic,
//! `parallel_for` hands out no further tasks, and `run_on_all` poisons its barrier so the other
//! threads leave their `wait()` (by unwinding out of `f`) instead of waiting forever for the
//! thread that died.
//!
//! # Pinning and the calling thread
//!
//! With `pin_to`, worker `i` (1..n) is pinned to CPU `pin_to[i]` when it starts, and the thread
//! that calls [`ThreadPool::new`] is pinned to `pin_to[0]` right away. Threads inherit their
//! creator's affinity, so create the pool on the thread that will drive inference, not on a
//! thread that later spawns unrelated threads.

#![forbid(unsafe_code)]

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a waiting thread busy-spins, then yields, before it parks.
///
/// The default spins only 2 µs. Measured on the 2-vCPU dev VM (2 threads, a barrier every
/// ~1–3 µs of work): on a quiet machine the spin length barely matters (0.69 µs per step with
/// 20 µs of spin, 0.78 µs with 2 µs, 0.99 µs with none: a `yield_now` costs ~0.5 µs), but with
/// a third busy process the scheduler often puts both pool threads on one CPU, and then every
/// barrier costs the whole spin before the yield lets the other thread run (22.8 µs per step
/// with 20 µs of spin, 5.2 µs with 2 µs, 2.8 µs with none; pure spinning ranged from 1.5 µs to
/// 270 µs depending on placement). Pinned threads on otherwise idle cores can afford a longer
/// spin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpinConfig {
    /// Busy-wait (`std::hint::spin_loop`) this long first: the cheapest wake-up when the other
    /// threads are running on their own cores.
    pub spin: Duration,
    /// Then call `std::thread::yield_now()` in a loop for this long: still reacts within about a
    /// microsecond on an idle machine, but hands the core to a descheduled peer when the machine
    /// is oversubscribed (the case where pure spinning collapses). After that, park.
    pub yield_for: Duration,
}

impl Default for SpinConfig {
    fn default() -> Self {
        SpinConfig {
            spin: Duration::from_micros(2),
            yield_for: Duration::from_micros(1000),
        }
    }
}

/// Options for [`ThreadPool::with_config`].
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Waits inside a call: [`Barrier::wait`] (spin, yield, then park) and the caller's wait for
    /// the workers at the end of a call (spin, yield, then rayon's blocking latch).
    pub wait: SpinConfig,
    /// Stack size of worker threads in bytes; `None` for Rust's default (2 MiB).
    pub stack_size: Option<usize>,
    /// Worker threads are named `{name_prefix}-{index}`.
    pub name_prefix: String,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            wait: SpinConfig::default(),
            stack_size: None,
            name_prefix: "llmhost-pool".to_string(),
        }
    }
}

/// A panic raised by the closure of a [`ThreadPool`] call, returned on the calling thread.
pub struct PoolPanic {
    thread_index: usize,
    task_index: Option<usize>,
    message: String,
    // In a Mutex only so that PoolPanic is Sync (and so converts into io::Error, anyhow, ...).
    payload: Mutex<Box<dyn Any + Send>>,
}

impl PoolPanic {
    fn new(thread_index: usize, task_index: Option<usize>, payload: Box<dyn Any + Send>) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "non-string panic payload".to_string()
        };
        PoolPanic {
            thread_index,
            task_index,
            message,
            payload: Mutex::new(payload),
        }
    }

    /// The pool thread that panicked (0 is the calling thread).
    pub fn thread_index(&self) -> usize {
        self.thread_index
    }

    /// The `parallel_for` task that panicked; `None` for `run_on_all`.
    pub fn task_index(&self) -> Option<usize> {
        self.task_index
    }

    /// The panic message (`"non-string panic payload"` when the payload is not a string).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The original panic payload.
    pub fn into_payload(self) -> Box<dyn Any + Send> {
        self.payload
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Re-raises the original panic on the current thread.
    pub fn resume(self) -> ! {
        panic::resume_unwind(self.into_payload())
    }
}

impl fmt::Debug for PoolPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolPanic")
            .field("thread_index", &self.thread_index)
            .field("task_index", &self.task_index)
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for PoolPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pool thread {} panicked", self.thread_index)?;
        if let Some(task) = self.task_index {
            write!(f, " in task {task}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for PoolPanic {}

/// Unwind payload used to get threads out of a poisoned [`Barrier`]; never reported.
struct BarrierPoisoned;

/// A reusable spin barrier for the threads of one [`ThreadPool::run_on_all`] call.
///
/// [`wait`](Barrier::wait) returns once all `n_threads` threads have called it (for the current
/// phase). Waiting spins, then yields, then parks, per the pool's [`SpinConfig`]. If another
/// thread of the call panicked, `wait` unwinds (the call then reports that panic).
pub struct Barrier {
    n: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
    spin: SpinConfig,
}

impl Barrier {
    fn new(n: usize, spin: SpinConfig) -> Barrier {
        Barrier {
            n,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            spin,
        }
    }

    /// Number of threads that must reach the barrier.
    pub fn n_threads(&self) -> usize {
        self.n
    }

    /// Blocks until every thread of the call has reached this barrier.
    pub fn wait(&self) {
        if self.poisoned.load(Ordering::Acquire) {
            panic::resume_unwind(Box::new(BarrierPoisoned));
        }
        if self.n <= 1 {
            return;
        }
        let gen = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            // Last to arrive: reset for the next phase, then release the others. Nobody can
            // arrive for the next phase before seeing the new generation, which is published
            // after the reset.
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.store(gen.wrapping_add(1), Ordering::SeqCst);
            self.wake_sleepers();
            return;
        }
        let released = || {
            self.generation.load(Ordering::Acquire) != gen || self.poisoned.load(Ordering::Acquire)
        };
        if !spin_then_yield(&self.spin, released) {
            // Park. SeqCst on `sleepers` and on `generation`/`poisoned` pairs with the SeqCst
            // store + `sleepers` load in the releasing thread: either it sees us sleeping and
            // notifies (under the lock, so after we are in `wait`), or we see the new state.
            let mut guard = lock(&self.lock);
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            while self.generation.load(Ordering::SeqCst) == gen
                && !self.poisoned.load(Ordering::SeqCst)
            {
                guard = self.cv.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        if self.generation.load(Ordering::Acquire) == gen {
            // Released by poisoning, not by the last arrival.
            panic::resume_unwind(Box::new(BarrierPoisoned));
        }
    }

    fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
        self.wake_sleepers();
    }

    fn wake_sleepers(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = lock(&self.lock);
            self.cv.notify_all();
        }
    }
}

/// Waits until `done()` is true: busy-spins for `cfg.spin`, then yields for `cfg.yield_for`.
/// Returns false if it gave up (the caller then blocks by other means).
fn spin_then_yield(cfg: &SpinConfig, mut done: impl FnMut() -> bool) -> bool {
    if done() {
        return true;
    }
    let start = Instant::now();
    while start.elapsed() < cfg.spin {
        for _ in 0..32 {
            std::hint::spin_loop();
            if done() {
                return true;
            }
        }
    }
    let give_up = cfg.spin + cfg.yield_for;
    loop {
        std::thread::yield_now();
        if done() {
            return true;
        }
        if start.elapsed() >= give_up {
            return false;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static NEXT_POOL_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// (pool id, thread index) of the pool calls this thread is currently executing, innermost
    /// last. Used to detect nested calls on the same pool, which would deadlock.
    static ACTIVE: RefCell<Vec<(usize, usize)>> = const { RefCell::new(Vec::new()) };
}

/// Marks the current thread as executing a call of pool `id` as `thread_index` while alive.
struct ActiveGuard;

impl ActiveGuard {
    fn enter(id: usize, thread_index: usize) -> ActiveGuard {
        ACTIVE.with(|a| a.borrow_mut().push((id, thread_index)));
        ActiveGuard
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        ACTIVE.with(|a| {
            a.borrow_mut().pop();
        });
    }
}

/// The thread index the current thread has in an ongoing call of pool `id`, if any.
fn active_index(id: usize) -> Option<usize> {
    ACTIVE.with(|a| {
        a.borrow()
            .iter()
            .rev()
            .find(|(pool, _)| *pool == id)
            .map(|(_, t)| *t)
    })
}

/// First reported panic of a call.
struct PanicSlot(Mutex<Option<PoolPanic>>);

impl PanicSlot {
    fn new() -> Self {
        PanicSlot(Mutex::new(None))
    }

    fn record(&self, thread_index: usize, task_index: Option<usize>, payload: Box<dyn Any + Send>) {
        if payload.is::<BarrierPoisoned>() {
            return; // a consequence of another thread's panic, not a cause
        }
        let mut slot = lock(&self.0);
        if slot.is_none() {
            *slot = Some(PoolPanic::new(thread_index, task_index, payload));
        }
    }

    fn into_result(self) -> Result<(), PoolPanic> {
        match self.0.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(p) => Err(p),
            None => Ok(()),
        }
    }
}

/// The host's persistent compute thread pool. See the [module docs](self).
pub struct ThreadPool {
    n_threads: usize,
    id: usize,
    /// `None` when `n_threads == 1`.
    workers: Option<rayon_core::ThreadPool>,
    handles: Vec<JoinHandle<()>>,
    wait: SpinConfig,
    /// Serialises calls from different threads: each call uses every worker, and a thread index
    /// is never in use by two threads at once (kernels may key per-thread scratch on it).
    call_lock: Mutex<()>,
    pin_failures: Arc<AtomicUsize>,
}

impl ThreadPool {
    /// A pool of `n_threads` threads: the calling thread (thread 0) plus `n_threads - 1` spawned
    /// workers. With `pin_to`, thread `i` is pinned to CPU `pin_to[i]` (see the module docs on
    /// the calling thread). Errors: `n_threads == 0`, `pin_to` shorter than `n_threads`, or a
    /// thread that cannot be spawned. A CPU that cannot be pinned to is not an error; see
    /// [`pin_failures`](Self::pin_failures).
    pub fn new(n_threads: usize, pin_to: Option<Vec<usize>>) -> io::Result<ThreadPool> {
        ThreadPool::with_config(n_threads, pin_to, PoolConfig::default())
    }

    /// [`new`](Self::new) with explicit wait timings, stack size and thread names.
    pub fn with_config(
        n_threads: usize,
        pin_to: Option<Vec<usize>>,
        config: PoolConfig,
    ) -> io::Result<ThreadPool> {
        if n_threads == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a thread pool needs at least one thread",
            ));
        }
        if let Some(pins) = &pin_to {
            if pins.len() < n_threads {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("pin_to lists {} CPUs for {n_threads} threads", pins.len()),
                ));
            }
        }
        let pin_failures = Arc::new(AtomicUsize::new(0));
        let pin = |cpu: usize, failures: &AtomicUsize| {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        };
        if let Some(pins) = &pin_to {
            pin(pins[0], &pin_failures);
        }

        let mut handles = Vec::with_capacity(n_threads - 1);
        let workers = if n_threads > 1 {
            let prefix = config.name_prefix.clone();
            let stack_size = config.stack_size;
            let pool = rayon_core::ThreadPoolBuilder::new()
                .num_threads(n_threads - 1)
                .spawn_handler(|thread| {
                    let index = thread.index() + 1;
                    let cpu = pin_to.as_ref().map(|p| p[index]);
                    let failures = Arc::clone(&pin_failures);
                    let mut builder = std::thread::Builder::new().name(format!("{prefix}-{index}"));
                    if let Some(size) = stack_size {
                        builder = builder.stack_size(size);
                    }
                    let handle = builder.spawn(move || {
                        if let Some(cpu) = cpu {
                            pin(cpu, &failures);
                        }
                        thread.run();
                    })?;
                    handles.push(handle);
                    Ok(())
                })
                .build();
            match pool {
                Ok(pool) => Some(pool),
                // Rayon terminates the threads it already started; they exit on their own.
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        } else {
            None
        };

        Ok(ThreadPool {
            n_threads,
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            workers,
            handles,
            wait: config.wait,
            call_lock: Mutex::new(()),
            pin_failures,
        })
    }

    /// Number of threads, the calling thread included.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// How many threads could not be pinned to their CPU (0 without `pin_to`). Workers pin
    /// themselves as they start, so this may still grow right after [`new`](Self::new).
    pub fn pin_failures(&self) -> usize {
        self.pin_failures.load(Ordering::Relaxed)
    }

    /// Runs `f(task_index, thread_index)` for every task in `0..n_tasks`, spread over the pool;
    /// tasks are handed out one at a time by an atomic counter. Returns when all are done (or,
    /// after a panic, when every thread has stopped taking tasks: the remaining tasks are
    /// skipped and the first panic is returned).
    ///
    /// The calling thread takes part as thread 0. With one thread, or one task, it runs inline
    /// without waking the workers. Called from inside `f` of a call on the same pool, it runs
    /// inline on the current thread with that thread's index (nested calls do not fan out).
    pub fn parallel_for(
        &self,
        n_tasks: usize,
        f: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<(), PoolPanic> {
        if n_tasks == 0 {
            return Ok(());
        }
        let next = AtomicUsize::new(0);
        let panics = PanicSlot::new();
        let body = |thread_index: usize| loop {
            let task = next.fetch_add(1, Ordering::Relaxed);
            if task >= n_tasks {
                break;
            }
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| f(task, thread_index))) {
                panics.record(thread_index, Some(task), payload);
                next.store(n_tasks, Ordering::Relaxed);
                break;
            }
        };
        if let Some(t) = active_index(self.id) {
            body(t);
        } else if self.n_threads == 1 || n_tasks == 1 {
            let _serial = lock(&self.call_lock);
            let _active = ActiveGuard::enter(self.id, 0);
            body(0);
        } else {
            self.broadcast(&body, &|t, payload| panics.record(t, None, payload));
        }
        panics.into_result()
    }

    /// Runs `f(thread_index, n_threads, &barrier)` once on every thread of the pool at the same
    /// time (the calling thread is thread 0) and returns when all have returned.
    /// `barrier.wait()` separates dependent steps.
    ///
    /// # Panics
    ///
    /// Panics (on the caller) when called from inside `f` of a call on the same pool: the other
    /// threads are busy in the outer call, so the inner one could never gather them.
    pub fn run_on_all(&self, f: &(dyn Fn(usize, usize, &Barrier) + Sync)) -> Result<(), PoolPanic> {
        assert!(
            active_index(self.id).is_none(),
            "ThreadPool::run_on_all called from inside a call on the same pool"
        );
        let n = self.n_threads;
        let barrier = Barrier::new(n, self.wait);
        let panics = PanicSlot::new();
        let body = |t: usize| f(t, n, &barrier);
        let on_panic = |t: usize, payload: Box<dyn Any + Send>| {
            panics.record(t, None, payload);
            barrier.poison();
        };
        if n == 1 {
            let _serial = lock(&self.call_lock);
            let _active = ActiveGuard::enter(self.id, 0);
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| body(0))) {
                on_panic(0, payload);
            }
        } else {
            self.broadcast(&body, &on_panic);
        }
        panics.into_result()
    }

    /// Runs `body(t)` on every thread `t` in `0..n_threads` (0 = the caller) and waits for all.
    /// Panics in `body` are caught per thread and passed to `on_panic`.
    fn broadcast(
        &self,
        body: &(dyn Fn(usize) + Sync),
        on_panic: &(dyn Fn(usize, Box<dyn Any + Send>) + Sync),
    ) {
        let workers = self
            .workers
            .as_ref()
            .expect("a pool with more than one thread has workers");
        let _serial = lock(&self.call_lock);
        let id = self.id;
        let run = |t: usize| {
            let _active = ActiveGuard::enter(id, t);
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| body(t))) {
                on_panic(t, payload);
            }
        };
        let n_workers = self.n_threads - 1;
        let finished = AtomicUsize::new(0);
        workers.in_place_scope(|scope| {
            scope.spawn_broadcast(|_, ctx| {
                run(ctx.index() + 1);
                finished.fetch_add(1, Ordering::Release);
            });
            run(0);
            // Spin/yield for the workers before rayon's scope end blocks on a condvar; usually
            // they finish within the spin and the scope then ends without sleeping.
            spin_then_yield(&self.wait, || finished.load(Ordering::Acquire) == n_workers);
        });
    }
}

impl fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPool")
            .field("n_threads", &self.n_threads)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl Drop for ThreadPool {
    /// Stops the workers and joins their threads. Calls cannot be in flight (they borrow the
    /// pool), so the workers are idle and exit promptly.
    fn drop(&mut self) {
        drop(self.workers.take()); // rayon: terminate the registry; idle workers then exit
        for handle in self.handles.drain(..) {
            // Worker bodies catch every panic, so a join error is not expected; nothing to add.
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_then_yield_gives_up() {
        let cfg = SpinConfig {
            spin: Duration::from_micros(5),
            yield_for: Duration::from_micros(50),
        };
        let t = Instant::now();
        assert!(!spin_then_yield(&cfg, || false));
        assert!(t.elapsed() >= Duration::from_micros(55));
        assert!(spin_then_yield(&cfg, || true));
    }

    #[test]
    fn single_thread_barrier_is_free() {
        let b = Barrier::new(1, SpinConfig::default());
        for _ in 0..10 {
            b.wait();
        }
    }

    #[test]
    fn send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ThreadPool>();
        check::<PoolPanic>();
        check::<Barrier>();
    }

    #[test]
    fn bad_arguments() {
        assert!(ThreadPool::new(0, None).is_err());
        assert!(ThreadPool::new(3, Some(vec![0, 1])).is_err());
    }
}
