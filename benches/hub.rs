//! In-process fan-out: one pre-encoded frame queued for N connections, and
//! every queue drained again inside the timed part, so the figure is the
//! whole cost a broadcast puts on the server short of the socket writes.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wsnotify::hub::{Hub, Kind};
use wsnotify::metrics::Metrics;
use wsnotify::protocol::text_frame;

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub_fanout");
    for subscribers in [1_000usize, 10_000] {
        for payload in [64usize, 1024] {
            let hub = Arc::new(Hub::new(1024, Arc::new(Metrics::new())));
            let regs: Vec<_> = (0..subscribers)
                .map(|i| hub.register(format!("user-{i}").into(), None))
                .collect();
            let frame = text_frame(&"x".repeat(payload));
            let mut sink: VecDeque<Bytes> = VecDeque::with_capacity(4);
            group.throughput(Throughput::Elements(subscribers as u64));
            let id = BenchmarkId::new(
                format!("payload_{payload}B"),
                format!("{subscribers}_subscribers"),
            );
            group.bench_function(id, |b| {
                b.iter(|| {
                    let fanout = hub.broadcast(black_box(&frame), None);
                    for reg in &regs {
                        reg.outbox().drain_into(&mut sink);
                        sink.clear();
                    }
                    fanout
                })
            });
        }
    }
    group.finish();
}

/// A room message to 1k members among 10k connections, against the baseline
/// of a broadcast to a hub holding just those 1k: the room index should make
/// a room cost its members, not the registry.
fn rooms(c: &mut Criterion) {
    let mut group = c.benchmark_group("room_fanout");
    let frame = text_frame(&"x".repeat(64));
    let mut sink: VecDeque<Bytes> = VecDeque::with_capacity(4);
    group.throughput(Throughput::Elements(1_000));

    let alone = Arc::new(Hub::new(1024, Arc::new(Metrics::new())));
    let members: Vec<_> = (0..1_000)
        .map(|i| alone.register(format!("user-{i}").into(), None))
        .collect();
    group.bench_function("baseline_broadcast_1000_of_1000", |b| {
        b.iter(|| {
            let fanout = alone.broadcast(black_box(&frame), None);
            for reg in &members {
                reg.outbox().drain_into(&mut sink);
                sink.clear();
            }
            fanout
        })
    });

    let crowded = Arc::new(Hub::new(1024, Arc::new(Metrics::new())));
    let mut regs: Vec<_> = (0..10_000)
        .map(|i| crowded.register_as(Kind::Json, format!("user-{i}").into(), None))
        .collect();
    // Every tenth connection in the busy room, the rest in rooms of ten.
    for (i, reg) in regs.iter_mut().enumerate() {
        let room = if i % 10 == 0 {
            "busy".to_owned()
        } else {
            format!("quiet-{}", i / 10)
        };
        reg.join(&room, &[]);
    }
    for reg in &regs {
        // The rosters and presence events of the set-up.
        reg.outbox().drain_into(&mut sink);
        sink.clear();
    }
    let members: Vec<_> = regs.iter().step_by(10).collect();
    group.bench_function("room_1000_of_10000", |b| {
        b.iter(|| {
            let fanout = crowded.send_to_room("busy", black_box(&frame), None);
            for reg in &members {
                reg.outbox().drain_into(&mut sink);
                sink.clear();
            }
            fanout
        })
    });
    group.finish();
}

criterion_group!(benches, fanout, rooms);
criterion_main!(benches);
