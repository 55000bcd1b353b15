//! The host reactor, run against every backend this kernel has.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nodecell_ipc::{
    Backend, Channel, ChannelConfig, ChannelError, Event, EventKind, Frame, Reactor, Token, Value,
};

use crate::util::{self, child_say, spawn_worker};

/// Every backend, each one required: the machines nodecell is tested on (Linux >= 6.7)
/// have futex_waitv and io_uring futex ops, so a missing one fails here, naming what
/// is missing, instead of quietly testing fewer backends.
fn backends() -> Vec<Backend> {
    assert!(
        nodecell_ipc::probe::futex_waitv_syscall(),
        "futex_waitv(2) is unavailable (Linux >= 5.16): the FutexWaitv backend cannot be tested"
    );
    match nodecell_ipc::probe::io_uring_futex_ops() {
        Ok(true) => {}
        Ok(false) => panic!(
            "io_uring has no futex ops (Linux >= 6.7): the IoUring backend cannot be tested"
        ),
        Err(e) => panic!(
            "io_uring is unavailable ({e}; kernel.io_uring_disabled?): the IoUring backend cannot be tested"
        ),
    }
    // With every backend available, the reactor picks the best one.
    assert_eq!(Backend::detect(), Backend::IoUring);
    vec![Backend::Polling, Backend::FutexWaitv, Backend::IoUring]
}

fn wait_for(r: &Reactor, what: impl Fn(&Event) -> bool, timeout: Duration) -> Vec<Event> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let ev = r.wait(Some(Duration::from_millis(50)));
        let hit = ev.iter().any(&what);
        seen.extend(ev);
        if hit {
            return seen;
        }
    }
    panic!("no matching event within {timeout:?}; saw {seen:?}");
}

/// Worker that answers "add" after a delay given in ms as the second argument.
fn slow_worker(ch: Channel) -> i32 {
    loop {
        let Ok(f) = ch.recv(None) else { return 3 };
        if let Frame::Call(c) = f {
            if c.method == "hang" {
                std::thread::sleep(Duration::from_secs(60));
            }
            if let [Value::Int(a), Value::Int(ms)] = c.args[..] {
                std::thread::sleep(Duration::from_millis(ms as u64));
                if ch.reply(c.id, Value::Int(a + 1)).is_err() {
                    return 4;
                }
            }
        }
    }
}

#[test]
fn reactor_reports_readable_channels_on_every_backend() {
    for backend in backends() {
        let r = Reactor::start_with(backend).unwrap();
        assert_eq!(r.backend(), backend);
        let mut chans: HashMap<Token, (Channel, util::Worker)> = HashMap::new();
        for _ in 0..4 {
            let (ch, w) = spawn_worker(ChannelConfig::default(), slow_worker);
            let t = r.register(&ch);
            chans.insert(t, (ch, w));
        }
        // Each worker answers 50 calls; the host only learns of replies from the reactor.
        let mut expected: HashMap<u64, i64> = HashMap::new();
        for (ch, _) in chans.values() {
            for i in 0..50 {
                let id = ch
                    .send_call(0, "add", vec![Value::Int(i), Value::Int(0)], vec![])
                    .unwrap();
                expected.insert(id + ((ch.socket_fd() as u64) << 32), i + 1);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !expected.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{backend:?}: {} replies missing",
                expected.len()
            );
            for ev in r.wait(Some(Duration::from_millis(100))) {
                assert_eq!(ev.kind, EventKind::Readable, "{backend:?}: {ev:?}");
                let (ch, _) = &chans[&ev.token];
                while let Some(f) = ch.try_recv().unwrap() {
                    let Frame::Reply { id, value } = f else {
                        panic!("{f:?}")
                    };
                    let want = expected
                        .remove(&(id + ((ch.socket_fd() as u64) << 32)))
                        .expect("known id");
                    assert_eq!(value, Value::Int(want));
                }
            }
        }
        for (t, (ch, w)) in chans {
            r.deregister(t);
            drop(ch);
            drop(w);
        }
    }
}

