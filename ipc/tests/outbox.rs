//! Non-blocking sends (the host's mode): nothing waits for the peer. What does not
//! fit in the ring or the socket waits in order in an outbox, which `flush_out` (or
//! the reactor, on the peer's "space freed" doorbell) pushes on; a peer that reads
//! nothing for `send_timeout` poisons the channel; an outbox over its limit refuses
//! the frame without poisoning anything.

use std::time::{Duration, Instant};

use nodecell_ipc::{
    Backend, Channel, ChannelConfig, ChannelError, EventKind, Frame, Reactor, Value, Violation,
};

use crate::util::{self, child_say};

fn small(tweak: impl FnOnce(&mut ChannelConfig)) -> ChannelConfig {
    let mut c = ChannelConfig {
        slot_count: 64,
        slot_size: 64,
        nonblocking_send: true,
        send_timeout: Duration::from_secs(10),
        ..ChannelConfig::default()
    };
    tweak(&mut c);
    c
}

/// Frame `i`: a heartbeat, every tenth one a reply carrying 20 KiB (spilled here).
fn frame(i: u64) -> Frame {
    if i % 10 == 9 {
        Frame::Reply {
            id: i,
            value: Value::Bytes(vec![(i % 251) as u8; 20_000]),
        }
    } else {
        Frame::Heartbeat {
            seq: i,
            monotonic_ns: 0,
        }
    }
}

fn is_frame(i: u64, f: &Frame) -> bool {
    match (f, i % 10 == 9) {
        (Frame::Heartbeat { seq, .. }, false) => *seq == i,
        (
            Frame::Reply {
                id,
                value: Value::Bytes(b),
            },
            true,
        ) => *id == i && b.len() == 20_000 && b.iter().all(|&x| x == (i % 251) as u8),
        _ => false,
    }
}

const N: u64 = 3000;

/// Reads nothing for `delay_ms`, then N frames in order; exit 0 if all matched.
fn late_reader(ch: Channel, delay_ms: u64) -> i32 {
    std::thread::sleep(Duration::from_millis(delay_ms));
    for i in 0..N {
        match ch.recv(Some(Duration::from_secs(10))) {
            Ok(f) if is_frame(i, &f) => {}
            other => {
                child_say(&format!("frame {i}: {other:?}"));
                return 5;
            }
        }
    }
    0
}

