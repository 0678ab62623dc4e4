//! Parser throughput on a large realistic listener log (every format, stack
//! traces, look-alikes, real conflicts): goal >= 200 MB/s per core.
//!
//! `cargo bench -p arc-watchdog --bench parse`

use std::hint::black_box;
use std::time::Duration;

use arc_watchdog::parser::{ListenerEvent, Parser, sample_log};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Size of the generated log.
const LOG_BYTES: usize = 32 << 20;
/// Read size of a log follower or a file reader.
const CHUNK: usize = 64 << 10;

fn count_events(p: &mut Parser, data: &[u8]) -> u64 {
    let mut n = 0u64;
    for chunk in data.chunks(CHUNK) {
        p.push(chunk, |e| n += u64::from(e.event != ListenerEvent::Other));
    }
    p.finish(|e| n += u64::from(e.event != ListenerEvent::Other));
    n
}

/// Every line with a `kubectl logs --timestamps` prefix, as `run` reads it.
fn with_timestamps(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 4);
    for line in data.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(b"2026-03-02T04:10:02.123456789Z ");
        out.extend_from_slice(line);
    }
    out
}

fn parse(c: &mut Criterion) {
    let plain = sample_log(LOG_BYTES);
    let stamped = with_timestamps(&plain);
    let mut group = c.benchmark_group("parser");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Bytes(plain.len() as u64));
    group.bench_function("plain_64k_chunks", |b| {
        b.iter(|| count_events(&mut Parser::new(), black_box(&plain)))
    });
    group.throughput(Throughput::Bytes(stamped.len() as u64));
    group.bench_function("kubectl_timestamps_64k_chunks", |b| {
        b.iter(|| count_events(&mut Parser::new(), black_box(&stamped)))
    });
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
