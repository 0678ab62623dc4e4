//! Cost of handling one AdmissionReview of a listener pod against its
//! floor.
//!
//! `admission/review` is everything the webhook does with a body on
//! `/mutate` apart from HTTP: parse the review, decide, build the JSON
//! patch, serialise the answer ([`review::handle`]). `admission/floor` is
//! the least any JSON webhook must do with the same bytes: a bare
//! `serde_json` parse into a `Value` and a serialisation of it. Both run in
//! the same criterion run so that their ratio means something on a shared
//! machine; `arc-watchdog-bench admission-vs-floor` reads the two
//! estimates back from `target/criterion/admission/*/new/estimates.json`.

// Bench set-up may panic: a wrong input must stop the bench, not skew it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use arc_watchdog_webhook::mutation::{InjectConfig, SidecarMode};
use arc_watchdog_webhook::review::{self, Outcome};
use criterion::{Criterion, criterion_group, criterion_main};

/// A real 0.14.2 listener pod CREATE, as the golden tests use it.
const REVIEW: &[u8] = include_bytes!("../tests/golden/inputs/listener-0.14.2.json");

/// The review as the API server sends it: compact JSON.
fn compact_review() -> Vec<u8> {
    let value: serde_json::Value = serde_json::from_slice(REVIEW).expect("golden input is JSON");
    serde_json::to_vec(&value).expect("a Value serialises")
}

fn admission(c: &mut Criterion) {
    let body = compact_review();
    let cfg = InjectConfig::new("ghcr.io/example/arc-watchdog:0.1.0");

    // The bench measures the injecting path: make sure that is what runs.
    let first = review::handle(&body, &cfg, SidecarMode::Native);
    assert_eq!(first.status, 200);
    assert_eq!(first.outcome, Outcome::Injected(SidecarMode::Native));

    let mut group = c.benchmark_group("admission");
    group.bench_function("review", |b| {
        b.iter(|| {
            let result = review::handle(black_box(&body), &cfg, SidecarMode::Native);
            black_box(result.body)
        });
    });
    group.bench_function("floor", |b| {
        b.iter(|| {
            let value: serde_json::Value = serde_json::from_slice(black_box(&body)).unwrap();
            black_box(serde_json::to_vec(&value).unwrap())
        });
    });
    group.finish();
}

criterion_group!(benches, admission);
criterion_main!(benches);
