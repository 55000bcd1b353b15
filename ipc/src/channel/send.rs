//! Sending: frames into the ring (inline or spilled), fds over the socket, queued releases.

use super::*;

/// How a push that does not fit behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Wait for space (up to `send_timeout`).
    Wait,
    /// Fail at once with a timeout (a flush that can be retried later).
    TryOnce,
    /// Queue it in the outbox (`nonblocking_send`).
    Queue,
}

impl Channel {
    // ------------------------------------------------------------------ sending

    /// Sends one frame. Waits (spin, then futex) up to `send_timeout` for ring space,
    /// buffering incoming frames meanwhile so two full rings cannot deadlock; with
    /// `nonblocking_send` it never waits (see [`Channel::flush_out`]). Frames larger
    /// than `max_inline` spill into a sealed memfd. A call frame registers its id as
    /// pending.
    pub fn send(&self, frame: &Frame) -> Result<(), ChannelError> {
        self.check()?;
        if let Frame::Release(r) = frame {
            if !r.tensors.is_empty() || !r.retired.is_empty() {
                return Err(ChannelError::Misuse {
                    what: "tensor releases and retirements are sent by the channel itself (use release())".into(),
                });
            }
        }
        let mut tx = lock(&self.inner.tx);
        self.ring_early();
        self.flush_control_locked(&mut tx, true)?;
        let mut buf = std::mem::take(&mut tx.buf);
        buf.clear();
        let res = frame
            .encode(&mut buf, &self.inner.cfg.limits)
            .map_err(ChannelError::Encode);
        let res = res.and_then(|()| self.count_outgoing_tensors(frame));
        if let Err(e) = res {
            tx.buf = buf;
            return Err(e);
        }
        if let Frame::Call(c) = frame {
            lock(&self.inner.pending).insert(c.id);
        }
        let r = self.push_locked(&mut tx, &buf, true);
        tx.buf = buf;
        if r.is_err() {
            if let Frame::Call(c) = frame {
                lock(&self.inner.pending).remove(&c.id);
            }
        }
        r
    }

    /// Sends a call and registers it as pending; returns its id.
    pub fn send_call(
        &self,
        target: u64,
        method: &str,
        args: Vec<Value>,
        kwargs: Vec<(String, Value)>,
    ) -> Result<u64, ChannelError> {
        let id = self.next_call_id();
        self.send(&Frame::Call(Call {
            id,
            parent: None,
            target,
            method: method.to_owned(),
            args,
            kwargs,
            deadline_ns: 0,
        }))?;
        Ok(id)
    }

    /// Sends a reply to the peer's call `id`.
    pub fn reply(&self, id: u64, value: Value) -> Result<(), ChannelError> {
        self.send(&Frame::Reply { id, value })
    }

    /// Sends an error answer to the peer's call `id`.
    pub fn reply_error(&self, id: u64, error: ErrorValue) -> Result<(), ChannelError> {
        self.send(&Frame::Error { id, error })
    }

    /// Adds one reference per sender-owned descriptor in an outgoing frame; each must
    /// name an arena shared with [`Channel::share`] and fit inside it.
    fn count_outgoing_tensors(&self, frame: &Frame) -> Result<(), ChannelError> {
        let mut descs: Vec<&TensorDesc> = Vec::new();
        frame.for_each_tensor(&mut |d| {
            if d.origin == Origin::Sender {
                descs.push(d)
            }
        });
        if descs.is_empty() {
            return Ok(());
        }
        let mut ex = lock(&self.inner.exports);
        for d in &descs {
            let e = ex.slots.get(&d.slot).ok_or_else(|| ChannelError::Misuse {
                what: format!("tensor names arena slot {} which is not shared", d.slot),
            })?;
            if e.stored.is_device() != d.device.is_cuda() {
                return Err(ChannelError::Misuse {
                    what: format!(
                        "tensor device {:?} does not match the memory of slot {}",
                        d.device, d.slot
                    ),
                });
            }
            d.validate_in(e.stored.len())
                .map_err(|e| ChannelError::Misuse {
                    what: e.to_string(),
                })?;
            let arena = match &e.stored {
                Stored::Arena(a) => Some(a.clone()),
                Stored::Parked(w, _) => Some(w.upgrade().ok_or_else(|| ChannelError::Misuse {
                    what: format!("arena slot {} names an arena that is gone", d.slot),
                })?),
                Stored::Device(_) => None,
            };
            if let Some(a) = arena {
                if d.writable && a.state() != ArenaState::Output {
                    return Err(ChannelError::Misuse {
                        what: format!("slot {} is not an output buffer", d.slot),
                    });
                }
            }
        }
        for d in descs {
            if let Some(e) = ex.slots.get_mut(&d.slot) {
                if let Stored::Parked(w, _) = &e.stored {
                    // Checked above (and the caller holds the arena): the peer is
                    // about to name it again, so keep it alive while it does.
                    if let Some(a) = w.upgrade() {
                        e.stored = Stored::Arena(a);
                    }
                }
                e.refs += 1;
            }
        }
        Ok(())
    }