#[test]
fn killed_worker_is_noticed_via_pidfd_and_pending_calls_fail() {
    for backend in backends() {
        let r = Reactor::start_with(backend).unwrap();
        let (good, gw) = spawn_worker(ChannelConfig::default(), slow_worker);
        let gt = r.register(&good);
        // The doomed worker starts a reply record, then dies before publishing it.
        let (ch, w) = util::spawn_raw(ChannelConfig::default(), |fds| {
            use crate::sys;
            use nodecell_ipc::layout;
            use std::os::fd::AsFd;
            let geo_len = nodecell_ipc::ChannelConfig::default();
            let total =
                layout::HEADER_SIZE + 2 * geo_len.slot_count as usize * geo_len.slot_size as usize;
            let m =
                sys::Mapping::map(fds.ring.as_fd(), total, sys::Protection::WriteShared).unwrap();
            // Wait until the host's calls are in, then write half a record and die.
            let head0 = m.atomic_u64(layout::ctl(layout::RING_TO_WORKER, layout::CTL_HEAD));
            while head0.load(std::sync::atomic::Ordering::Acquire) < 3 {
                std::hint::spin_loop();
            }
            let base =
                layout::HEADER_SIZE + geo_len.slot_count as usize * geo_len.slot_size as usize;
            m.write_from(base, &200u32.to_le_bytes());
            m.write_from(base + 8, &[1, 2, 0, 0]);
            // SAFETY: the test child kills itself mid-frame on purpose.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            0
        });
        let t = r.register(&ch);
        let ids: Vec<u64> = (0..3)
            .map(|i| {
                ch.send_call(0, "add", vec![Value::Int(i), Value::Int(0)], vec![])
                    .unwrap()
            })
            .collect();
        let seen = wait_for(
            &r,
            |e| e.token == t && e.kind == EventKind::PeerExited,
            Duration::from_secs(10),
        );
        assert!(
            seen.iter().all(|e| e.token == t),
            "{backend:?}: only the dead worker reports: {seen:?}"
        );
        // Nothing half-written is delivered; the pending calls are handed back to fail.
        assert!(ch.try_recv().unwrap().is_none());
        assert!(matches!(
            ch.check_alive(),
            Err(ChannelError::PeerGone { .. })
        ));
        let mut failed = ch.close("worker died");
        failed.sort_unstable();
        assert_eq!(failed, ids, "{backend:?}");
        assert!(matches!(
            ch.send_call(0, "add", vec![], vec![]),
            Err(ChannelError::PeerGone { .. })
        ));
        assert_eq!(w.wait(Duration::from_secs(5)), 128 + libc::SIGKILL);
        // The other worker is still served.
        let id = good
            .send_call(0, "add", vec![Value::Int(41), Value::Int(0)], vec![])
            .unwrap();
        wait_for(
            &r,
            |e| e.token == gt && e.kind == EventKind::Readable,
            Duration::from_secs(10),
        );
        assert_eq!(
            good.try_recv().unwrap(),
            Some(Frame::Reply {
                id,
                value: Value::Int(42)
            })
        );
        r.deregister(gt);
        r.deregister(t);
        drop(gw);
    }
}

#[test]
fn blocking_recv_notices_a_dead_peer() {
    let (ch, w) = spawn_worker(ChannelConfig::default(), |_ch| {
        std::thread::sleep(Duration::from_millis(100));
        0
    });
    let id = ch.send_call(0, "x", vec![], vec![]).unwrap();
    let e = ch
        .wait_reply(id, Some(Duration::from_secs(10)), &mut |_, _| Ok(()))
        .unwrap_err();
    assert!(matches!(e, ChannelError::PeerGone { .. }), "{e}");
    assert_eq!(ch.take_pending(), vec![id]);
    assert_eq!(w.wait(Duration::from_secs(5)), 0);
}

#[test]
fn deadlines_fire_in_order_and_can_be_cancelled() {
    for backend in backends() {
        let r = Reactor::start_with(backend).unwrap();
        let (ch, w) = spawn_worker(ChannelConfig::default(), slow_worker);
        let t = r.register(&ch);
        let id = ch.send_call(0, "hang", vec![], vec![]).unwrap();
        let now = Instant::now();
        r.set_deadline(t, id, now + Duration::from_millis(80));
        r.set_deadline(t, 999, now + Duration::from_millis(40));
        r.set_deadline(t, 1000, now + Duration::from_millis(60));
        r.cancel_deadline(t, 1000);
        let mut got = Vec::new();
        while got.len() < 2 {
            for e in r.wait(Some(Duration::from_secs(5))) {
                if let EventKind::Deadline(d) = e.kind {
                    assert!(Instant::now() >= now + Duration::from_millis(40));
                    got.push(d);
                }
            }
        }
        assert_eq!(got, vec![999, id], "{backend:?}");
        // The hung call is failed by its owner: the channel lists it as pending.
        assert_eq!(ch.pending_calls(), vec![id]);
        r.deregister(t);
        drop(w);
        let _ = child_say;
    }
}

