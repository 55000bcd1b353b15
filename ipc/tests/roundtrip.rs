//! Round trips between forked processes.

use std::time::{Duration, Instant};

use nodecell_ipc::{Call, ChannelConfig, ChannelError, ErrorValue, Frame, LogLevel, Value};

use crate::util::{self, child_say, spawn_worker};

fn sample_value() -> Value {
    Value::Dict(vec![
        (
            Value::Str("ints".into()),
            Value::List((0..50).map(Value::Int).collect()),
        ),
        (
            Value::Int(7),
            Value::Tuple(vec![
                Value::Float(2.5),
                Value::BigInt("123456789012345678901234567890".into()),
            ]),
        ),
        (
            Value::Bytes(vec![1, 2, 3]),
            Value::Set(vec![Value::Bool(true), Value::None]),
        ),
    ])
}

#[test]
fn calls_round_trip_between_processes() {
    let (ch, w) = spawn_worker(ChannelConfig::default(), util::echo_worker);
    for i in 0..2000 {
        let v = util::call(&ch, "add", vec![Value::Int(i), Value::Int(1)]);
        assert_eq!(v, Value::Int(i + 1));
    }
    let v = util::call(&ch, "echo", vec![sample_value()]);
    assert_eq!(v, Value::Tuple(vec![sample_value()]));
    util::call(&ch, "exit", vec![]);
    assert_eq!(w.wait(Duration::from_secs(5)), 0);
    assert!(ch.pending_calls().is_empty());
}

#[test]
fn callbacks_are_reentrant_both_ways() {
    // worker's "fact"(n): calls back host "mul"(n, fact(n-1)) where host's "mul"
    // handler itself calls worker "fact"(n-1) — three levels of nesting each way.
    fn worker(ch: nodecell_ipc::Channel) -> i32 {
        fn serve(ch: &nodecell_ipc::Channel, f: Frame) -> Result<(), ChannelError> {
            let Frame::Call(c) = f else { return Ok(()) };
            match c.method.as_str() {
                "fact" => {
                    let Value::Int(n) = c.args[0] else {
                        return Ok(());
                    };
                    if n <= 1 {
                        return ch.reply(c.id, Value::Int(1));
                    }
                    let id = ch.next_call_id();
                    let cb = Call {
                        id,
                        parent: Some(c.id),
                        target: 0,
                        method: "mul_fact".into(),
                        args: vec![Value::Int(n)],
                        kwargs: vec![],
                        deadline_ns: 0,
                    };
                    match ch.call(cb, Some(Duration::from_secs(10)), &mut |ch, f| serve(ch, f))? {
                        Ok(v) => ch.reply(c.id, v),
                        Err(e) => ch.reply_error(c.id, e),
                    }
                }
                "boom" => ch.reply_error(
                    c.id,
                    ErrorValue {
                        type_name: "ValueError".into(),
                        message: "boom".into(),
                        traceback: "tb".into(),
                    },
                ),
                "exit" => {
                    ch.reply(c.id, Value::None)?;
                    Err(ChannelError::Closed {
                        reason: "exit".into(),
                    })
                }
                _ => Ok(()),
            }
        }
        loop {
            let f = match ch.recv(None) {
                Ok(f) => f,
                Err(e) => {
                    child_say(&format!("recv {e}"));
                    return 3;
                }
            };
            match serve(&ch, f) {
                Ok(()) => {}
                Err(ChannelError::Closed { .. }) => return 0,
                Err(e) => {
                    child_say(&format!("serve {e}"));
                    return 4;
                }
            }
        }
    }
    let (ch, w) = spawn_worker(ChannelConfig::default(), worker);
    fn host_handler(ch: &nodecell_ipc::Channel, f: Frame) -> Result<(), ChannelError> {
        let Frame::Call(c) = f else {
            panic!("host got {f:?}")
        };
        assert_eq!(c.method, "mul_fact");
        assert!(c.parent.is_some(), "callbacks carry their parent call");
        let Value::Int(n) = c.args[0] else { panic!() };
        let id = ch.next_call_id();
        let inner = Call {
            id,
            parent: Some(c.id),
            target: 0,
            method: "fact".into(),
            args: vec![Value::Int(n - 1)],
            kwargs: vec![],
            deadline_ns: 0,
        };
        let sub = ch
            .call(inner, Some(Duration::from_secs(10)), &mut host_handler)?
            .expect("inner fact");
        let Value::Int(s) = sub else { panic!() };
        ch.reply(c.id, Value::Int(n * s))
    }
    let id = ch.next_call_id();
    let top = Call {
        id,
        parent: None,
        target: 0,
        method: "fact".into(),
        args: vec![Value::Int(6)],
        kwargs: vec![],
        deadline_ns: 0,
    };
    let v = ch
        .call(top, Some(Duration::from_secs(10)), &mut host_handler)
        .unwrap()
        .unwrap();
    assert_eq!(v, Value::Int(720));
    // Errors travel as values, never as exceptions by name.
    let id = ch.next_call_id();
    let c = Call {
        id,
        parent: None,
        target: 0,
        method: "boom".into(),
        args: vec![],
        kwargs: vec![],
        deadline_ns: 0,
    };
    let e = ch
        .call(c, Some(Duration::from_secs(10)), &mut host_handler)
        .unwrap()
        .unwrap_err();
    assert_eq!(e.type_name, "ValueError");
    util::call(&ch, "exit", vec![]);
    assert_eq!(w.wait(Duration::from_secs(5)), 0);
}

