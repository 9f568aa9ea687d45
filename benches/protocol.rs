//! Protocol hot paths: encoding a server frame once, and classifying and
//! reassembling inbound frames.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fastwebsockets::OpCode;
use wsnotify::protocol::{Assembler, Inbound, new_message, text_frame};

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_text_frame");
    for payload in [64usize, 1024, 65536] {
        let text = "x".repeat(payload);
        group.throughput(Throughput::Bytes(payload as u64));
        group.bench_function(BenchmarkId::from_parameter(format!("{payload}B")), |b| {
            b.iter(|| text_frame(black_box(&text)))
        });
    }
    group.finish();
}

fn relay(c: &mut Criterion) {
    let mut group = c.benchmark_group("relay_text");
    let text = "x".repeat(64);
    group.throughput(Throughput::Elements(1));
    group.bench_function("new_message_frame_64B", |b| {
        b.iter(|| text_frame(&new_message(black_box(&text))))
    });
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("assemble");
    for payload in [64usize, 1024] {
        let whole = Inbound {
            fin: true,
            opcode: OpCode::Text,
            payload: Bytes::from("x".repeat(payload)),
        };
        group.throughput(Throughput::Bytes(payload as u64));
        group.bench_function(
            BenchmarkId::new("single_frame", format!("{payload}B")),
            |b| {
                let mut assembler = Assembler::new(1 << 20);
                b.iter(|| assembler.push(black_box(whole.clone())))
            },
        );
        let half = Bytes::from("x".repeat(payload / 2));
        let first = Inbound {
            fin: false,
            opcode: OpCode::Text,
            payload: half.clone(),
        };
        let last = Inbound {
            fin: true,
            opcode: OpCode::Continuation,
            payload: half,
        };
        group.bench_function(
            BenchmarkId::new("two_fragments", format!("{payload}B")),
            |b| {
                let mut assembler = Assembler::new(1 << 20);
                b.iter(|| {
                    assembler.push(black_box(first.clone()));
                    assembler.push(black_box(last.clone()))
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, encode, relay, decode);
criterion_main!(benches);
