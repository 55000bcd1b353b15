//! Receiving: records popped and decoded, spilled frames, release bookkeeping, blocking waits, calls.

use super::*;

impl Channel {
    // ------------------------------------------------------------------ receiving

    /// Returns the next frame if one is ready, without blocking. `Ok(None)` when the
    /// ring is empty — which also re-arms this channel in its reactor.
    pub fn try_recv(&self) -> Result<Option<Frame>, ChannelError> {
        self.check()?;
        let mut rx = lock(&self.inner.rx);
        let r = self.try_recv_locked(&mut rx);
        drop(rx);
        if let Ok(None) = r {
            self.rearm_reactor();
        }
        r
    }

    fn rearm_reactor(&self) {
        let link = lock(&self.inner.reactor);
        if let Some(l) = link.as_ref() {
            if let Some(r) = l.reactor.upgrade() {
                r.rearm(l.token);
            }
        }
    }

    fn try_recv_locked(&self, rx: &mut Rx) -> Result<Option<Frame>, ChannelError> {
        if let Some((f, n)) = rx.queue.pop_front() {
            rx.queued_bytes -= n;
            if rx.queue.is_empty() {
                self.inner.queued.store(false, Ordering::Release);
            }
            return Ok(Some(f));
        }
        loop {
            match self.pop_frame(rx)? {
                None => return Ok(None),
                Some((Some(f), _)) => return Ok(Some(f)),
                Some((None, _)) => continue, // internal frame (release bookkeeping)
            }
        }
    }