#[test]
fn many_calls_in_flight_are_all_answered() {
    // The worker collects 64 calls, then answers them in reverse order.
    fn worker(ch: nodecell_ipc::Channel) -> i32 {
        let mut batch = Vec::new();
        loop {
            let Ok(f) = ch.recv(None) else { return 3 };
            if let Frame::Call(c) = f {
                if c.method == "exit" {
                    let _ = ch.reply(c.id, Value::None);
                    return 0;
                }
                batch.push(c);
                if batch.len() == 64 {
                    for c in batch.drain(..).rev() {
                        if ch.reply(c.id, Value::Int(c.id as i64 * 10)).is_err() {
                            return 4;
                        }
                    }
                }
            }
        }
    }
    let (ch, w) = spawn_worker(
        ChannelConfig {
            slot_count: 256,
            ..ChannelConfig::default()
        },
        worker,
    );
    let ids: Vec<u64> = (0..64 * 40)
        .map(|_| {
            ch.send_call(0, "work", vec![Value::Str("x".repeat(40))], vec![])
                .unwrap()
        })
        .collect();
    // Some replies may already have been read (into the channel's queue) while a send
    // waited for ring space.
    assert!(!ch.pending_calls().is_empty() && ch.pending_calls().len() <= ids.len());
    // Wait in submission order: replies for later ids arrive first and are kept.
    for id in &ids {
        let v = ch
            .wait_reply(*id, Some(Duration::from_secs(10)), &mut |_, f| {
                panic!("{f:?}")
            })
            .unwrap()
            .unwrap();
        assert_eq!(v, Value::Int(*id as i64 * 10));
    }
    assert!(ch.pending_calls().is_empty());
    util::call(&ch, "exit", vec![]);
    assert_eq!(w.wait(Duration::from_secs(5)), 0);
}

#[test]
fn millions_of_frames_wrap_a_small_ring_in_order_both_ways() {
    // A 64-slot ring wraps ~30k times each way; frames of 1 to 5 slots, every one checked.
    const N: u64 = 1_000_000;
    let cfg = ChannelConfig {
        slot_count: 64,
        slot_size: 64,
        ..ChannelConfig::default()
    };
    fn payload(i: u64) -> Frame {
        match i % 7 {
            0 => Frame::Log {
                level: LogLevel::Info,
                logger: "l".into(),
                message: "m".repeat((i % 200) as usize),
            },
            _ => Frame::Heartbeat {
                seq: i,
                monotonic_ns: i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            },
        }
    }
    fn check(i: u64, f: &Frame) -> bool {
        match (f, i % 7) {
            (Frame::Log { message, .. }, 0) => message.len() == (i % 200) as usize,
            (Frame::Heartbeat { seq, monotonic_ns }, r) if r != 0 => {
                *seq == i && *monotonic_ns == i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            }
            _ => false,
        }
    }
    let (ch, w) = spawn_worker(cfg, |ch| {
        let tx = ch.clone();
        let sender = std::thread::spawn(move || (0..N).all(|i| tx.send(&payload(i)).is_ok()));
        for i in 0..N {
            match ch.recv(Some(Duration::from_secs(10))) {
                Ok(f) if check(i, &f) => {}
                Ok(f) => {
                    child_say(&format!("frame {i} wrong: {f:?}"));
                    return 5;
                }
                Err(e) => {
                    child_say(&format!("recv {i}: {e}"));
                    return 6;
                }
            }
        }
        if !sender.join().unwrap_or(false) {
            return 7;
        }
        0
    });
    let tx = ch.clone();
    let sender = std::thread::spawn(move || {
        for i in 0..N {
            tx.send(&payload(i)).expect("send");
        }
    });
    let t0 = Instant::now();
    for i in 0..N {
        let f = ch.recv(Some(Duration::from_secs(10))).expect("recv");
        assert!(check(i, &f), "frame {i} wrong: {f:?}");
    }
    sender.join().unwrap();
    assert_eq!(w.wait(Duration::from_secs(10)), 0);
    eprintln!("2 x {N} frames in {:?}", t0.elapsed());
}

