//! Tensor storage across processes: seals, zero-copy views, outputs, release/retire.

use std::os::fd::AsFd;
use std::time::Duration;

use nodecell_ipc::{Arena, ArenaState, Channel, ChannelConfig, DType, Frame, TensorDesc, Value};

use crate::sys;
use crate::util::{child_say, spawn_worker};

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(7) ^ (i >> 9)) as u8
}

fn first_tensor(v: &[Value]) -> Option<TensorDesc> {
    v.iter().find_map(|a| {
        if let Value::Tensor(t) = a {
            Some((**t).clone())
        } else {
            None
        }
    })
}

/// Worker: for "sum" imports the tensor, checks it cannot be written or truncated,
/// returns (byte sum, a frozen arena of its own with the bytes reversed); for "fill"
/// writes 0xAB into the output buffer and echoes its descriptor; for "cow" writes a
/// copy-on-write view. Releases every descriptor it received.
fn tensor_worker(ch: Channel) -> i32 {
    loop {
        let f = match ch.recv(None) {
            Ok(f) => f,
            Err(e) => {
                child_say(&format!("recv {e}"));
                return 3;
            }
        };
        let Frame::Call(c) = f else { continue };
        let desc = first_tensor(&c.args);
        let r = match (c.method.as_str(), desc) {
            ("sum", Some(d)) => (|| {
                let view = ch.import(&d).map_err(|e| e.to_string())?;
                if view.writable() || view.as_mut_ptr().is_some() {
                    return Err("input view is writable".to_string());
                }
                let mut bytes = vec![0u8; view.len()];
                view.read(0, &mut bytes);
                let sum: u64 = bytes.iter().map(|b| u64::from(*b)).sum();
                let out = Arena::create(bytes.len()).map_err(|e| e.to_string())?;
                bytes.reverse();
                out.write(0, &bytes).map_err(|e| e.to_string())?;
                out.freeze().map_err(|e| e.to_string())?;
                let od = ch
                    .share_tensor(&out, 0, DType::U8, &[bytes.len() as u64], None)
                    .map_err(|e| e.to_string())?;
                ch.release(&d).map_err(|e| e.to_string())?;
                ch.reply(
                    c.id,
                    Value::Tuple(vec![Value::Int(sum as i64), Value::Tensor(Box::new(od))]),
                )
                .map_err(|e| e.to_string())
            })(),
            ("fill", Some(d)) => (|| {
                let view = ch.import(&d).map_err(|e| e.to_string())?;
                if !view.writable() {
                    return Err("output view is read-only".into());
                }
                view.write(0, &vec![0xAB; view.len()]);
                // Echo first, release after: the host may retire the arena on release.
                ch.reply(c.id, Value::Tensor(Box::new(d.echo())))
                    .map_err(|e| e.to_string())?;
                ch.release(&d).map_err(|e| e.to_string())
            })(),
            ("cow", Some(d)) => (|| {
                let view = ch.import_cow(&d).map_err(|e| e.to_string())?;
                view.write(0, &[0xEE; 16]);
                let mut b = [0u8; 1];
                view.read(0, &mut b);
                ch.release(&d).map_err(|e| e.to_string())?;
                ch.reply(c.id, Value::Int(i64::from(b[0])))
                    .map_err(|e| e.to_string())
            })(),
            ("peek", Some(d)) => (|| {
                // (first byte, whether its page was mapped here before this read)
                let view = ch.import_cow(&d).map_err(|e| e.to_string())?;
                let present = page_present(view.as_ptr() as usize)?;
                let mut b = [0u8; 1];
                view.read(0, &mut b);
                ch.release(&d).map_err(|e| e.to_string())?;
                ch.reply(
                    c.id,
                    Value::Tuple(vec![Value::Int(i64::from(b[0])), Value::Bool(present)]),
                )
                .map_err(|e| e.to_string())
            })(),
            ("exit", _) => {
                let _ = ch.reply(c.id, Value::None);
                return 0;
            }
            (m, _) => Err(format!("bad call {m}")),
        };
        if let Err(e) = r {
            child_say(&e);
            return 4;
        }
    }
}

/// Whether the page at `addr` is mapped in this process (`/proc/self/pagemap`, bit 63).
fn page_present(addr: usize) -> Result<bool, String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open("/proc/self/pagemap").map_err(|e| e.to_string())?;
    let mut e = [0u8; 8];
    f.read_exact_at(&mut e, (addr / 4096 * 8) as u64)
        .map_err(|e| e.to_string())?;
    Ok(u64::from_le_bytes(e) >> 63 == 1)
}