#[test]
fn many_channels_span_several_futex_waitv_groups() {
    // 300 channels (more than one FUTEX_WAITV group of 127); peers in this process.
    for backend in backends() {
        let r = Reactor::start_with(backend).unwrap();
        let cfg = ChannelConfig {
            slot_count: 16,
            ..ChannelConfig::default()
        };
        let mut pairs = Vec::new();
        for _ in 0..300 {
            let (host, fds) = Channel::create(cfg.clone()).unwrap();
            let worker = Channel::open(fds, cfg.clone()).unwrap();
            let t = r.register(&host);
            pairs.push((t, host, worker));
        }
        std::thread::sleep(Duration::from_millis(20)); // let the reactor arm them all
                                                       // Ring a spread of them, one at a time, and see exactly those become readable.
        for (i, (t, host, worker)) in pairs.iter().enumerate().filter(|(i, _)| i % 37 == 5) {
            worker
                .send(&Frame::Heartbeat {
                    seq: i as u64,
                    monotonic_ns: 0,
                })
                .unwrap();
            let ev = wait_for(&r, |e| e.token == *t, Duration::from_secs(5));
            assert!(
                ev.iter()
                    .all(|e| e.token == *t && e.kind == EventKind::Readable),
                "{backend:?}: {ev:?}"
            );
            assert_eq!(
                host.try_recv().unwrap(),
                Some(Frame::Heartbeat {
                    seq: i as u64,
                    monotonic_ns: 0
                })
            );
            assert_eq!(host.try_recv().unwrap(), None);
        }
    }
}

#[test]
fn probe_reports_every_feature_and_this_kernel_has_them() {
    let f = nodecell_ipc::probe::probe();
    let get = |n: &str| {
        f.iter()
            .find(|x| x.name == n)
            .unwrap_or_else(|| panic!("no {n} in {f:?}"))
    };
    for n in [
        "io_uring",
        "io_uring futex ops",
        "futex_waitv",
        "memfd seals",
        "F_SEAL_FUTURE_WRITE",
        "MFD_NOEXEC_SEAL",
        "pidfd",
        "MADV_POPULATE_WRITE",
    ] {
        assert!(get(n).available, "{n}: {}", get(n).detail);
    }
    // THP for shmem depends on a sysctl: reported either way, with the setting.
    assert!(get("THP for shmem").detail.contains("shmem_enabled="));
    assert!(get("ipc reactor").available && get("ipc reactor").detail.contains("io_uring"));
}

fn open_inodes() -> std::collections::HashSet<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
        .map(|m| m.ino())
        .collect()
}

#[test]
fn deregistered_channels_are_freed_on_every_backend() {
    // Regression: the io_uring loop kept every deregistered channel (its memfd and
    // the arenas it still shared) until no wait at all was outstanding — never.
    use std::os::unix::fs::MetadataExt;
    for backend in backends() {
        let r = Reactor::start_with(backend).unwrap();
        let keep = Channel::create(ChannelConfig::default()).unwrap().0;
        let _keep_token = r.register(&keep); // another live channel keeps waits outstanding
        let mut inodes = Vec::new();
        let mut tokens = Vec::new();
        for _ in 0..8 {
            let (ch, fds) = Channel::create(ChannelConfig::default()).unwrap();
            // The worker's ring fd is a dup of the channel memfd: same inode.
            let ino = std::fs::metadata(format!("/proc/self/fd/{}", fds.raw().0))
                .unwrap()
                .ino();
            inodes.push(ino);
            drop(fds);
            tokens.push(r.register(&ch));
        }
        std::thread::sleep(Duration::from_millis(20));
        for t in tokens {
            r.deregister(t);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let still = |open: &std::collections::HashSet<u64>| {
            inodes.iter().filter(|i| open.contains(i)).count()
        };
        while still(&open_inodes()) > 0 && Instant::now() < deadline {
            let _ = r.wait(Some(Duration::from_millis(10)));
        }
        assert_eq!(
            still(&open_inodes()),
            0,
            "{backend:?} kept deregistered channels mapped"
        );
    }
}