#[test]
fn sends_never_wait_and_the_outbox_keeps_order_including_spills() {
    let (h, w) = util::spawn_worker(small(|_| {}), |ch| late_reader(ch, 400));
    let t0 = Instant::now();
    for i in 0..N {
        h.send(&frame(i)).expect("send");
    }
    let took = t0.elapsed();
    // The ring holds a few dozen frames: the rest waited in the outbox, without blocking.
    assert!(h.has_outbox());
    assert!(h.outbox_bytes() > 0);
    assert!(took < Duration::from_millis(350), "sending took {took:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !h.flush_out().expect("flush") {
        assert!(Instant::now() < deadline, "outbox never drained");
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(!h.has_outbox());
    assert_eq!(w.wait(Duration::from_secs(20)), 0);
}

#[test]
fn the_reactor_flushes_the_outbox_by_itself_on_every_backend() {
    let mut backends = vec![Backend::Polling];
    if nodecell_ipc::probe::futex_waitv_syscall() {
        backends.push(Backend::FutexWaitv);
    }
    if nodecell_ipc::probe::io_uring_futex_ops().unwrap_or(false) {
        backends.push(Backend::IoUring);
    }
    for backend in backends {
        let r = Reactor::start_with(backend).unwrap();
        let (h, w) = util::spawn_worker(small(|_| {}), |ch| late_reader(ch, 300));
        let tok = r.register(&h);
        for i in 0..N {
            h.send(&frame(i)).expect("send");
        }
        assert!(h.has_outbox(), "{backend:?}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while h.has_outbox() {
            assert!(
                Instant::now() < deadline,
                "{backend:?}: the reactor never drained it"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(w.wait(Duration::from_secs(20)), 0, "{backend:?}");
        r.deregister(tok);
    }
}

#[test]
fn a_peer_that_reads_nothing_is_reported_stalled() {
    let cfg = small(|c| c.send_timeout = Duration::from_millis(300));
    // Direct flushing.
    let (h, w) = util::spawn_worker(cfg.clone(), |_ch| {
        std::thread::sleep(Duration::from_secs(5));
        0
    });
    for i in 0..200 {
        h.send(&frame(i)).expect("send");
    }
    assert!(h.has_outbox());
    let t0 = Instant::now();
    let err = loop {
        match h.flush_out() {
            Ok(false) => std::thread::sleep(Duration::from_millis(5)),
            Ok(true) => panic!("drained without a reader"),
            Err(e) => break e,
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
    };
    assert!(
        matches!(
            err,
            ChannelError::Violation(Violation::Stalled { ring: 0, .. })
        ),
        "{err}"
    );
    // Poisoned: every later operation says the same.
    assert_eq!(h.try_recv().unwrap_err().to_string(), err.to_string());
    w.kill();
    w.wait(Duration::from_secs(5));

    // Through the reactor: the channel is reported readable and receiving gives the error.
    let r = Reactor::start().unwrap();
    let (h, w) = util::spawn_worker(cfg, |_ch| {
        std::thread::sleep(Duration::from_secs(5));
        0
    });
    let tok = r.register(&h);
    for i in 0..200 {
        h.send(&frame(i)).expect("send");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ev = r.wait(Some(Duration::from_millis(50)));
        if ev
            .iter()
            .any(|e| e.token == tok && e.kind == EventKind::Readable)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no event for the stalled channel"
        );
    }
    assert!(matches!(
        h.try_recv(),
        Err(ChannelError::Violation(Violation::Stalled { .. }))
    ));
    r.deregister(tok);
    w.kill();
    w.wait(Duration::from_secs(5));
}

#[test]
fn an_outbox_over_its_limit_refuses_frames_without_poisoning() {
    let cfg = small(|c| c.max_outbox_bytes = 100_000);
    let (h, w) = util::spawn_worker(cfg, |ch| {
        std::thread::sleep(Duration::from_millis(500));
        let mut n = 0u64;
        while let Ok(f) = ch.recv(Some(Duration::from_secs(2))) {
            if matches!(f, Frame::Heartbeat { seq: 999_999, .. }) {
                return if n > 0 { 0 } else { 6 };
            }
            n += 1;
        }
        7
    });
    let mut refused = None;
    for i in 0..100 {
        match h.send(&frame(i * 10 + 9)) {
            Ok(()) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the outbox never filled");
    assert!(
        matches!(e, ChannelError::Backlog { limit: 100_000, .. }),
        "{e}"
    );
    assert!(
        h.failure().is_none(),
        "a backlog must not poison the channel"
    );
    // Once the peer reads, the outbox drains and sending works again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !h.flush_out().unwrap() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    h.send(&Frame::Heartbeat {
        seq: 999_999,
        monotonic_ns: 0,
    })
    .unwrap();
    while !h.flush_out().unwrap() {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(w.wait(Duration::from_secs(10)), 0);
}

#[test]
fn close_releases_what_the_channel_held_for_the_peer() {
    let (h, w) = util::spawn_worker(small(|_| {}), |_ch| {
        std::thread::sleep(Duration::from_secs(3));
        0
    });
    for i in 0..300 {
        h.send(&frame(i)).unwrap();
    }
    assert!(h.has_outbox());
    let weak = h.downgrade();
    h.close("test");
    assert!(!h.has_outbox());
    assert!(weak.upgrade().is_some());
    drop(h);
    assert!(weak.upgrade().is_none(), "nothing else holds the channel");
    w.kill();
    w.wait(Duration::from_secs(5));
}
