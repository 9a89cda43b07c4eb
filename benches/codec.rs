//! Native frame codec: encode and decode of the frames on the hot path (Send, Deliver) with a
//! 1 KiB message, one at a time and as a batch of 64 coalesced in one buffer (what the connection
//! writer does).

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tandem_protocol::samples::kib_message;
use tandem_protocol::{Frame, FrameCodec, wire};
use tokio_util::codec::{Decoder, Encoder};

fn frames() -> [(&'static str, Frame); 2] {
    let msg = kib_message();
    [
        (
            "send_1k",
            Frame::Send(wire::Send {
                producer_id: 1,
                sequence: 42,
                receipt: true,
                message: msg.clone(),
            }),
        ),
        (
            "deliver_1k",
            Frame::Deliver(wire::Deliver {
                consumer_id: 3,
                delivery_id: 99,
                redelivered: false,
                delivery_count: 1,
                message: msg,
            }),
        ),
    ]
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    for (name, frame) in frames() {
        let mut wire_bytes = BytesMut::new();
        FrameCodec::default()
            .encode(&frame, &mut wire_bytes)
            .unwrap();
        g.throughput(Throughput::Bytes(wire_bytes.len() as u64));
        g.bench_function(format!("encode/{name}"), |b| {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::with_capacity(4096);
            b.iter(|| {
                buf.clear();
                codec.encode(black_box(&frame), &mut buf).unwrap();
            })
        });
        g.bench_function(format!("decode/{name}"), |b| {
            let mut codec = FrameCodec::default();
            b.iter_batched(
                || wire_bytes.clone(),
                |mut buf| black_box(codec.decode(&mut buf).unwrap().unwrap()),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("frame_batch64");
    let (_, frame) = frames().into_iter().nth(1).unwrap();
    let mut batch = BytesMut::new();
    for _ in 0..64 {
        FrameCodec::default().encode(&frame, &mut batch).unwrap();
    }
    g.throughput(Throughput::Elements(64));
    g.bench_function("encode/deliver_1k", |b| {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::with_capacity(batch.len());
        b.iter(|| {
            buf.clear();
            for _ in 0..64 {
                codec.encode(black_box(&frame), &mut buf).unwrap();
            }
        })
    });
    g.bench_function("decode/deliver_1k", |b| {
        let mut codec = FrameCodec::default();
        b.iter_batched(
            || batch.clone(),
            |mut buf| {
                let mut n = 0;
                while let Some(f) = codec.decode(&mut buf).unwrap() {
                    black_box(f);
                    n += 1;
                }
                assert_eq!(n, 64);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
