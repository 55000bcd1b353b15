//! Pooled arenas across processes: a worker's outputs reuse arenas the host already
//! mapped (no fd per output), what a worker can still do to an output it sent, and
//! what the host refuses.

use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sys;
use nodecell_ipc::layout;
use nodecell_ipc::{
    Arena, ArenaPool, ArenaState, Channel, ChannelConfig, ChannelError, DType, Frame, Origin,
    TensorDesc, Value, Violation,
};

use crate::util::{child_say, spawn_worker};

/// The tests here fork while holding this, so no other test of this file holds a
/// pool lock in the parent at that moment.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn call(ch: &Channel, method: &str, args: Vec<Value>) -> Result<Value, ChannelError> {
    let id = ch.send_call(0, method, args, vec![])?;
    ch.wait_reply(id, Some(Duration::from_secs(20)), &mut |_, f| {
        panic!("unexpected frame {f:?}")
    })?
    .map_err(|e| ChannelError::Misuse {
        what: format!("remote error: {}", e.message),
    })
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("not an int: {other:?}"),
    }
}

fn tensor(v: &Value) -> TensorDesc {
    match v {
        Value::Tensor(d) => (**d).clone(),
        other => panic!("not a tensor: {other:?}"),
    }
}

fn int_arg(args: &[Value], i: usize) -> i64 {
    args.get(i).map(int).unwrap_or(0)
}

/// Worker: `make(n, byte)` returns `(tensor of n bytes from its pool, arena id)`;
/// `scribble(byte)` overwrites every byte of the last arena it made (a worker
/// writing an output it already sent); `truncate()` tries to shrink and grow it;
/// `stats()` returns `(hits, misses, arenas, free_bytes)`; `exit`.
fn pool_worker(ch: Channel) -> i32 {
    let pool = ArenaPool::new(4 << 20);
    let mut last: Option<Arc<Arena>> = None;
    loop {
        let f = match ch.recv(None) {
            Ok(f) => f,
            Err(e) => {
                child_say(&format!("recv {e}"));
                return 3;
            }
        };
        let Frame::Call(c) = f else { continue };
        let r: Result<Value, String> = match c.method.as_str() {
            "make" => (|| {
                let n = int_arg(&c.args, 0) as usize;
                let byte = int_arg(&c.args, 1) as u8;
                let a = pool.take(&ch, n).map_err(|e| e.to_string())?;
                if a.state() != ArenaState::Pooled {
                    return Err(format!("state {:?}", a.state()));
                }
                a.write(0, &vec![byte; n]).map_err(|e| e.to_string())?;
                let d = ch
                    .share_tensor(&a, 0, DType::U8, &[n as u64], None)
                    .map_err(|e| e.to_string())?;
                let id = a.id() as i64;
                last = Some(a);
                Ok(Value::Tuple(vec![
                    Value::Tensor(Box::new(d)),
                    Value::Int(id),
                ]))
            })(),
            "forget" => {
                last = None;
                Ok(Value::None)
            }
            "scribble" => match &last {
                Some(a) => {
                    let byte = int_arg(&c.args, 0) as u8;
                    a.write(0, &vec![byte; a.len()])
                        .map(|()| Value::None)
                        .map_err(|e| e.to_string())
                }
                None => Err("nothing made".into()),
            },
            "truncate" => match &last {
                Some(a) => {
                    let shrink = sys::ftruncate(a.fd(), 0).is_ok();
                    let grow = sys::ftruncate(a.fd(), (a.len() * 2) as u64).is_ok();
                    let unseal = sys::add_seals(a.fd(), sys::SEAL_WRITE).is_ok();
                    Ok(Value::Tuple(vec![
                        Value::Bool(shrink),
                        Value::Bool(grow),
                        Value::Bool(unseal),
                    ]))
                }
                None => Err("nothing made".into()),
            },
            "stats" => {
                let s = pool.stats();
                Ok(Value::Tuple(vec![
                    Value::Int(s.hits as i64),
                    Value::Int(s.misses as i64),
                    Value::Int(s.arenas as i64),
                    Value::Int(s.free_bytes as i64),
                ]))
            }
            "echo" => {
                // Echo tensors back (naming the host's own arena), then give them back.
                let mut got = Vec::new();
                let out = c
                    .args
                    .iter()
                    .map(|a| match a {
                        Value::Tensor(d) => {
                            got.push((**d).clone());
                            let mut e = (**d).clone();
                            e.origin = Origin::Receiver;
                            Value::Tensor(Box::new(e))
                        }
                        v => v.clone(),
                    })
                    .collect();
                if let Err(e) = ch.reply(c.id, Value::Tuple(out)) {
                    child_say(&format!("reply {e}"));
                    return 4;
                }
                for d in got {
                    let _ = ch.release(&d);
                }
                continue;
            }
            "echo_late" => {
                // Hostile: give the tensor back first, then name it anyway.
                let Some(Value::Tensor(d)) = c.args.first() else {
                    return 5;
                };
                let _ = ch.release(d);
                let _ = ch.flush();
                let mut e = (**d).clone();
                e.origin = Origin::Receiver;
                Ok(Value::Tensor(Box::new(e)))
            }
            "fds" => {
                let n = std::fs::read_dir("/proc/self/fd")
                    .map(|d| {
                        d.filter_map(Result::ok)
                            .filter(|e| {
                                std::fs::read_link(e.path())
                                    .map(|t| t.to_string_lossy().contains("nodecell-arena"))
                                    .unwrap_or(false)
                            })
                            .count()
                    })
                    .unwrap_or(0);
                Ok(Value::Int(n as i64))
            }
            "exit" => {
                let _ = ch.reply(c.id, Value::None);
                return 0;
            }
            other => Err(format!("no method {other}")),
        };
        let sent = match r {
            Ok(v) => ch.reply(c.id, v),
            Err(e) => ch.reply_error(
                c.id,
                nodecell_ipc::ErrorValue {
                    type_name: "Error".into(),
                    message: e,
                    traceback: String::new(),
                },
            ),
        };
        if let Err(e) = sent {
            child_say(&format!("reply {e}"));
            return 4;
        }
    }
}

