//! The persistent thread pool: every task exactly once, barrier phases, panics, drop, nesting,
//! and a printed (not asserted) overhead micro-benchmark:
//! `cargo test -p llmhost --release --test pool -- --nocapture --test-threads=1 overhead`.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llmhost::pool::{PoolConfig, SpinConfig, ThreadPool};

fn counters(n: usize) -> Vec<AtomicUsize> {
    (0..n).map(|_| AtomicUsize::new(0)).collect()
}

fn check_exactly_once(pool: &ThreadPool, n_tasks: usize) {
    let runs = counters(n_tasks);
    let n = pool.n_threads();
    pool.parallel_for(n_tasks, &|task, thread| {
        assert!(
            thread < n,
            "thread index {thread} out of range for {n} threads"
        );
        runs[task].fetch_add(1, Ordering::Relaxed);
    })
    .unwrap();
    for (task, r) in runs.iter().enumerate() {
        assert_eq!(r.load(Ordering::Relaxed), 1, "task {task} of {n_tasks}");
    }
}

#[test]
fn every_task_runs_exactly_once() {
    for n_threads in 1..=5 {
        let pool = ThreadPool::new(n_threads, None).unwrap();
        assert_eq!(pool.n_threads(), n_threads);
        for n_tasks in [0, 1, 2, 3, 4, 5, 7, 17, 64, 1000, 10_000] {
            check_exactly_once(&pool, n_tasks);
        }
    }
}

#[test]
fn workers_take_part() {
    let pool = ThreadPool::new(2, None).unwrap();
    let per_thread = counters(2);
    pool.parallel_for(40, &|_, t| {
        per_thread[t].fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1));
    })
    .unwrap();
    let counts: Vec<usize> = per_thread
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), 40);
    assert!(counts[1] > 0, "worker never ran a task: {counts:?}");
}

/// Each phase: every thread bumps a counter, waits, checks that all `n` bumps are visible,
/// waits again. Any barrier that lets a thread through early breaks the check.
fn check_phases(pool: &ThreadPool, phases: usize, skew: bool) {
    let n = pool.n_threads();
    let counter = AtomicUsize::new(0);
    let seen = counters(n);
    pool.run_on_all(&|t, n_threads, barrier| {
        assert_eq!(n_threads, n);
        assert_eq!(barrier.n_threads(), n);
        seen[t].fetch_add(1, Ordering::Relaxed);
        for phase in 0..phases {
            if skew && t == phase % n {
                // One late thread per phase: the others must spin, yield and park.
                std::thread::sleep(Duration::from_micros(300));
            }
            counter.fetch_add(1, Ordering::Relaxed);
            barrier.wait();
            assert_eq!(
                counter.load(Ordering::Relaxed),
                n * (phase + 1),
                "phase {phase}"
            );
            barrier.wait();
        }
    })
    .unwrap();
    assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
}

#[test]
fn run_on_all_barrier_phases() {
    for n_threads in 1..=4 {
        let pool = ThreadPool::new(n_threads, None).unwrap();
        check_phases(&pool, 500, false);
        check_phases(&pool, 500, false); // reuse
    }
}

#[test]
fn barrier_parks_and_wakes() {
    // Tiny spin/yield budgets so that the late thread makes the others park on the condvar.
    let config = PoolConfig {
        wait: SpinConfig {
            spin: Duration::from_micros(1),
            yield_for: Duration::from_micros(20),
        },
        ..PoolConfig::default()
    };
    for n_threads in [2, 3] {
        let pool = ThreadPool::with_config(n_threads, None, config.clone()).unwrap();
        check_phases(&pool, 20, true);
        check_exactly_once(&pool, 1000);
    }
}

