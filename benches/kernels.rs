//! Criterion benches of the pure-Rust kernels (no Python): the fused float32 exp pass over one row (the
//! one every reverse step makes), and the
//! reverse steps on a GPT-2-sized vocabulary (dim 50258) with half the positions masked.
//! Run with `cargo bench --bench kernels`; the Python-level comparison is `benches/compare.py`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

use _core::categorical::{exp_blocks_f32, BLOCK};
use _core::proposal::{proposal_step, Transform};
use _core::{reverse_step, Graph, GraphKind, RngKey, StepKind};

const N: usize = 50_257;

/// Deterministic pseudo-random log-scores in [-16, -8): typical of a trained model's off-token scores.
fn log_scores(n: usize) -> Vec<f32> {
    let mut z = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            z ^= z << 13;
            z ^= z >> 7;
            z ^= z << 17;
            -16.0 + 8.0 * ((z >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

fn bench_exp(c: &mut Criterion) {
    let src = log_scores(N + 1);
    let mut cache = vec![0.0; src.len()];
    let mut bs = vec![0.0; src.len().div_ceil(BLOCK)];
    let mut g = c.benchmark_group("exp_blocks_f32");
    g.throughput(Throughput::Elements(src.len() as u64));
    g.bench_function("row_50258", |b| {
        b.iter(|| exp_blocks_f32(black_box(&src), -8.0, &mut cache, &mut bs))
    });
    g.bench_function("sum_50258", |b| {
        b.iter(|| black_box(&src).iter().map(|&v| v as f64).sum::<f64>())
    });
    g.finish();
}

fn bench_steps(c: &mut Criterion) {
    let (batch, len) = (1, 64);
    let ls = log_scores(batch * len * (N + 1));
    let x: Vec<i64> = (0..batch * len)
        .map(|j| if j % 2 == 0 { N as i64 } else { (j % N) as i64 })
        .collect();
    let level = vec![0.05; batch];
    let mut out = vec![0i64; x.len()];
    let key = RngKey::new(0, 0, 0);
    let abs = Graph::new(GraphKind::Absorbing, N).unwrap();
    let mut g = c.benchmark_group("steps_1x64x50258");
    g.throughput(Throughput::Elements((batch * len * (N + 1)) as u64));
    g.sample_size(20);
    g.bench_function("absorbing_analytic_half_masked", |b| {
        b.iter(|| {
            reverse_step(StepKind::Analytic, abs, &x, &ls, &level, len, key, &mut out).unwrap()
        })
    });
    let uni = Graph::new(GraphKind::Uniform, N + 1).unwrap();
    let xu: Vec<i64> = (0..batch * len)
        .map(|j| (j * 7919 % (N + 1)) as i64)
        .collect();
    g.bench_function("uniform_analytic", |b| {
        b.iter(|| {
            reverse_step(
                StepKind::Analytic,
                uni,
                &xu,
                &ls,
                &level,
                len,
                key,
                &mut out,
            )
            .unwrap()
        })
    });
    g.bench_function("uniform_euler", |b| {
        b.iter(|| reverse_step(StepKind::Euler, uni, &xu, &ls, &level, len, key, &mut out).unwrap())
    });
    // The transformed steps (temperature; top-k and top-p) on the same rows.
    for (name, tf) in [
        ("proposal_t0.8", Transform::new(0.8, None, None).unwrap()),
        (
            "proposal_k50_p0.9",
            Transform::new(1.0, Some(50), Some(0.9)).unwrap(),
        ),
    ] {
        g.bench_function(format!("absorbing_analytic_{name}"), |b| {
            b.iter(|| {
                proposal_step(
                    StepKind::Analytic,
                    abs,
                    &x,
                    &ls,
                    &level,
                    len,
                    key,
                    tf,
                    &mut out,
                )
                .unwrap()
            })
        });
        g.bench_function(format!("uniform_analytic_{name}"), |b| {
            b.iter(|| {
                proposal_step(
                    StepKind::Analytic,
                    uni,
                    &xu,
                    &ls,
                    &level,
                    len,
                    key,
                    tf,
                    &mut out,
                )
                .unwrap()
            })
        });
    }
    g.bench_function("sum_pass", |b| {
        b.iter(|| black_box(&ls).iter().map(|&v| v as f64).sum::<f64>())
    });
    g.finish();
}

criterion_group!(benches, bench_exp, bench_steps);
criterion_main!(benches);
