//! Criterion benches of every kernel of the Rust core, pure Rust (no Python): forward corruption and the
//! Euler, analytic and denoise steps, on both graphs, for dims 5, 28 (character models) and 50258
//! (GPT-2 vocabulary + MASK). Throughput is in tokens (positions of `[B, L]`), so criterion reports
//! tokens/s; the rayon thread count is printed first (set it with `RAYON_NUM_THREADS`).
//!
//! Run with `cargo bench --bench steps` (one group: `cargo bench --bench steps -- analytic/`); CI only
//! builds it (`cargo bench --no-run`). The side-by-side comparison against torch and against a read pass
//! over the log-scores is `benches/compare.py` (see BENCHMARKS.md).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use _core::graphs::jump_probability;
use _core::keyed::CounterKey;
use _core::{corrupt, reverse_step, Graph, GraphKind, RngKey, StepKind};

/// The three state-space sizes: a 4-letter alphabet + MASK, 27 characters + MASK, GPT-2 + MASK.
const DIMS: [usize; 3] = [5, 28, 50_258];

/// xorshift64: deterministic inputs without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1) from the top 24 bits.
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `[B, L]` positions per step for a dim: about 2^12 tokens for small dims, and for dim 50258 a
/// `[1, 64]` batch (13 MB of log-scores: well beyond the caches, like the real `[4, 256]` case).
fn shape(dim: usize) -> (usize, usize) {
    if dim > 1000 {
        (1, 64)
    } else {
        (4, 1024)
    }
}

/// The graph of `dim` states: absorbing has `dim - 1` real ids, uniform `dim`.
fn graph(absorbing: bool, dim: usize) -> Graph {
    let kind = if absorbing {
        GraphKind::Absorbing
    } else {
        GraphKind::Uniform
    };
    Graph::new(kind, dim - absorbing as usize).expect("valid vocab size")
}

/// Tokens: absorbing has every other position MASK (half the rows are read), uniform any id.
fn tokens(g: Graph, n: usize, rng: &mut XorShift) -> Vec<i64> {
    (0..n)
        .map(|j| match g.mask() {
            Some(m) if j % 2 == 0 => m,
            _ => (rng.next() % g.vocab_size as u64) as i64,
        })
        .collect()
}

/// Log-scores in [-12, -4): the order of a trained model's off-token log-ratios.
fn log_scores(n: usize, rng: &mut XorShift) -> Vec<f32> {
    (0..n).map(|_| -12.0 + 8.0 * rng.unit()).collect()
}

fn bench_steps(c: &mut Criterion) {
    eprintln!(
        "ddm criterion benches: {} rayon threads (RAYON_NUM_THREADS to change)",
        rayon::current_num_threads()
    );
    // Noise levels of a 1024-step log-linear sampler mid-way: the cost does not depend on them.
    let steps = [
        (StepKind::Euler, 1e-3),
        (StepKind::Analytic, 1e-3),
        (StepKind::Denoise, 1e-5),
    ];
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for (kind, level) in steps {
        let mut group = c.benchmark_group(kind.name());
        for dim in DIMS {
            let (batch, len) = shape(dim);
            let n = batch * len;
            let ls = log_scores(n * dim, &mut rng);
            let levels = vec![level; batch];
            let mut out = vec![0i64; n];
            group.throughput(Throughput::Elements(n as u64));
            if dim > 1000 {
                group
                    .sample_size(20)
                    .measurement_time(Duration::from_secs(4));
            } else {
                group
                    .sample_size(50)
                    .measurement_time(Duration::from_secs(3));
            }
            for absorbing in [true, false] {
                let g = graph(absorbing, dim);
                let x = tokens(g, n, &mut rng);
                let id = BenchmarkId::new(if absorbing { "absorb" } else { "uniform" }, dim);
                let mut k = 0u64;
                group.bench_with_input(id, &dim, |b, _| {
                    b.iter(|| {
                        k += 1;
                        reverse_step(
                            kind,
                            g,
                            black_box(&x),
                            black_box(&ls),
                            &levels,
                            len,
                            RngKey::new(7, k, 0),
                            &mut out,
                        )
                        .expect("step runs");
                        black_box(&out);
                    })
                });
            }
        }
        group.finish();
    }
}

fn bench_corrupt(c: &mut Criterion) {
    let (batch, len) = (64, 1024);
    let n = batch * len;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let p_move: Vec<f64> = (0..batch)
        .map(|b| jump_probability(0.1 + 4.0 * b as f64 / batch as f64))
        .collect();
    let mut out = vec![0i64; n];
    let mut group = c.benchmark_group("corrupt");
    group.throughput(Throughput::Elements(n as u64));
    for dim in DIMS {
        for absorbing in [true, false] {
            let g = graph(absorbing, dim);
            // Clean data: no MASK in the input.
            let x: Vec<i64> = (0..n)
                .map(|_| (rng.next() % g.vocab_size as u64) as i64)
                .collect();
            let id = BenchmarkId::new(if absorbing { "absorb" } else { "uniform" }, dim);
            let mut k = 0u64;
            group.bench_with_input(id, &dim, |b, _| {
                b.iter(|| {
                    k += 1;
                    corrupt(
                        g,
                        black_box(&x),
                        &p_move,
                        len,
                        CounterKey::new(7, 0x5eed_0003, k, 0),
                        &mut out,
                    )
                    .expect("corrupt runs");
                    black_box(&out);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_steps, bench_corrupt);
criterion_main!(benches);
