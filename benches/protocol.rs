//! Protocol hot paths: encoding a server frame once, classifying and
//! reassembling inbound frames, and the JSON protocol of room connections
//! (decoding a client message, encoding a `chat.delivery` frame).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fastwebsockets::OpCode;
use wsnotify::protocol::json::{ClientMessage, ServerMessage};
use wsnotify::protocol::text::new_message;
use wsnotify::protocol::{Assembler, Inbound, text_frame};

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

fn json(c: &mut Criterion) {
    let mut group = c.benchmark_group("json_protocol");
    group.throughput(Throughput::Elements(1));
    let text = "x".repeat(64);
    let chat = ClientMessage::ChatMessage {
        room: "test".into(),
        text: text.clone(),
    }
    .encode();
    group.bench_function("decode_chat_message_64B", |b| {
        b.iter(|| ClientMessage::decode(black_box(&chat), 4096))
    });
    // The seed's own example, from the fixtures the tests use too.
    let seed = include_str!("../fixtures/messages/client/chat.message.json").trim();
    group.bench_function("decode_seed_chat_message", |b| {
        b.iter(|| ClientMessage::decode(black_box(seed), 4096))
    });
    // What a room message costs the sender's session: a fresh id and time,
    // the JSON, and the frame every member shares.
    group.bench_function("delivery_frame_64B", |b| {
        b.iter(|| {
            ServerMessage::delivery(black_box("test"), black_box("u1"), black_box(&text)).frame()
        })
    });
    let delivery = ServerMessage::delivery("test", "u1", &text);
    group.bench_function("encode_delivery_frame_64B", |b| {
        b.iter(|| black_box(&delivery).frame())
    });
    group.finish();
}

criterion_group!(benches, encode, relay, decode, json);
criterion_main!(benches);