#[test]
fn panic_in_parallel_for_is_returned_and_pool_survives() {
    let pool = ThreadPool::new(3, None).unwrap();
    for round in 0..3 {
        let ran = AtomicUsize::new(0);
        let err = pool
            .parallel_for(200, &|task, _| {
                if task == 7 {
                    panic!("boom {task}");
                }
                ran.fetch_add(1, Ordering::Relaxed);
            })
            .unwrap_err();
        assert_eq!(err.task_index(), Some(7), "round {round}");
        assert_eq!(err.message(), "boom 7");
        assert!(err.thread_index() < 3);
        assert!(err.to_string().contains("in task 7: boom 7"), "{err}");
        assert!(ran.load(Ordering::Relaxed) < 200);
        check_exactly_once(&pool, 1000);
    }
    // A single-thread pool reports the same way.
    let single = ThreadPool::new(1, None).unwrap();
    let err = single
        .parallel_for(3, &|t, _| assert_ne!(t, 2))
        .unwrap_err();
    assert_eq!(err.task_index(), Some(2));
}

#[test]
fn panic_in_run_on_all_does_not_deadlock_the_barrier() {
    for n_threads in [2, 3, 4] {
        let pool = ThreadPool::new(n_threads, None).unwrap();
        for victim in [0, n_threads - 1] {
            let err = pool
                .run_on_all(&|t, _, barrier| {
                    barrier.wait();
                    if t == victim {
                        panic!("thread {t} gives up");
                    }
                    // The others wait for the victim, which never comes: poisoned.
                    barrier.wait();
                    barrier.wait();
                })
                .unwrap_err();
            assert_eq!(err.thread_index(), victim);
            assert_eq!(err.task_index(), None);
            assert_eq!(err.message(), format!("thread {victim} gives up"));
            check_phases(&pool, 50, false);
        }
    }
}

#[test]
#[should_panic(expected = "original payload")]
fn pool_panic_resumes_the_original_panic() {
    let pool = ThreadPool::new(2, None).unwrap();
    pool.run_on_all(&|t, _, _| {
        if t == 1 {
            std::panic::panic_any(String::from("original payload"));
        }
    })
    .unwrap_or_else(|p| p.resume());
}

struct Canary(Arc<AtomicUsize>);

impl Drop for Canary {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

thread_local! {
    static CANARY: RefCell<Option<Canary>> = const { RefCell::new(None) };
}

#[test]
fn drop_joins_worker_threads() {
    for n_threads in [2, 4] {
        let exited = Arc::new(AtomicUsize::new(0));
        let pool = ThreadPool::new(n_threads, None).unwrap();
        pool.run_on_all(&|t, _, _| {
            if t != 0 {
                // Dropped by the worker thread's TLS destructors, i.e. only when it exits.
                CANARY.with(|c| *c.borrow_mut() = Some(Canary(Arc::clone(&exited))));
            }
        })
        .unwrap();
        assert_eq!(exited.load(Ordering::SeqCst), 0);
        drop(pool);
        assert_eq!(exited.load(Ordering::SeqCst), n_threads - 1);
    }
}

#[test]
fn nested_calls() {
    let pool = ThreadPool::new(3, None).unwrap();
    // parallel_for inside parallel_for runs inline on the current thread, same thread index.
    let runs = counters(10 * 10);
    pool.parallel_for(10, &|outer, thread| {
        pool.parallel_for(10, &|inner, inner_thread| {
            assert_eq!(inner_thread, thread);
            runs[outer * 10 + inner].fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
    })
    .unwrap();
    assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1));
    // run_on_all inside a call on the same pool cannot work: it panics, which the outer call
    // reports.
    let err = pool
        .parallel_for(1, &|_, _| {
            let _ = pool.run_on_all(&|_, _, _| {});
        })
        .unwrap_err();
    assert!(
        err.message().contains("inside a call on the same pool"),
        "{err}"
    );
    check_exactly_once(&pool, 100);
}

#[test]
fn concurrent_callers_are_serialised() {
    let pool = Arc::new(ThreadPool::new(3, None).unwrap());
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || {
                for _ in 0..50 {
                    check_exactly_once(&pool, 100);
                    check_phases(&pool, 5, false);
                }
            })
        })
        .collect();
    for c in callers {
        c.join().unwrap();
    }
}

