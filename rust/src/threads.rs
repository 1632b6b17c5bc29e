//! The thread pool the bindings run kernels in.
//!
//! A rayon pool's worker threads do not survive `fork()`: a child (a torch DataLoader worker, a
//! multiprocessing "fork" child) that used the parent's pool would wait on threads that do not exist.
//! As in huggingface/tokenizers, the pool remembers the pid that built it; a process whose pid differs
//! falls back to one thread unless `DDM_NUM_THREADS` asks otherwise. The thread count is, in order:
//! `DDM_NUM_THREADS`, then `RAYON_NUM_THREADS` (as rayon reads it), then the number of CPUs; both are
//! read at every call, so a change takes effect on the next call (a new pool is built).
//! The kernels' results never depend on the thread count (counter-based randomness).

use std::sync::{Arc, Mutex};

/// The requested thread count from the environment, if any (a positive integer; anything else is
/// ignored, as rayon does with `RAYON_NUM_THREADS`).
fn env_threads(var: &str) -> Option<usize> {
    std::env::var(var)
        .ok()?
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
}

/// The thread count a call made now should use, given whether this process is a fork of the one that
/// first built the pool.
pub fn wanted_threads(forked: bool) -> usize {
    if let Some(n) = env_threads("DDM_NUM_THREADS") {
        return n;
    }
    if forked {
        return 1;
    }
    env_threads("RAYON_NUM_THREADS")
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

struct PoolState {
    /// The pid of the process that built the first pool (None before any pool).
    origin_pid: Option<u32>,
    /// The current pool: (pid that built it, thread count, pool).
    pool: Option<(u32, usize, Arc<rayon::ThreadPool>)>,
}

static STATE: Mutex<PoolState> = Mutex::new(PoolState {
    origin_pid: None,
    pool: None,
});

/// The pool for a kernel call in this process, built (or rebuilt after a fork or a change of the
/// environment variables) as needed.
pub fn pool() -> Result<Arc<rayon::ThreadPool>, String> {
    let pid = std::process::id();
    // A poisoned lock only means another thread panicked while holding it; the state is still valid.
    let mut st = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let origin = *st.origin_pid.get_or_insert(pid);
    let n = wanted_threads(origin != pid);
    if let Some((p, k, pool)) = &st.pool {
        if *p == pid && *k == n {
            return Ok(Arc::clone(pool));
        }
    }
    if st.pool.as_ref().is_some_and(|(p, _, _)| *p != pid) {
        // The old pool's threads do not exist in this process: never run its destructor here (it
        // would try to signal them). Leaking it costs only its bookkeeping memory.
        if let Some((_, _, old)) = st.pool.take() {
            std::mem::forget(old);
        }
    }
    let built = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("ddm-{i}"))
        .build()
        .map_err(|e| format!("could not start {n} threads: {e}"))?;
    let built = Arc::new(built);
    st.pool = Some((pid, n, Arc::clone(&built)));
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fork_falls_back_to_one_thread() {
        // Only the decision is tested here (the environment is shared by the test threads, so it is
        // read, not changed); tests/test_native.py forks for real.
        if std::env::var_os("DDM_NUM_THREADS").is_none() {
            assert_eq!(wanted_threads(true), 1);
        }
        assert!(wanted_threads(false) >= 1);
    }

    #[test]
    fn the_pool_is_reused() {
        let a = pool().unwrap();
        let b = pool().unwrap();
        assert!(Arc::ptr_eq(&a, &b) || std::env::var_os("DDM_NUM_THREADS").is_some());
        assert_eq!(a.install(|| 1 + 1), 2);
    }
}
