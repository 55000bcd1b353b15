//! CUDA slots without a GPU: the channel never calls CUDA, so its bookkeeping and
//! checks run on any machine. `/dev/null` stands in for an NVIDIA control file
//! (accepted only in these unit tests, see `is_cuda_handle`).
use super::fds::{dev_major, is_cuda_handle};
use super::*;
use crate::frame::{DType, TensorError};
use std::sync::atomic::AtomicUsize;

struct FakeCuda {
    size: u64,
}

impl DeviceMemory for FakeCuda {
    fn export_fd(&self) -> std::io::Result<OwnedFd> {
        Ok(OwnedFd::from(std::fs::File::open("/dev/null")?))
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn device(&self) -> Device {
        Device::Cuda(0)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn pair(cuda: bool, tweak: impl FnOnce(&mut ChannelConfig)) -> (Channel, Channel) {
    let mut cfg = ChannelConfig {
        cuda,
        send_timeout: Duration::from_secs(2),
        ..ChannelConfig::default()
    };
    tweak(&mut cfg);
    let (host, fds) = Channel::create(cfg.clone()).unwrap();
    // The worker's own config says nothing about CUDA: the header decides.
    let worker = Channel::open(fds, ChannelConfig { cuda: false, ..cfg }).unwrap();
    (host, worker)
}

fn recv(ch: &Channel) -> Result<Frame, ChannelError> {
    for _ in 0..1000 {
        if let Some(f) = ch.try_recv()? {
            return Ok(f);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("no frame arrived");
}

fn reply_with(desc: TensorDesc) -> Frame {
    Frame::Reply {
        id: 1,
        value: Value::Tensor(Box::new(desc)),
    }
}

/// Pushes a frame without the sender's own checks (a hostile or buggy peer).
fn push_raw(ch: &Channel, f: &Frame) {
    let mut b = Vec::new();
    f.encode(&mut b, &Limits::default()).unwrap();
    let mut tx = lock(&ch.inner.tx);
    ch.push_locked(&mut tx, &b, true).unwrap();
}

fn null_fd() -> OwnedFd {
    OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
}

fn cuda_desc(slot: u64, bytes: u64) -> TensorDesc {
    TensorDesc::contiguous(slot, 0, DType::U8, &[bytes])
        .unwrap()
        .on_device(Device::Cuda(0))
}

fn violation(r: Result<Frame, ChannelError>) -> Violation {
    match r {
        Err(ChannelError::Violation(v)) => v,
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn dev_major_matches_glibc() {
    assert_eq!(dev_major(0x103), 1); // /dev/null = makedev(1, 3)
    assert_eq!(dev_major((195 << 8) | 255), 195); // /dev/nvidiactl
                                                  // glibc's makedev(0x12345, 0x678): the major's low 12 bits at 8, the rest at 32.
    let (maj, min) = (0x12345u64, 0x678u64);
    let dev = ((maj & 0xfff) << 8) | ((maj & !0xfff) << 32) | (min & 0xff) | ((min & !0xff) << 12);
    assert_eq!(dev_major(dev), 0x12345);
    let null = std::fs::metadata("/dev/null").unwrap();
    assert!(
        is_cuda_handle(&null),
        "the unit-test stand-in is accepted here"
    );
    assert!(!is_cuda_handle(&std::fs::metadata("/dev/zero").unwrap()));
    assert!(!is_cuda_handle(
        &std::fs::metadata("/proc/self/status").unwrap()
    ));
}

#[test]
fn cuda_flag_travels_in_the_header() {
    let (h, w) = pair(true, |_| {});
    assert!(h.config().cuda && w.config().cuda);
    let (h, w) = pair(false, |_| {});
    assert!(!h.config().cuda && !w.config().cuda);
}

#[test]
fn unknown_header_flags_are_refused() {
    let (_h, fds) = Channel::create(ChannelConfig::default()).unwrap();
    sys::pwrite_all(
        fds.ring.as_fd(),
        &6u32.to_le_bytes(),
        layout::OFF_FLAGS as u64,
    )
    .unwrap();
    match Channel::open(fds, ChannelConfig::default()) {
        Err(OpenError::Header {
            field: "flags",
            value: 6,
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn sharing_cuda_memory_needs_a_cuda_channel() {
    let (h, w) = pair(false, |_| {});
    let mem: Arc<dyn DeviceMemory> = Arc::new(FakeCuda { size: 2 << 20 });
    for ch in [&h, &w] {
        match ch.share_device_tensor(&mem, 0, DType::F32, &[4], None) {
            Err(ChannelError::Misuse { what }) => {
                assert!(what.contains("share_cuda_ipc"), "{what}")
            }
            other => panic!("{other:?}"),
        }
    }
    let odd: Arc<dyn DeviceMemory> = Arc::new(FakeCuda { size: 4097 });
    let (h, _w) = pair(true, |_| {});
    assert!(matches!(
        h.share_device(&odd),
        Err(ChannelError::Misuse { .. })
    ));
}

#[test]
fn cuda_memory_round_trip_release_and_retire() {
    let (h, w) = pair(true, |_| {});
    let mem: Arc<dyn DeviceMemory> = Arc::new(FakeCuda { size: 2 << 20 });
    let d = h
        .share_device_tensor(&mem, 64, DType::F32, &[2, 3], None)
        .unwrap();
    assert_eq!(d.device, Device::Cuda(0));
    assert!(d.writable);
    assert_eq!(
        h.share_device(&mem).unwrap(),
        d.slot,
        "one fd per allocation while shared"
    );
    h.send(&Frame::Call(Call {
        id: 1,
        parent: None,
        target: 0,
        method: "echo".into(),
        args: vec![Value::Tensor(Box::new(d.clone()))],
        kwargs: vec![],
        deadline_ns: 0,
    }))
    .unwrap();
    assert_eq!(h.shared_device_refs(&mem), Some(1));
    let Frame::Call(c) = recv(&w).unwrap() else {
        panic!("not a call")
    };
    let Value::Tensor(got) = &c.args[0] else {
        panic!("not a tensor")
    };
    assert_eq!(**got, d);
    assert!(
        w.import(got).is_err(),
        "cuda descriptors are not host memory"
    );
    let s = w.device_slot(got).unwrap();
    assert_eq!(s.size, 2 << 20);
    assert!(s.fd.is_some() && s.attached.is_none());
    let drops = Arc::new(AtomicUsize::new(0));
    let att = w.attach_device(got.slot, Arc::new(Counted(drops.clone())));
    drop(att);
    let s = w.device_slot(got).unwrap();
    assert!(s.fd.is_none() && s.attached.is_some());
    drop(s);
    // Echo it back: the host finds its own allocation.
    w.reply(1, Value::Tensor(Box::new(got.echo()))).unwrap();
    let Frame::Reply {
        value: Value::Tensor(back),
        ..
    } = recv(&h).unwrap()
    else {
        panic!("not a reply")
    };
    assert_eq!(back.origin, Origin::Receiver);
    let own = h.exported_device(back.slot).unwrap();
    assert!(own.as_any().downcast_ref::<FakeCuda>().is_some());
    // Release: the host retires the slot and the worker drops what it attached.
    w.release(got).unwrap();
    w.flush().unwrap();
    assert!(h.try_recv().unwrap().is_none());
    assert_eq!(h.shared_device_refs(&mem), None);
    assert!(h.exported_device(d.slot).is_none());
    h.flush().unwrap();
    assert!(w.try_recv().unwrap().is_none());
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "the import is dropped once the slot is retired"
    );
    assert!(w.device_slot(got).is_err());
    assert_eq!(lock(&w.inner.fds).cuda, 0);
}

#[test]
fn cuda_fd_on_a_channel_without_cuda_poisons_it() {
    let (h, w) = pair(false, |_| {});
    h.send_fd(5, layout::FD_KIND_CUDA, 2 << 20, &null_fd())
        .unwrap();
    push_raw(&h, &reply_with(cuda_desc(5, 16)));
    assert_eq!(violation(recv(&w)), Violation::CudaNotAllowed { slot: 5 });
    assert!(w.failure().is_some());
}

#[test]
fn cuda_fd_must_be_an_nvidia_device_file() {
    let (h, w) = pair(true, |_| {});
    let memfd = sys::memfd_create("not-cuda").unwrap();
    sys::ftruncate(memfd.as_fd(), 2 << 20).unwrap();
    h.send_fd(5, layout::FD_KIND_CUDA, 2 << 20, &memfd).unwrap();
    push_raw(&h, &reply_with(cuda_desc(5, 16)));
    assert_eq!(violation(recv(&w)), Violation::NotCudaHandle { slot: 5 });
}

#[test]
fn cuda_sizes_are_bounded() {
    for size in [0u64, 4097, (1 << 30) + 4096] {
        let (h, w) = pair(true, |c| c.max_cuda_bytes = 1 << 30);
        h.send_fd(5, layout::FD_KIND_CUDA, size, &null_fd())
            .unwrap();
        push_raw(&h, &reply_with(cuda_desc(5, 16)));
        assert_eq!(
            violation(recv(&w)),
            Violation::CudaSize {
                slot: 5,
                size,
                limit: 1 << 30
            },
            "{size}"
        );
    }
    // A descriptor reaching past the announced size.
    let (h, w) = pair(true, |_| {});
    h.send_fd(5, layout::FD_KIND_CUDA, 8192, &null_fd())
        .unwrap();
    push_raw(&h, &reply_with(cuda_desc(5, 8193)));
    assert!(matches!(
        violation(recv(&w)),
        Violation::Tensor(TensorError::OutOfArena { .. })
    ));
}

#[test]
fn cuda_fds_are_capped() {
    let (h, w) = pair(true, |c| c.max_cuda_fds = 2);
    for slot in 1..=3 {
        h.send_fd(slot, layout::FD_KIND_CUDA, 4096, &null_fd())
            .unwrap();
    }
    push_raw(&h, &reply_with(cuda_desc(3, 16)));
    assert_eq!(violation(recv(&w)), Violation::TooManyFds { limit: 2 });
}

#[test]
fn extra_bytes_are_only_for_cuda() {
    let (h, w) = pair(true, |_| {});
    let a = Arena::create(4096).unwrap();
    a.seal_read_only().unwrap();
    let fd = sys::dup_cloexec(a.fd()).unwrap();
    h.send_fd(5, layout::FD_KIND_ARENA, 4096, &fd).unwrap();
    push_raw(
        &h,
        &reply_with(TensorDesc::contiguous(5, 0, DType::U8, &[16]).unwrap()),
    );
    assert!(matches!(violation(recv(&w)), Violation::FdMessage { .. }));
}

#[test]
fn device_and_slot_kind_must_agree() {
    // A cuda descriptor naming a memfd arena.
    let (h, w) = pair(true, |_| {});
    let a = Arena::create(4096).unwrap();
    a.seal_read_only().unwrap();
    let slot = h.share(&a).unwrap();
    push_raw(&h, &reply_with(cuda_desc(slot, 16)));
    assert!(matches!(violation(recv(&w)), Violation::SlotKind { .. }));
    // A cpu descriptor naming a CUDA allocation.
    let (h, w) = pair(true, |_| {});
    let mem: Arc<dyn DeviceMemory> = Arc::new(FakeCuda { size: 4096 });
    let slot = h.share_device(&mem).unwrap();
    push_raw(
        &h,
        &reply_with(TensorDesc::contiguous(slot, 0, DType::U8, &[16]).unwrap()),
    );
    assert!(matches!(violation(recv(&w)), Violation::SlotKind { .. }));
    // The sender's own check refuses the same mistake before it leaves.
    let (h, _w) = pair(true, |_| {});
    let slot = h.share_device(&mem).unwrap();
    let cpu = TensorDesc::contiguous(slot, 0, DType::U8, &[16]).unwrap();
    assert!(matches!(
        h.send(&reply_with(cpu)),
        Err(ChannelError::Misuse { .. })
    ));
}

#[test]
fn worker_may_share_cuda_memory_on_a_cuda_channel() {
    let (h, w) = pair(true, |_| {});
    let mem: Arc<dyn DeviceMemory> = Arc::new(FakeCuda { size: 4096 });
    let d = w
        .share_device_tensor(&mem, 0, DType::I32, &[8], Some(&[1]))
        .unwrap();
    w.reply(1, Value::Tensor(Box::new(d.clone()))).unwrap();
    let Frame::Reply {
        value: Value::Tensor(got),
        ..
    } = recv(&h).unwrap()
    else {
        panic!()
    };
    assert_eq!(*got, d);
    assert_eq!(h.device_slot(&got).unwrap().size, 4096);
    assert_eq!(h.held_tensors(), vec![(d.slot, 1)]);
}

/// Each end publishes the CPU its receiving thread runs on in the header (CPU + 1);
/// an end learns that its peer waits on its own CPU from the peer's word alone.
#[test]
fn ends_publish_their_cpu_and_see_a_peer_on_the_same_one() {
    let (host, worker) = pair(false, |_| {});
    let shm = host.inner.shm.clone();
    let mut near = false;
    for _ in 0..1000 {
        // Same thread: both ends publish the same CPU unless it moved in between.
        worker.publish_cpu();
        if host.publish_cpu() {
            near = true;
            break;
        }
    }
    assert!(near, "two ends on one thread never looked near");
    let h = shm.header32(layout::OFF_HOST_CPU).load(Ordering::Relaxed);
    let w = worker
        .inner
        .shm
        .header32(layout::OFF_WORKER_CPU)
        .load(Ordering::Relaxed);
    assert!(h >= 1 && w >= 1, "host {h} worker {w}");
    // A peer elsewhere (or one that never said): spin, do not sleep at once.
    shm.header32(layout::OFF_WORKER_CPU)
        .store(0, Ordering::Relaxed);
    assert!(!host.publish_cpu());
    shm.header32(layout::OFF_WORKER_CPU)
        .store(u32::MAX, Ordering::Relaxed);
    assert!(!host.publish_cpu());
}

/// A receive that sleeps at once (the peer published this thread's CPU) still gets
/// every frame a sender on another thread pushes, and still times out.
#[test]
fn near_receive_gets_every_frame_and_times_out() {
    let (host, worker) = pair(false, |_| {});
    let sender = std::thread::spawn(move || {
        let shm = worker.inner.shm.clone();
        for seq in 0..500u64 {
            // Claim to run where the receiver is: it then sleeps without spinning.
            let v = shm.header32(layout::OFF_HOST_CPU).load(Ordering::Relaxed);
            shm.header32(layout::OFF_WORKER_CPU)
                .store(v, Ordering::Relaxed);
            worker
                .send(&Frame::Heartbeat {
                    seq,
                    monotonic_ns: 0,
                })
                .unwrap();
        }
        worker
    });
    for i in 0..500u64 {
        match host.recv(Some(Duration::from_secs(10))).unwrap() {
            Frame::Heartbeat { seq, .. } => assert_eq!(seq, i),
            f => panic!("unexpected {f:?}"),
        }
    }
    let worker = sender.join().unwrap();
    assert!(matches!(
        host.recv(Some(Duration::from_millis(10))),
        Err(ChannelError::Timeout { .. })
    ));
    drop(worker);
}