    /// While a send waits for space: moves incoming frames into the queue.
    pub(super) fn drain_into_queue(&self) -> Result<(), ChannelError> {
        let Ok(mut rx) = self.inner.rx.try_lock() else {
            return Ok(());
        };
        while let Some((f, n)) = self.pop_frame(&mut rx)? {
            if let Some(f) = f {
                rx.queued_bytes += n;
                if rx.queued_bytes > self.inner.cfg.max_queued_bytes {
                    return Err(self.violation(Violation::Flood {
                        bytes: rx.queued_bytes as u64,
                        limit: self.inner.cfg.max_queued_bytes as u64,
                    }));
                }
                rx.queue.push_back((f, n));
                self.inner.queued.store(true, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Pops and decodes one record. `Some((None, _))`: a frame the channel consumed itself.
    fn pop_frame(&self, rx: &mut Rx) -> Result<Option<(Option<Frame>, usize)>, ChannelError> {
        let mut buf = std::mem::take(&mut rx.buf);
        let rec = rx.consumer.try_pop(&mut buf);
        let out = match rec {
            Err(v) => Err(self.violation(v)),
            Ok(None) => Ok(None),
            Ok(Some(Record::Inline)) => {
                let d = Frame::decode(&buf, &self.inner.cfg.limits)
                    .map_err(|e| self.violation(Violation::Decode(e)));
                d.and_then(|d| self.accept(d)).map(|f| Some((f, buf.len())))
            }
            Ok(Some(Record::Spill { slot, len })) => {
                self.read_spill(slot, len).map(|(f, n)| Some((f, n)))
            }
        };
        rx.buf = buf;
        if rx.buf.capacity() > (1 << 20) {
            rx.buf = Vec::with_capacity(256);
        }
        out
    }

    fn read_spill(&self, slot: u64, len: u64) -> Result<(Option<Frame>, usize), ChannelError> {
        let limit = self.inner.cfg.limits.max_frame as u64;
        if len > limit || len == 0 {
            return Err(self.violation(Violation::RecordLength { len, limit }));
        }
        let inc = {
            let mut fds = lock(&self.inner.fds);
            if !fds.slots.contains_key(&slot) {
                self.drain_socket(&mut fds)?;
            }
            match fds.remove(&slot) {
                Some(i) if i.kind == layout::FD_KIND_SPILL => i,
                Some(i) => return Err(self.violation(Violation::SlotKind { slot, kind: i.kind })),
                None => return Err(self.violation(Violation::UnknownSlot { slot })),
            }
        };
        if inc.size < len {
            return Err(self.violation(Violation::ArenaSize {
                slot,
                size: inc.size,
                need: len,
            }));
        }
        let map = Mapping::map(inc.fd.as_fd(), len as usize, Protection::ReadShared)
            .map_err(ioerr("mmap spill"))?;
        // SAFETY: the spill memfd carries F_SEAL_WRITE (checked at receipt: no TOCTOU) and
        // F_SEAL_SHRINK with size >= len (every mapped page stays backed: no SIGBUS).
        let bytes = unsafe { map.as_slice() };
        let d = Frame::decode(bytes, &self.inner.cfg.limits)
            .map_err(|e| self.violation(Violation::Decode(e)))?;
        let f = self.accept(d)?;
        Ok((f, len as usize))
    }

    /// Post-decode checks and bookkeeping for one received frame.
    fn accept(&self, d: Decoded) -> Result<Option<Frame>, ChannelError> {
        let Decoded { frame, tensors } = d;
        if tensors > 0 {
            self.check_incoming_tensors(&frame)?;
        }
        match frame {
            Frame::Release(mut r) => {
                self.apply_release(&r)?;
                if r.handles.is_empty() {
                    return Ok(None);
                }
                r.tensors.clear();
                r.retired.clear();
                Ok(Some(Frame::Release(r)))
            }
            Frame::Reply { id, .. } | Frame::Error { id, .. } => {
                lock(&self.inner.pending).remove(&id);
                Ok(Some(frame))
            }
            f => Ok(Some(f)),
        }
    }

    fn check_incoming_tensors(&self, frame: &Frame) -> Result<(), ChannelError> {
        let mut descs: Vec<&TensorDesc> = Vec::new();
        frame.for_each_tensor(&mut |d| descs.push(d));
        let mut fds = lock(&self.inner.fds);
        let mut new_held: Vec<u64> = Vec::new();
        for d in &descs {
            match d.origin {
                Origin::Sender => {
                    if !fds.slots.contains_key(&d.slot) {
                        self.drain_socket(&mut fds)?;
                    }
                    let inc = match fds.slots.get(&d.slot) {
                        Some(i) => i,
                        None => return Err(self.violation(Violation::UnknownSlot { slot: d.slot })),
                    };
                    if inc.kind == layout::FD_KIND_SPILL
                        || (inc.kind == layout::FD_KIND_CUDA) != d.device.is_cuda()
                    {
                        return Err(self.violation(Violation::SlotKind {
                            slot: d.slot,
                            kind: inc.kind,
                        }));
                    }
                    if d.writable
                        && inc.kind != layout::FD_KIND_OUTPUT
                        && inc.kind != layout::FD_KIND_CUDA
                    {
                        return Err(self.violation(Violation::SlotKind {
                            slot: d.slot,
                            kind: inc.kind,
                        }));
                    }
                    if let Err(e) = d.validate_in(inc.size) {
                        return Err(self.violation(Violation::Tensor(e)));
                    }
                    new_held.push(d.slot);
                }
                Origin::Receiver => {
                    let ex = lock(&self.inner.exports);
                    // A parked (pinned, unreferenced) slot cannot be named either: the
                    // peer gave every reference to it back.
                    let Some(e) = ex.slots.get(&d.slot).filter(|e| e.refs > 0) else {
                        drop(ex);
                        return Err(self.violation(Violation::UnknownSlot { slot: d.slot }));
                    };
                    if e.stored.is_device() != d.device.is_cuda() {
                        let kind = if e.stored.is_device() {
                            layout::FD_KIND_CUDA
                        } else {
                            layout::FD_KIND_ARENA
                        };
                        drop(ex);
                        return Err(self.violation(Violation::SlotKind { slot: d.slot, kind }));
                    }
                    if let Err(err) = d.validate_in(e.stored.len()) {
                        drop(ex);
                        return Err(self.violation(Violation::Tensor(err)));
                    }
                }
            }
        }
        drop(fds);
        if !new_held.is_empty() {
            let mut im = lock(&self.inner.imports);
            for s in new_held {
                *im.held.entry(s).or_insert(0) += 1;
            }
        }
        Ok(())
    }

    fn apply_release(&self, r: &Release) -> Result<(), ChannelError> {
        // Storage let go of here is dropped after the locks (a CUDA unmap may block).
        let mut gone_exports: Vec<Export> = Vec::new();
        let mut parked: Vec<Arc<Arena>> = Vec::new();
        let mut gone_imports: Vec<Incoming> = Vec::new();
        if !r.tensors.is_empty() {
            let mut ex = lock(&self.inner.exports);
            for &(slot, count) in &r.tensors {
                let held = ex.slots.get(&slot).map(|e| e.refs);
                match held {
                    Some(h) if count <= h && count > 0 => {
                        let e = ex.slots.get_mut(&slot).expect("present");
                        e.refs -= count;
                        if e.refs == 0 && e.pinned {
                            // A pooled arena: keep the slot (the peer keeps its fd and
                            // mapping), stop keeping the arena alive.
                            let len = e.stored.len();
                            if let Stored::Arena(a) = &e.stored {
                                let w = Arc::downgrade(a);
                                if let Stored::Arena(a) =
                                    std::mem::replace(&mut e.stored, Stored::Parked(w, len))
                                {
                                    parked.push(a);
                                }
                            }
                        } else if e.refs == 0 {
                            if let Some(e) = ex.slots.remove(&slot) {
                                match &e.stored {
                                    Stored::Arena(a) => ex.by_arena.remove(&a.id()),
                                    Stored::Device(d) => ex.by_device.remove(&device_key(d)),
                                    Stored::Parked(..) => None,
                                };
                                gone_exports.push(e);
                            }
                            ex.retire.push(slot);
                            self.inner.control_pending.store(true, Ordering::Release);
                        }
                    }
                    _ => {
                        drop(ex);
                        return Err(self.violation(Violation::Release {
                            slot,
                            count,
                            held: held.unwrap_or(0),
                        }));
                    }
                }
            }
        }
        if !r.retired.is_empty() {
            let mut fds = lock(&self.inner.fds);
            for slot in &r.retired {
                let inc = match fds.remove(slot) {
                    Some(inc) => inc,
                    None => {
                        // It may still be on its way over the socket.
                        self.drain_socket(&mut fds)?;
                        match fds.remove(slot) {
                            Some(inc) => inc,
                            None => {
                                drop(fds);
                                return Err(self.violation(Violation::UnknownSlot { slot: *slot }));
                            }
                        }
                    }
                };
                gone_imports.push(inc);
            }
            drop(fds);
            let mut im = lock(&self.inner.imports);
            for slot in &r.retired {
                im.held.remove(slot);
            }
        }
        drop(gone_exports);
        drop(gone_imports);
        if !parked.is_empty() {
            drop(parked);
            // Pooled arenas may be free now: let the pool drop what is over its limit.
            crate::pool::ArenaPool::global().trim();
        }
        Ok(())
    }

    /// Waits for the next frame: spins for the adaptive window, then sleeps on the
    /// futex doorbell, checking the peer's liveness every `liveness_slice`.
    /// `timeout` None waits forever.
    pub fn recv(&self, timeout: Option<Duration>) -> Result<Frame, ChannelError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.recv_until(deadline, None)?
            .ok_or(ChannelError::Timeout { op: "recv" })
    }

    /// Spins up to `spin` for a frame without ever sleeping (lowest latency; burns
    /// CPU, yielding it between checks once the receiver's adaptive busy part is
    /// over, so a peer on the same core runs). `Ok(None)` if nothing came.
    pub fn recv_spin(&self, spin: Duration) -> Result<Option<Frame>, ChannelError> {
        self.check()?;
        let mut guard = lock(&self.inner.rx);
        let rx = &mut *guard;
        let mut spinner = rx.spinner.clone();
        let mut got = None;
        let near = self.publish_cpu();
        let r = spinner.spin_hinted(spin, near, &mut || {
            got = self.try_recv_locked(rx)?;
            Ok::<bool, ChannelError>(got.is_some())
        });
        rx.spinner = spinner;
        r?;
        Ok(got)
    }

    /// Blocking receive; with `want`, also returns (None) as soon as a reply for call
    /// `want` shows up in the stash (another thread received it).
    fn recv_until(
        &self,
        deadline: Option<Instant>,
        want: Option<u64>,
    ) -> Result<Option<Frame>, ChannelError> {
        self.check()?;
        let mut rx = lock(&self.inner.rx);
        let shm = self.inner.shm.clone();
        let ring = self.inbound_ring();
        let mut got: Option<Frame> = None;
        let mut spinner = rx.spinner.clone();
        let near = self.publish_cpu();
        let woke = spinner.wait_hinted(
            shm.data_bell(ring),
            deadline,
            self.inner.cfg.liveness_slice,
            near,
            || {
                if let Some(w) = want {
                    if lock(&self.inner.stash).contains_key(&w) {
                        return Ok(true);
                    }
                }
                got = self.try_recv_locked(&mut rx)?;
                Ok(got.is_some())
            },
            || self.check_alive(),
        );
        rx.spinner = spinner;
        if near {
            // We slept: the kernel may have woken us on another CPU (an idle one).
            self.publish_cpu();
        }
        match woke? {
            Wake::Ready => Ok(got),
            Wake::TimedOut => Err(ChannelError::Timeout { op: "recv" }),
        }
    }

    /// A blocking call: sends `call`, then receives until its reply or error comes.
    /// Other frames meanwhile go to `handler` (which may itself send, reply and make
    /// nested calls: re-entrancy); replies to this thread's other pending calls are
    /// kept for them ([`Channel::wait_reply`]).
    pub fn call(
        &self,
        call: Call,
        timeout: Option<Duration>,
        handler: &mut dyn FnMut(&Channel, Frame) -> Result<(), ChannelError>,
    ) -> Result<Result<Value, ErrorValue>, ChannelError> {
        let id = call.id;
        self.send(&Frame::Call(call))?;
        self.wait_reply(id, timeout, handler)
    }

    /// Waits for the answer to call `id` (see [`Channel::call`]).
    pub fn wait_reply(
        &self,
        id: u64,
        timeout: Option<Duration>,
        handler: &mut dyn FnMut(&Channel, Frame) -> Result<(), ChannelError>,
    ) -> Result<Result<Value, ErrorValue>, ChannelError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(f) = lock(&self.inner.stash).remove(&id) {
                return Ok(answer(f));
            }
            let Some(f) = self.recv_until(deadline, Some(id))? else {
                continue;
            };
            match f {
                Frame::Reply { id: rid, .. } | Frame::Error { id: rid, .. } if rid == id => {
                    return Ok(answer(f))
                }
                Frame::Reply { id: rid, .. } | Frame::Error { id: rid, .. } => {
                    lock(&self.inner.stash).insert(rid, f);
                }
                other => handler(self, other)?,
            }
        }
    }
}

fn answer(f: Frame) -> Result<Value, ErrorValue> {
    match f {
        Frame::Reply { value, .. } => Ok(value),
        Frame::Error { error, .. } => Err(error),
        _ => Err(ErrorValue {
            type_name: "RuntimeError".into(),
            message: "not an answer".into(),
            traceback: String::new(),
        }),
    }
}