fn make(ch: &Channel, n: i64, byte: i64) -> (TensorDesc, i64) {
    let v = call(ch, "make", vec![Value::Int(n), Value::Int(byte)]).unwrap();
    let Value::Tuple(t) = v else { panic!("{v:?}") };
    (tensor(&t[0]), int(&t[1]))
}

fn read_all(ch: &Channel, d: &TensorDesc) -> Vec<u8> {
    let view = ch.import_cow(d).unwrap();
    let mut b = vec![0u8; view.len()];
    assert!(view.read(0, &mut b));
    b
}

#[test]
fn pooled_outputs_reuse_the_arena_and_slot_once_released() {
    let _g = serial();
    let (ch, w) = spawn_worker(ChannelConfig::default(), pool_worker);
    let n = 150_000;
    let (d1, a1) = make(&ch, n, 1);
    assert_eq!(read_all(&ch, &d1), vec![1u8; n as usize]);
    // Still held by the host: the next output needs another arena.
    let (d2, a2) = make(&ch, n, 2);
    assert_ne!(a1, a2);
    assert_ne!(d1.slot, d2.slot);
    ch.release(&d1).unwrap();
    ch.release(&d2).unwrap();
    call(&ch, "forget", vec![]).unwrap();
    for round in 0..5u8 {
        let (d, a) = make(&ch, n, i64::from(10 + round));
        assert!(a == a1 || a == a2, "round {round}: a free arena was reused");
        assert!(
            d.slot == d1.slot || d.slot == d2.slot,
            "round {round}: the same slot (no new fd)"
        );
        assert_eq!(
            read_all(&ch, &d),
            vec![10 + round; n as usize],
            "round {round}"
        );
        ch.release(&d).unwrap();
        call(&ch, "forget", vec![]).unwrap();
    }
    let Value::Tuple(s) = call(&ch, "stats", vec![]).unwrap() else {
        panic!()
    };
    assert_eq!(
        (int(&s[0]), int(&s[1]), int(&s[2])),
        (5, 2, 2),
        "hits, misses, arenas"
    );
    call(&ch, "exit", vec![]).unwrap();
    assert_eq!(w.wait(Duration::from_secs(5)), 0);
}