    /// Pushes encoded frame bytes (inline or spilled). With `nonblocking_send`, what
    /// does not fit now is queued in the outbox (never an error unless the outbox is
    /// over its limit).
    pub(super) fn push_locked(
        &self,
        tx: &mut Tx,
        bytes: &[u8],
        block: bool,
    ) -> Result<(), ChannelError> {
        let mode = if self.inner.cfg.nonblocking_send {
            Mode::Queue
        } else if block {
            Mode::Wait
        } else {
            Mode::TryOnce
        };
        if mode == Mode::Queue && !tx.outbox.is_empty() {
            let limit = self.inner.cfg.max_outbox_bytes;
            if tx.outbox_bytes.saturating_add(bytes.len()) > limit {
                // Give the peer a chance first: it may have made room meanwhile.
                self.pump_outbox(tx)?;
                if tx.outbox_bytes.saturating_add(bytes.len()) > limit {
                    return Err(ChannelError::Backlog {
                        queued: tx.outbox_bytes as u64,
                        limit: limit as u64,
                    });
                }
            }
        }
        let geo = self.inner.shm.geometry();
        if bytes.len() <= geo.max_inline as usize {
            return self.push_record(tx, layout::RECORD_INLINE, bytes, bytes.len(), mode);
        }
        // Spill: a sealed, immutable memfd sent before the record that names it.
        let fd = sys::memfd_create("nodecell-spill").map_err(ioerr("memfd_create spill"))?;
        sys::ftruncate(fd.as_fd(), bytes.len() as u64).map_err(ioerr("ftruncate spill"))?;
        sys::pwrite_all(fd.as_fd(), bytes, 0).map_err(ioerr("write spill"))?;
        sys::add_seals(
            fd.as_fd(),
            sys::SEAL_WRITE | sys::SEAL_SHRINK | sys::SEAL_GROW | sys::SEAL_SEAL,
        )
        .map_err(ioerr("seal spill"))?;
        let slot = tx.next_slot;
        tx.next_slot += 1;
        self.send_fd_locked(tx, slot, layout::FD_KIND_SPILL, 0, fd)?;
        let mut rec = [0u8; 16];
        rec[..8].copy_from_slice(&slot.to_le_bytes());
        rec[8..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.push_record(tx, layout::RECORD_SPILL, &rec, bytes.len(), mode)
    }

    /// Pushes one ring record; `cost` is the frame's size (for the outbox limit).
    fn push_record(
        &self,
        tx: &mut Tx,
        kind: u16,
        bytes: &[u8],
        cost: usize,
        mode: Mode,
    ) -> Result<(), ChannelError> {
        if mode == Mode::Queue {
            // Order: nothing overtakes what already waits.
            if !tx.outbox.is_empty() {
                self.pump_outbox(tx)?;
            }
            if tx.outbox.is_empty()
                && tx
                    .producer
                    .try_push(kind, &[bytes])
                    .map_err(|v| self.violation(v))?
                    == Push::Done
            {
                return Ok(());
            }
            self.enqueue(
                tx,
                Out::Record {
                    kind,
                    bytes: bytes.to_vec(),
                    cost,
                },
            );
            return Ok(());
        }
        let first = tx
            .producer
            .try_push(kind, &[bytes])
            .map_err(|v| self.violation(v))?;
        if first == Push::Done {
            return Ok(());
        }
        if mode == Mode::TryOnce {
            return Err(ChannelError::Timeout {
                op: "send (ring full)",
            });
        }
        let deadline = Instant::now() + self.inner.cfg.send_timeout;
        let shm = self.inner.shm.clone();
        let ring = tx.producer.ring();
        let need = shm.geometry().slots_for(bytes.len());
        let Tx {
            producer, spinner, ..
        } = tx;
        let woke = spinner.wait(
            shm.space_bell(ring),
            Some(deadline),
            self.inner
                .cfg
                .liveness_slice
                .or(Some(Duration::from_millis(50))),
            || {
                // Keep reading while we wait, so a peer blocked on its own full ring progresses.
                self.drain_into_queue()?;
                Ok(producer.free_slots().map_err(|v| self.violation(v))? >= need)
            },
            || self.check_alive(),
        )?;
        if woke == Wake::TimedOut {
            return Err(ChannelError::Timeout {
                op: "send (ring full)",
            });
        }
        match producer
            .try_push(kind, &[bytes])
            .map_err(|v| self.violation(v))?
        {
            Push::Done => Ok(()),
            Push::Full => Err(ChannelError::Timeout {
                op: "send (ring full)",
            }),
        }
    }

    /// Sends one fd; `extra` fills the entry's 7 extra bytes (0 for all but CUDA). With
    /// `nonblocking_send` a full socket (or anything already waiting) queues it.
    pub(super) fn send_fd_locked(
        &self,
        tx: &mut Tx,
        slot: u64,
        kind: u8,
        extra: u64,
        fd: OwnedFd,
    ) -> Result<(), ChannelError> {
        let mut msg = Vec::with_capacity(8 + layout::FD_ENTRY_SIZE);
        msg.extend_from_slice(&layout::FD_MSG_MAGIC.to_le_bytes());
        msg.extend_from_slice(&1u32.to_le_bytes());
        msg.extend_from_slice(&slot.to_le_bytes());
        msg.push(kind);
        msg.extend_from_slice(&extra.to_le_bytes()[..7]);
        if self.inner.cfg.nonblocking_send {
            if !tx.outbox.is_empty() {
                self.pump_outbox(tx)?;
            }
            if tx.outbox.is_empty() && self.try_send_fd(&msg, &fd)? {
                return Ok(());
            }
            self.enqueue(tx, Out::Fd { msg, fd });
            return Ok(());
        }
        let deadline = Instant::now() + self.inner.cfg.send_timeout;
        loop {
            if self.try_send_fd(&msg, &fd)? {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ChannelError::Timeout {
                    op: "send fd (socket full)",
                });
            }
            self.check_alive()?;
            let ms = left.as_millis().clamp(1, 50) as i32;
            sys::poll_one(self.inner.sock.as_fd(), sys::POLLOUT, ms)
                .map_err(ioerr("poll socket"))?;
        }
    }