#[test]
fn large_frames_spill_out_of_the_ring_both_ways() {
    let big = |n: usize| Value::Bytes((0..n).map(|i| (i * 31 % 251) as u8).collect());
    let (ch, w) = spawn_worker(ChannelConfig::default(), util::echo_worker);
    for n in [100, 70_000, 8 << 20, 40 << 20] {
        let v = util::call(&ch, "echo", vec![big(n)]);
        assert_eq!(v, Value::Tuple(vec![big(n)]), "{n} bytes");
    }
    // Over the configured maximum: refused by the sender, the channel stays usable.
    let small = ChannelConfig {
        limits: nodecell_ipc::Limits {
            max_frame: 1 << 20,
            ..Default::default()
        },
        ..ChannelConfig::default()
    };
    let (ch2, w2) = spawn_worker(small, util::echo_worker);
    let err = ch2
        .send_call(0, "echo", vec![big(2 << 20)], vec![])
        .unwrap_err();
    assert!(
        matches!(
            err,
            ChannelError::Encode(nodecell_ipc::EncodeError::FrameTooLarge { .. })
        ),
        "{err}"
    );
    assert_eq!(
        util::call(&ch2, "add", vec![Value::Int(2), Value::Int(3)]),
        Value::Int(5)
    );
    util::call(&ch, "exit", vec![]);
    util::call(&ch2, "exit", vec![]);
    assert_eq!(w.wait(Duration::from_secs(5)), 0);
    assert_eq!(w2.wait(Duration::from_secs(5)), 0);
}

#[test]
fn idle_worker_sleeps_without_spinning() {
    let cfg = ChannelConfig {
        liveness_slice: Some(Duration::from_secs(1)),
        ..ChannelConfig::default()
    };
    let (ch, w) = spawn_worker(cfg, util::echo_worker);
    for i in 0..100 {
        assert_eq!(util::call(&ch, "add", vec![Value::Int(i)]), Value::Int(i));
    }
    std::thread::sleep(Duration::from_millis(50));
    let before = w.cpu_ticks();
    std::thread::sleep(Duration::from_millis(500));
    let used = w.cpu_ticks() - before;
    // A spinning worker would burn ~50 ticks (100 Hz) in 500 ms.
    assert!(used <= 2, "idle worker used {used} ticks of CPU in 500 ms");
    util::call(&ch, "exit", vec![]);
    assert_eq!(w.wait(Duration::from_secs(5)), 0);
}

#[test]
fn worker_rejects_bad_channel_memfds() {
    use crate::sys;
    use nodecell_ipc::{Channel, OpenError, WorkerFds};
    use std::os::fd::AsFd;
    // Unsealed memfd.
    let fd = sys::memfd_create("t").unwrap();
    sys::ftruncate(fd.as_fd(), 1 << 16).unwrap();
    let (_, s) = sys::seqpacket_pair().unwrap();
    let e = Channel::open(WorkerFds { ring: fd, sock: s }, ChannelConfig::default()).unwrap_err();
    assert!(matches!(e, OpenError::Seals { .. }), "{e}");
    // Sealed, but no magic.
    let fd = sys::memfd_create("t").unwrap();
    sys::ftruncate(fd.as_fd(), 1 << 16).unwrap();
    sys::add_seals(
        fd.as_fd(),
        sys::SEAL_SHRINK | sys::SEAL_GROW | sys::SEAL_SEAL,
    )
    .unwrap();
    let (_, s) = sys::seqpacket_pair().unwrap();
    let e = Channel::open(WorkerFds { ring: fd, sock: s }, ChannelConfig::default()).unwrap_err();
    assert!(matches!(e, OpenError::Header { field: "magic", .. }), "{e}");
    // Not a memfd at all.
    let (a, s) = sys::seqpacket_pair().unwrap();
    let e = Channel::open(WorkerFds { ring: a, sock: s }, ChannelConfig::default()).unwrap_err();
    assert!(matches!(e, OpenError::NotMemfd), "{e}");
    // A real channel memfd whose geometry was tampered with (slot_size 100).
    let (_host, fds) = Channel::create(ChannelConfig::default()).unwrap();
    let m = sys::Mapping::map(fds.ring.as_fd(), 4096, sys::Protection::WriteShared).unwrap();
    m.write_from(nodecell_ipc::layout::OFF_SLOT_SIZE, &100u32.to_le_bytes());
    drop(m);
    let e = Channel::open(fds, ChannelConfig::default()).unwrap_err();
    assert!(
        matches!(
            e,
            OpenError::Header {
                field: "slot_size",
                value: 100
            }
        ),
        "{e}"
    );
}
