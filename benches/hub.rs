//! In-process fan-out: one pre-encoded frame queued for N connections, and
//! every queue drained again inside the timed part, so the figure is the
//! whole cost a broadcast puts on the server short of the socket writes.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wsnotify::hub::{Audience, Hub, QueueBounds, Registration};
use wsnotify::metrics::Metrics;
use wsnotify::outbox::Item;
use wsnotify::protocol::{Dialect, text_frame};

/// A hub with the server's default queue bounds.
fn hub() -> Arc<Hub> {
    let bounds = QueueBounds {
        frames: 1024,
        bytes: 16 << 20,
    };
    Arc::new(Hub::new(bounds, Arc::new(Metrics::new())))
}

/// `n` connections speaking `dialect`.
fn connect(hub: &Arc<Hub>, dialect: Dialect, n: usize) -> Vec<Registration> {
    (0..n)
        .map(|i| hub.register(dialect, format!("user-{i}").into(), None))
        .collect()
}

const PLAIN: Audience = Audience::Only(Dialect::Text);

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub_fanout");
    for subscribers in [1_000usize, 10_000] {
        for payload in [64usize, 1024] {
            let hub = hub();
            let regs = connect(&hub, Dialect::Text, subscribers);
            let frame = text_frame(&"x".repeat(payload));
            let mut sink: VecDeque<Item> = VecDeque::with_capacity(4);
            group.throughput(Throughput::Elements(subscribers as u64));
            let id = BenchmarkId::new(
                format!("payload_{payload}B"),
                format!("{subscribers}_subscribers"),
            );
            group.bench_function(id, |b| {
                b.iter(|| {
                    let fanout = hub.send_to_audience(PLAIN, black_box(&frame), None);
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
    let mut sink: VecDeque<Item> = VecDeque::with_capacity(4);
    group.throughput(Throughput::Elements(1_000));

    let alone = hub();
    let members = connect(&alone, Dialect::Text, 1_000);
    group.bench_function("baseline_broadcast_1000_of_1000", |b| {
        b.iter(|| {
            let fanout = alone.send_to_audience(PLAIN, black_box(&frame), None);
            for reg in &members {
                reg.outbox().drain_into(&mut sink);
                sink.clear();
            }
            fanout
        })
    });

    let crowded = hub();
    let mut regs = connect(&crowded, Dialect::Json, 10_000);
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
    let item = Item::Frame(frame.clone());
    group.bench_function("room_1000_of_10000", |b| {
        b.iter(|| {
            let fanout = crowded.send_to_room("busy", black_box(&item), None);
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