fn call(ch: &Channel, method: &str, args: Vec<Value>) -> Value {
    let id = ch.send_call(0, method, args, vec![]).unwrap();
    ch.wait_reply(id, Some(Duration::from_secs(20)), &mut |_, f| {
        panic!("{f:?}")
    })
    .unwrap()
    .unwrap()
}

#[test]
fn tensors_cross_zero_copy_and_come_back_immutable() {
    let (ch, w) = spawn_worker(ChannelConfig::default(), tensor_worker);
    let len = 3 << 20;
    let a = Arena::create(len).unwrap();
    let data: Vec<u8> = (0..len).map(pattern).collect();
    a.write(0, &data).unwrap();
    a.seal_read_only().unwrap();
    assert_eq!(a.state(), ArenaState::ReadOnly);
    // Nobody (not even the host) can get a new writable shared mapping now, or truncate it.
    assert!(sys::Mapping::map(a.fd(), len, sys::Protection::WriteShared).is_err());
    assert!(sys::ftruncate(a.fd(), 10).is_err());
    let expect: u64 = data.iter().map(|b| u64::from(*b)).sum();
    for round in 0..3 {
        // A 2-D view in the middle of the arena.
        let d = ch
            .share_tensor(&a, 4096, DType::U8, &[512, 1024], None)
            .unwrap();
        let v = call(&ch, "sum", vec![Value::Tensor(Box::new(d))]);
        let Value::Tuple(t) = v else { panic!("{v:?}") };
        let part: u64 = data[4096..4096 + (512 << 10)]
            .iter()
            .map(|b| u64::from(*b))
            .sum();
        assert_eq!(t[0], Value::Int(part as i64), "round {round}");
        let od = first_tensor(&t).unwrap();
        let view = ch.import(&od).unwrap();
        assert!(!view.writable());
        let mut got = vec![0u8; view.len()];
        view.read(0, &mut got);
        let mut want = data[4096..4096 + (512 << 10)].to_vec();
        want.reverse();
        assert_eq!(got, want);
        assert_eq!(ch.held_tensors(), vec![(od.slot, 1)]);
        ch.release(&od).unwrap();
        assert!(ch.held_tensors().is_empty());
        // The worker released ours: after its frame, the host holds no references.
        assert_eq!(
            ch.shared_refs(&a),
            None,
            "round {round}: host arena retired after release"
        );
    }
    let _ = expect;
    call(&ch, "exit", vec![]);
    assert_eq!(w.wait(Duration::from_secs(5)), 0);
}

#[test]
fn output_buffers_are_writable_by_the_worker_and_cow_views_stay_private() {
    let (ch, w) = spawn_worker(ChannelConfig::default(), tensor_worker);
    let out = Arena::create(1 << 20).unwrap();
    out.seal_output().unwrap();
    let d = ch
        .share_tensor(&out, 0, DType::F32, &[256, 1024], None)
        .unwrap();
    assert!(d.writable);
    let v = call(&ch, "fill", vec![Value::Tensor(Box::new(d.clone()))]);
    let Value::Tensor(back) = v else {
        panic!("{v:?}")
    };
    assert_eq!(back.origin, nodecell_ipc::Origin::Receiver);
    let view = ch.import(&back).unwrap();
    let mut b = vec![0u8; 1 << 20];
    view.read(0, &mut b);
    assert!(
        b.iter().all(|x| *x == 0xAB),
        "the worker filled the host's output buffer"
    );

    let ro = Arena::create(1 << 16).unwrap();
    ro.write(0, &[7u8; 1 << 16]).unwrap();
    ro.seal_read_only().unwrap();
    let d = ch
        .share_tensor(&ro, 0, DType::U8, &[1 << 16], None)
        .unwrap();
    assert_eq!(
        call(&ch, "cow", vec![Value::Tensor(Box::new(d))]),
        Value::Int(0xEE)
    );
    let mut b = [0u8; 16];
    ro.read(0, &mut b).unwrap();
    assert_eq!(b, [7u8; 16], "copy-on-write writes stay in the worker");

    // A pooled arena keeps its slot, and the worker its copy-on-write mapping of it,
    // between calls. Reusing the mapping drops the worker's private copies (the page
    // reads the arena again); a mapping nobody wrote keeps its pages mapped, and they
    // show what the owner writes meanwhile.
    let pool = nodecell_ipc::ArenaPool::new(1 << 20);
    let pa = pool.take(&ch, 1 << 16).unwrap();
    pa.write(0, &[7u8; 1 << 16]).unwrap();
    let share = || {
        ch.share_tensor(&pa, 0, DType::U8, &[1 << 16], None)
            .unwrap()
    };
    assert_eq!(
        call(&ch, "cow", vec![Value::Tensor(Box::new(share()))]),
        Value::Int(0xEE)
    );
    let peek = |want: u8, mapped: bool, why: &str| {
        let v = call(&ch, "peek", vec![Value::Tensor(Box::new(share()))]);
        assert_eq!(
            v,
            Value::Tuple(vec![Value::Int(i64::from(want)), Value::Bool(mapped)]),
            "{why}"
        );
    };
    peek(7, false, "the worker's written page was dropped, not kept");
    peek(7, true, "an unwritten mapping is reused as it is");
    pa.write(0, &[9u8; 16]).unwrap();
    peek(9, true, "the reused mapping shows the owner's new bytes");
    assert_eq!(
        call(&ch, "cow", vec![Value::Tensor(Box::new(share()))]),
        Value::Int(0xEE)
    );
    peek(9, false, "written again: dropped again");
    call(&ch, "exit", vec![]);
    assert_eq!(w.wait(Duration::from_secs(5)), 0);
}

