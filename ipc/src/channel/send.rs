//! Sending: frames into the ring (inline or spilled), fds over the socket, queued releases.

use super::*;

impl Channel {
    // ------------------------------------------------------------------ sending

    /// Sends one frame. Waits (spin, then futex) up to `send_timeout` for ring space,
    /// buffering incoming frames meanwhile so two full rings cannot deadlock. Frames
    /// larger than `max_inline` spill into a sealed memfd. A call frame registers its
    /// id as pending.
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
            if let Stored::Arena(a) = &e.stored {
                if d.writable && a.state() != ArenaState::Output {
                    return Err(ChannelError::Misuse {
                        what: format!("slot {} is not an output buffer", d.slot),
                    });
                }
            }
        }
        for d in descs {
            if let Some(e) = ex.slots.get_mut(&d.slot) {
                e.refs += 1;
            }
        }
        Ok(())
    }

    /// Pushes encoded frame bytes (inline or spilled).
    pub(super) fn push_locked(
        &self,
        tx: &mut Tx,
        bytes: &[u8],
        block: bool,
    ) -> Result<(), ChannelError> {
        let geo = self.inner.shm.geometry();
        if bytes.len() <= geo.max_inline as usize {
            return self.push_record(tx, layout::RECORD_INLINE, bytes, block);
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
        self.send_fd(slot, layout::FD_KIND_SPILL, 0, &fd)?;
        let mut rec = [0u8; 16];
        rec[..8].copy_from_slice(&slot.to_le_bytes());
        rec[8..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.push_record(tx, layout::RECORD_SPILL, &rec, block)
    }

    fn push_record(
        &self,
        tx: &mut Tx,
        kind: u16,
        bytes: &[u8],
        block: bool,
    ) -> Result<(), ChannelError> {
        let first = tx
            .producer
            .try_push(kind, &[bytes])
            .map_err(|v| self.violation(v))?;
        if first == Push::Done {
            return Ok(());
        }
        if !block {
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

    /// Sends one fd; `extra` fills the entry's 7 extra bytes (0 for all but CUDA).
    pub(super) fn send_fd(
        &self,
        slot: u64,
        kind: u8,
        extra: u64,
        fd: &OwnedFd,
    ) -> Result<(), ChannelError> {
        let mut msg = Vec::with_capacity(8 + layout::FD_ENTRY_SIZE);
        msg.extend_from_slice(&layout::FD_MSG_MAGIC.to_le_bytes());
        msg.extend_from_slice(&1u32.to_le_bytes());
        msg.extend_from_slice(&slot.to_le_bytes());
        msg.push(kind);
        msg.extend_from_slice(&extra.to_le_bytes()[..7]);
        let deadline = Instant::now() + self.inner.cfg.send_timeout;
        loop {
            match sys::send_fds(self.inner.sock.as_fd(), &msg, &[fd.as_fd()]) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
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
                Err(e)
                    if e.kind() == std::io::ErrorKind::BrokenPipe
                        || e.raw_os_error() == Some(104) =>
                {
                    return Err(self.fail(ChannelError::PeerGone {
                        reason: "the peer closed its socket".into(),
                    }));
                }
                Err(e) => return Err(ioerr("sendmsg SCM_RIGHTS")(e)),
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