    /// One non-blocking attempt to send an fd message: false when the socket is full.
    fn try_send_fd(&self, msg: &[u8], fd: &OwnedFd) -> Result<bool, ChannelError> {
        match sys::send_fds(self.inner.sock.as_fd(), msg, &[fd.as_fd()]) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e)
                if e.kind() == std::io::ErrorKind::BrokenPipe || e.raw_os_error() == Some(104) =>
            {
                Err(self.fail(ChannelError::PeerGone {
                    reason: "the peer closed its socket".into(),
                }))
            }
            // Anything else (e.g. ETOOMANYREFS: the peer never reads its socket) leaves
            // the fd stream and the ring out of step: the channel cannot go on.
            Err(e) => Err(self.fail(ioerr("sendmsg SCM_RIGHTS")(e))),
        }
    }

    /// Sends one fd, taking the tx lock (unit tests drive the socket directly).
    #[cfg(test)]
    pub(super) fn send_fd(
        &self,
        slot: u64,
        kind: u8,
        extra: u64,
        fd: &OwnedFd,
    ) -> Result<(), ChannelError> {
        let fd = sys::dup_cloexec(fd.as_fd()).map_err(ioerr("dup"))?;
        let mut tx = lock(&self.inner.tx);
        self.send_fd_locked(&mut tx, slot, kind, extra, fd)
    }

    // ------------------------------------------------------------------ the outbox

    fn enqueue(&self, tx: &mut Tx, item: Out) {
        if tx.outbox.is_empty() {
            tx.last_progress = Instant::now();
            self.inner.outbox_pending.store(true, Ordering::Release);
            self.want_write();
        }
        if let Out::Record { cost, .. } = &item {
            tx.outbox_bytes += *cost;
        }
        tx.outbox.push_back(item);
    }

    /// Pushes what waits in the outbox, in order, while it fits; never blocks.
    fn pump_outbox(&self, tx: &mut Tx) -> Result<(), ChannelError> {
        let mut moved = false;
        while let Some(item) = tx.outbox.front() {
            let done = match item {
                Out::Record { kind, bytes, .. } => {
                    tx.producer
                        .try_push(*kind, &[bytes])
                        .map_err(|v| self.violation(v))?
                        == Push::Done
                }
                Out::Fd { msg, fd } => self.try_send_fd(msg, fd)?,
            };
            if !done {
                break;
            }
            if let Some(Out::Record { cost, .. }) = tx.outbox.pop_front() {
                tx.outbox_bytes -= cost;
            }
            moved = true;
        }
        if moved {
            tx.last_progress = Instant::now();
        }
        if tx.outbox.is_empty() {
            self.inner.outbox_pending.store(false, Ordering::Release);
            return Ok(());
        }
        let waited = tx.last_progress.elapsed();
        if waited > self.inner.cfg.send_timeout {
            return Err(self.violation(Violation::Stalled {
                ring: tx.producer.ring(),
                waited_ms: waited.as_millis() as u64,
                queued: tx.outbox_bytes as u64,
            }));
        }
        Ok(())
    }

    /// Pushes what waits in the outbox as far as the peer made room; returns true when
    /// the outbox is empty. A peer that read nothing for `send_timeout` while frames
    /// waited poisons the channel ([`Violation::Stalled`]). The reactor calls this
    /// when the peer rings the "space freed" doorbell.
    pub fn flush_out(&self) -> Result<bool, ChannelError> {
        self.check()?;
        if !self.inner.outbox_pending.load(Ordering::Acquire) {
            return Ok(true);
        }
        let mut tx = lock(&self.inner.tx);
        self.pump_outbox(&mut tx)?;
        Ok(tx.outbox.is_empty())
    }

    /// Whether frames wait in the outbox (non-blocking sends only).
    pub fn has_outbox(&self) -> bool {
        self.inner.outbox_pending.load(Ordering::Acquire)
    }

    /// Bytes of frames waiting in the outbox.
    pub fn outbox_bytes(&self) -> usize {
        lock(&self.inner.tx).outbox_bytes
    }

    pub(crate) fn outbound_ring(&self) -> usize {
        rings(self.inner.side).0
    }

    /// Asks the reactor (if registered) to flush the outbox as space frees.
    fn want_write(&self) {
        let link = lock(&self.inner.reactor);
        if let Some(l) = link.as_ref() {
            if let Some(r) = l.reactor.upgrade() {
                r.want_write(l.token);
            }
        }
    }

    /// Sends queued releases and retirements now (if the ring has room).
    pub fn flush(&self) -> Result<(), ChannelError> {
        self.check()?;
        let mut tx = lock(&self.inner.tx);
        self.flush_control_locked(&mut tx, false)
    }

    pub(super) fn flush_control_locked(
        &self,
        tx: &mut Tx,
        block: bool,
    ) -> Result<(), ChannelError> {
        if !self.inner.control_pending.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let retired = std::mem::take(&mut lock(&self.inner.exports).retire);
        let tensors = std::mem::take(&mut lock(&self.inner.imports).release);
        if retired.is_empty() && tensors.is_empty() {
            return Ok(());
        }
        let f = Frame::Release(Release {
            handles: Vec::new(),
            tensors,
            retired,
        });
        let mut buf = Vec::new();
        f.encode(&mut buf, &self.inner.cfg.limits)
            .map_err(ChannelError::Encode)?;
        match self.push_locked(tx, &buf, block) {
            Ok(()) => Ok(()),
            Err(ChannelError::Timeout { .. }) if !block => {
                // Put them back for the next flush.
                if let Frame::Release(r) = f {
                    lock(&self.inner.exports).retire.extend(r.retired);
                    lock(&self.inner.imports).release.extend(r.tensors);
                }
                self.inner.control_pending.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