#[test]
fn unsealed_or_mis_sized_arenas_are_refused_by_the_sender() {
    let (ch, w) = spawn_worker(ChannelConfig::default(), tensor_worker);
    let open = Arena::create(4096).unwrap();
    assert!(
        ch.share(&open).is_err(),
        "an unsealed arena cannot be shared"
    );
    open.seal_read_only().unwrap();
    assert!(
        ch.share_tensor(&open, 0, DType::F64, &[1024], None)
            .is_err(),
        "8 KiB of f64 do not fit in 4 KiB"
    );
    assert!(
        ch.share_tensor(&open, 0, DType::F64, &[u64::MAX / 4, 8], None)
            .is_err(),
        "shape overflow"
    );
    let d = ch
        .share_tensor(&open, 0, DType::F32, &[16, 16], Some(&[1, 16]))
        .unwrap();
    assert_eq!(d.strides(), &[1, 16]);
    // A writable descriptor over a read-only arena is refused at send time.
    let mut bad = d.clone();
    bad.writable = true;
    assert!(ch
        .send_call(0, "fill", vec![Value::Tensor(Box::new(bad))], vec![])
        .is_err());
    call(&ch, "exit", vec![]);
    assert_eq!(w.wait(Duration::from_secs(5)), 0);
    // Sealed memfds keep their size.
    let fd = sys::memfd_create("t").unwrap();
    assert!(sys::get_seals(fd.as_fd()).is_ok());
}

#[test]
fn large_writes_into_an_arena_stream_exactly_the_bytes_given() {
    // At and past sys::STREAM_MIN the copy uses non-temporal stores: unaligned
    // starts, odd lengths and the bytes around the range must come out right.
    let n = sys::STREAM_MIN + 3 * 4096;
    let a = Arena::create(n).unwrap();
    let src: Vec<u8> = (0..n).map(pattern).collect();
    for (off, len) in [
        (0, sys::STREAM_MIN),
        (5, sys::STREAM_MIN + 77),
        (4096 + 31, sys::STREAM_MIN + 4096 + 1),
    ] {
        a.write(0, &vec![0xA5; n]).unwrap();
        a.write(off, &src[..len]).unwrap();
        let mut back = vec![0u8; n];
        a.read(0, &mut back).unwrap();
        assert!(
            back[..off].iter().all(|b| *b == 0xA5),
            "before the range ({off}, {len})"
        );
        assert!(
            back[off..off + len] == src[..len],
            "the range ({off}, {len})"
        );
        assert!(
            back[off + len..].iter().all(|b| *b == 0xA5),
            "after the range ({off}, {len})"
        );
    }
}

#[test]
fn a_large_write_split_across_threads_copies_every_byte() {
    // Above the size that is copied by several threads, at an odd offset and length (the
    // parts are page-aligned pieces of the source, the last one short).
    let len = (20 << 20) + 12_345;
    let a = Arena::create(len + 7).unwrap();
    let src: Vec<u8> = (0..len).map(pattern).collect();
    a.write(7, &src).unwrap();
    let mut back = vec![0u8; len];
    a.read(7, &mut back).unwrap();
    assert!(back == src, "the copied bytes differ");
    let mut head = [1u8; 7];
    a.read(0, &mut head).unwrap();
    assert_eq!(head, [0u8; 7], "bytes before the write were touched");
}