#[test]
fn a_worker_can_change_an_output_until_released_but_never_truncate_it() {
    let _g = serial();
    let (ch, w) = spawn_worker(ChannelConfig::default(), pool_worker);
    let page = sys::page_size();
    let (d, _) = make(&ch, (4 * page) as i64, 7);
    let view = ch.import_cow(&d).unwrap();
    let mut b = vec![0u8; view.len()];
    view.read(0, &mut b);
    assert!(b.iter().all(|&x| x == 7));
    // The host writes its first page: a private copy.
    assert!(view.write(0, &vec![9u8; page]));
    // The worker scribbles over the arena it sent (allowed: it owns that memory).
    call(&ch, "scribble", vec![Value::Int(0x55)]).unwrap();
    view.read(0, &mut b);
    assert!(
        b[..page].iter().all(|&x| x == 9),
        "the host's own copy stays"
    );
    assert!(
        b[page..].iter().all(|&x| x == 0x55),
        "pages the host did not write show the worker's later bytes"
    );
    // Shrinking (SIGBUS in the host), growing or adding a write seal are refused.
    let v = call(&ch, "truncate", vec![]).unwrap();
    assert_eq!(
        v,
        Value::Tuple(vec![
            Value::Bool(false),
            Value::Bool(false),
            Value::Bool(false)
        ])
    );
    view.read(0, &mut b);
    drop(view);
    ch.release(&d).unwrap();
    call(&ch, "exit", vec![]).unwrap();
    assert_eq!(w.wait(Duration::from_secs(5)), 0);
}

#[test]
fn many_outputs_held_at_once_grow_the_pool_then_it_trims() {
    let _g = serial();
    let (ch, w) = spawn_worker(ChannelConfig::default(), pool_worker);
    let n = 1 << 20;
    let held: Vec<TensorDesc> = (0..24)
        .map(|i| {
            let (d, _) = make(&ch, n, i);
            d
        })
        .collect();
    for (i, d) in held.iter().enumerate() {
        assert_eq!(read_all(&ch, d)[..16], [i as u8; 16]);
    }
    let Value::Tuple(s) = call(&ch, "stats", vec![]).unwrap() else {
        panic!()
    };
    assert_eq!(int(&s[2]), 24, "every held output has its own arena");
    for d in &held {
        ch.release(d).unwrap();
    }
    call(&ch, "forget", vec![]).unwrap();
    // The releases ride on this call; the next take trims to the 4 MiB limit.
    make(&ch, n, 1);
    let Value::Tuple(s) = call(&ch, "stats", vec![]).unwrap() else {
        panic!()
    };
    assert!(
        int(&s[3]) <= 4 << 20,
        "free bytes {} over the limit",
        int(&s[3])
    );
    assert!(int(&s[2]) <= 6, "{} arenas kept", int(&s[2]));
    assert!(ch.held_tensors().len() <= 1);
    call(&ch, "exit", vec![]).unwrap();
    assert_eq!(w.wait(Duration::from_secs(5)), 0);
}

#[test]
fn a_host_pool_slot_is_parked_when_given_back_and_retired_when_dropped() {
    let _g = serial();
    let (ch, w) = spawn_worker(ChannelConfig::default(), pool_worker);
    let pool = ArenaPool::new(64 << 20);
    let a = pool.take(&ch, 8192).unwrap();
    a.write(0, &[3u8; 8192]).unwrap();
    let d = ch.share_tensor(&a, 0, DType::U8, &[8192], None).unwrap();
    // The worker echoes it while holding it: fine, the host's own arena comes back.
    let Value::Tuple(t) = call(&ch, "echo", vec![Value::Tensor(Box::new(d.clone()))]).unwrap()
    else {
        panic!()
    };
    assert_eq!(tensor(&t[0]).origin, Origin::Receiver);
    // The worker's release rides on its next frame; the slot is parked, not retired.
    let fds = int(&call(&ch, "fds", vec![]).unwrap());
    assert_eq!(
        ch.shared_refs(&a),
        Some(0),
        "pinned slot kept with no reference"
    );
    assert!(fds >= 1, "the worker keeps the fd");
    let gone = Arc::downgrade(&a);
    drop(a);
    pool.clear();
    assert!(
        gone.upgrade().is_none(),
        "the pool let go, and the parked slot does not hold it"
    );
    // The retirement rides on the next frame: the worker closes its fd.
    call(&ch, "stats", vec![]).unwrap();
    assert_eq!(int(&call(&ch, "fds", vec![]).unwrap()), fds - 1);
    call(&ch, "exit", vec![]).unwrap();
    assert_eq!(w.wait(Duration::from_secs(5)), 0);
}