#[test]
fn pinned_pool() {
    // On a thread of its own: pinning changes the calling thread's affinity.
    std::thread::spawn(|| {
        let topo = llmhost::cpu::Topology::detect();
        let n = topo.physical_cores().min(4);
        let pins = topo.pin_plan(n);
        let pool = ThreadPool::new(n, Some(pins.clone())).unwrap();
        let affinity = Mutex::new(vec![Vec::new(); n]);
        pool.run_on_all(&|t, _, _| {
            let ids = core_affinity::get_core_ids().unwrap_or_default();
            affinity.lock().unwrap()[t] = ids.into_iter().map(|c| c.id).collect();
        })
        .unwrap();
        if cfg!(target_os = "linux") && pool.pin_failures() == 0 {
            let affinity = affinity.into_inner().unwrap();
            for (t, cpus) in affinity.iter().enumerate() {
                assert_eq!(cpus, &vec![pins[t]], "thread {t}");
            }
        }
        check_exactly_once(&pool, 1000);
    })
    .join()
    .unwrap();
}

/// CPU time (ns) a thread has run, from `/proc/<pid>/task/<tid>/schedstat`.
#[cfg(target_os = "linux")]
fn thread_runtime_ns(task: &std::path::Path) -> Option<u64> {
    let text =
        std::fs::read_to_string(std::path::Path::new("/proc").join(task).join("schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(target_os = "linux")]
#[test]
fn idle_pool_uses_no_cpu() {
    let pool = ThreadPool::new(3, None).unwrap();
    let tasks = Mutex::new(Vec::new());
    pool.run_on_all(&|t, _, _| {
        if t != 0 {
            // "<pid>/task/<tid>" of this worker.
            tasks
                .lock()
                .unwrap()
                .push(std::fs::read_link("/proc/thread-self").unwrap());
        }
    })
    .unwrap();
    let tasks = tasks.into_inner().unwrap();
    let total = || -> Option<u64> { tasks.iter().map(|t| thread_runtime_ns(t)).sum() };
    std::thread::sleep(Duration::from_millis(50)); // past the workers' spin/yield rounds
    let (Some(before), ()) = (total(), std::thread::sleep(Duration::from_millis(300))) else {
        return; // no schedstat on this kernel
    };
    let used = Duration::from_nanos(total().unwrap() - before);
    assert!(
        used < Duration::from_millis(5),
        "idle workers used {used:?} of CPU in 300 ms"
    );
    check_exactly_once(&pool, 100); // and wake up again
}

fn per_call(iters: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..iters / 10 {
        f(); // warm-up
    }
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed() / iters
}

/// Printed, not asserted: per-call overhead of the pool with 2 threads.
#[test]
fn overhead_microbenchmark() {
    let pool = ThreadPool::new(2, None).unwrap();
    let iters = 5_000;
    let empty_pf = per_call(iters, || pool.parallel_for(2, &|_, _| {}).unwrap());
    let empty_pf64 = per_call(iters, || pool.parallel_for(64, &|_, _| {}).unwrap());
    let inline_pf = per_call(iters, || pool.parallel_for(1, &|_, _| {}).unwrap());
    let empty_all = per_call(iters, || pool.run_on_all(&|_, _, _| {}).unwrap());
    let barriers = 20_000u32;
    let start = Instant::now();
    pool.run_on_all(&|_, _, b| {
        for _ in 0..barriers {
            b.wait();
        }
    })
    .unwrap();
    let per_barrier = start.elapsed() / barriers;
    // After the workers have gone to sleep: includes the condvar wake-up.
    let mut cold = Duration::ZERO;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(5));
        let t = Instant::now();
        pool.parallel_for(2, &|_, _| {}).unwrap();
        cold += t.elapsed();
    }
    cold /= 20;
    let spawn = per_call(2_000, || {
        std::thread::scope(|s| {
            s.spawn(|| {});
        })
    });
    println!("pool overhead, 2 threads ({iters} calls each):");
    println!("  parallel_for, 2 empty tasks        {empty_pf:>10.2?} / call");
    println!("  parallel_for, 64 empty tasks       {empty_pf64:>10.2?} / call");
    println!("  parallel_for, 1 task (inline)      {inline_pf:>10.2?} / call");
    println!("  run_on_all, empty                  {empty_all:>10.2?} / call");
    println!("  Barrier::wait inside run_on_all    {per_barrier:>10.2?} / barrier");
    println!("  parallel_for after 5 ms idle       {cold:>10.2?} / call");
    println!("  (std::thread::scope + 1 spawn      {spawn:>10.2?} / call)");
}