#[test]
fn a_parked_slot_cannot_be_named_by_the_worker() {
    let _g = serial();
    let (ch, w) = spawn_worker(ChannelConfig::default(), pool_worker);
    let pool = ArenaPool::new(64 << 20);
    let a = pool.take(&ch, 8192).unwrap();
    let d = ch.share_tensor(&a, 0, DType::U8, &[8192], None).unwrap();
    let r = call(&ch, "echo_late", vec![Value::Tensor(Box::new(d.clone()))]);
    assert!(
        matches!(
            r,
            Err(ChannelError::Violation(Violation::UnknownSlot { slot })) if slot == d.slot
        ),
        "{r:?}"
    );
    drop(w);
}

#[test]
fn a_frozen_outputs_channel_refuses_pooled_arenas() {
    let _g = serial();
    let cfg = ChannelConfig {
        frozen_outputs: true,
        ..ChannelConfig::default()
    };
    let (ch, w) = spawn_worker(cfg, |ch| {
        if !ch.config().frozen_outputs {
            return 20;
        }
        let pool = ArenaPool::new(1 << 20);
        // The channel API refuses to send a pooled arena here...
        let a = pool.take(&ch, 4096).unwrap();
        if ch.share(&a).is_ok() {
            return 21;
        }
        // ... so send its fd by hand, then a frozen output, and see the host refuse.
        let mut msg = Vec::new();
        msg.extend_from_slice(&layout::FD_MSG_MAGIC.to_le_bytes());
        msg.extend_from_slice(&1u32.to_le_bytes());
        msg.extend_from_slice(&1000u64.to_le_bytes());
        msg.extend_from_slice(&[layout::FD_KIND_POOL, 0, 0, 0, 0, 0, 0, 0]);
        // SAFETY: the channel keeps its socket open for as long as `ch` lives.
        let sock = unsafe { BorrowedFd::borrow_raw(ch.socket_fd()) };
        if sys::send_fds(sock, &msg, &[a.fd()]).is_err() {
            return 22;
        }
        let f = Arena::create(4096).unwrap();
        f.freeze().unwrap();
        let d = ch.share_tensor(&f, 0, DType::U8, &[16], None).unwrap();
        let _ = ch.send(&Frame::Heartbeat {
            seq: 0,
            monotonic_ns: 0,
        });
        let _ = ch.reply(1, Value::Tensor(Box::new(d)));
        std::thread::sleep(Duration::from_millis(500));
        0
    });
    let err = loop {
        match ch.recv(Some(Duration::from_secs(10))) {
            Ok(Frame::Heartbeat { .. }) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(
            err,
            Err(ChannelError::Violation(Violation::SlotKind {
                slot: 1000,
                kind: layout::FD_KIND_POOL
            }))
        ),
        "{err:?}"
    );
    assert_eq!(w.wait(Duration::from_secs(5)), 0);
}

#[test]
fn the_host_pool_arenas_stay_read_only_for_the_worker() {
    let _g = serial();
    let (ch, w) = spawn_worker(ChannelConfig::default(), pool_worker);
    let pool = ArenaPool::new(64 << 20);
    let a = pool.take(&ch, 4096).unwrap();
    assert_eq!(a.state(), ArenaState::ReadOnly);
    assert!(sys::Mapping::map(a.fd(), a.len(), sys::Protection::WriteShared).is_err());
    assert!(sys::ftruncate(a.fd(), 0).is_err());
    call(&ch, "exit", vec![]).unwrap();
    assert_eq!(w.wait(Duration::from_secs(5)), 0);
}
