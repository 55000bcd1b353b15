//! Sharing memory: arenas and CUDA allocations sent once per peer, descriptors, imports, releases.

use super::*;

impl Channel {
    // ------------------------------------------------------------------ arenas

    /// Makes `arena` available to the peer: sends its fd over the socket the first
    /// time (once per arena and peer while it stays shared) and returns the slot id
    /// that tensor descriptors name. The host may share read-only, output or frozen
    /// arenas; a worker only frozen ones. The arena stays shared while descriptors
    /// naming it are outstanding (each descriptor sent in a frame is one reference,
    /// given back by the peer's release); then it is retired.
    pub fn share(&self, arena: &Arc<Arena>) -> Result<u64, ChannelError> {
        self.check()?;
        let state = arena.state();
        let kind = match (self.inner.side, state) {
            (_, ArenaState::Open) => {
                return Err(ChannelError::Misuse {
                    what: format!("arena {} is not sealed", arena.id()),
                })
            }
            (Side::Host, ArenaState::ReadOnly) | (_, ArenaState::Frozen) => layout::FD_KIND_ARENA,
            (Side::Host, ArenaState::Output) => layout::FD_KIND_OUTPUT,
            (Side::Worker, ArenaState::Pooled) if !self.inner.cfg.frozen_outputs => {
                layout::FD_KIND_POOL
            }
            (Side::Worker, ArenaState::Pooled) => {
                return Err(ChannelError::Misuse {
                    what: "this channel takes only immutable (frozen) outputs, not pooled arenas"
                        .into(),
                })
            }
            (Side::Host, ArenaState::Pooled) => {
                return Err(ChannelError::Misuse {
                    what: "a host arena must be sealed read-only or as an output buffer".into(),
                })
            }
            (Side::Worker, s) => {
                return Err(ChannelError::Misuse {
                    what: format!("a worker can only share frozen or pooled arenas, not {s:?}"),
                })
            }
        };
        // Shared already (the usual case): its fd went out before the slot was recorded,
        // so the send lock is not needed to name it.
        if let Some(slot) = lock(&self.inner.exports).by_arena.get(&arena.id()) {
            return Ok(*slot);
        }
        let mut tx = lock(&self.inner.tx);
        if let Some(slot) = lock(&self.inner.exports).by_arena.get(&arena.id()) {
            return Ok(*slot);
        }
        let pinned = arena.pin_for(self.inner.id);
        let slot = tx.next_slot;
        tx.next_slot += 1;
        let fd = sys::dup_cloexec(arena.fd()).map_err(ioerr("dup arena"))?;
        self.send_fd_locked(&mut tx, slot, kind, 0, fd)?;
        let mut ex = lock(&self.inner.exports);
        ex.by_arena.insert(arena.id(), slot);
        ex.slots.insert(
            slot,
            Export {
                stored: Stored::Arena(arena.clone()),
                refs: 0,
                pinned,
            },
        );
        Ok(slot)
    }

    /// Stops keeping `arena`'s slot for reuse (its pool let go of it): retired now if
    /// the peer holds no reference, else once the last one comes back.
    pub fn unpin(&self, arena: &Arena) {
        let mut ex = lock(&self.inner.exports);
        let Some(&slot) = ex.by_arena.get(&arena.id()) else {
            return;
        };
        let parked = match ex.slots.get_mut(&slot) {
            Some(e) if e.refs == 0 => true,
            Some(e) => {
                e.pinned = false;
                false
            }
            None => false,
        };
        if parked {
            ex.slots.remove(&slot);
            ex.by_arena.remove(&arena.id());
            ex.retire.push(slot);
            self.inner.control_pending.store(true, Ordering::Release);
        }
    }

    /// Makes CUDA memory available to the peer, like [`Channel::share`] for an arena:
    /// sends a freshly exported fd with its size the first time (once per allocation
    /// and peer while it stays shared) and returns the slot id descriptors name. The
    /// allocation stays referenced while descriptors naming it are outstanding.
    /// Refused (`Misuse`) on a channel without `cuda`.
    pub fn share_device(&self, mem: &Arc<dyn DeviceMemory>) -> Result<u64, ChannelError> {
        self.check()?;
        if !self.inner.cfg.cuda {
            return Err(ChannelError::Misuse {
                what: "CUDA memory cannot cross this channel: the extension was not loaded with share_cuda_ipc=True".into(),
            });
        }
        if !mem.device().is_cuda() {
            return Err(ChannelError::Misuse {
                what: format!("device memory on {:?} is not CUDA memory", mem.device()),
            });
        }
        let size = mem.size();
        if size == 0
            || !size.is_multiple_of(4096)
            || size > self.inner.cfg.max_cuda_bytes.min(layout::FD_EXTRA_MAX)
        {
            return Err(ChannelError::Misuse {
                what: format!("a CUDA allocation of {size} bytes cannot be shared (non-zero multiple of 4096, at most {})", self.inner.cfg.max_cuda_bytes),
            });
        }
        let mut tx = lock(&self.inner.tx);
        if let Some(slot) = lock(&self.inner.exports).by_device.get(&device_key(mem)) {
            return Ok(*slot);
        }
        let fd = mem.export_fd().map_err(ioerr("export CUDA allocation"))?;
        let slot = tx.next_slot;
        tx.next_slot += 1;
        self.send_fd_locked(&mut tx, slot, layout::FD_KIND_CUDA, size, fd)?;
        let mut ex = lock(&self.inner.exports);
        ex.by_device.insert(device_key(mem), slot);
        ex.slots.insert(
            slot,
            Export {
                stored: Stored::Device(mem.clone()),
                refs: 0,
                pinned: false,
            },
        );
        Ok(slot)
    }

    /// Shares `mem` and builds a descriptor (device cuda, writable) for a tensor in it
    /// (`strides` in elements; None = C-contiguous), validated against its size.
    pub fn share_device_tensor(
        &self,
        mem: &Arc<dyn DeviceMemory>,
        offset: u64,
        dtype: crate::frame::DType,
        shape: &[u64],
        strides: Option<&[i64]>,
    ) -> Result<TensorDesc, ChannelError> {
        let slot = self.share_device(mem)?;
        let bad = |e: crate::frame::TensorError| ChannelError::Misuse {
            what: e.to_string(),
        };
        let d = desc_for(slot, offset, dtype, shape, strides)
            .map_err(bad)?
            .on_device(mem.device());
        d.validate_in(mem.size()).map_err(bad)?;
        Ok(d)
    }

    /// The device memory this side shared as `slot` (while the peer may name it).
    pub fn exported_device(&self, slot: u64) -> Option<Arc<dyn DeviceMemory>> {
        match lock(&self.inner.exports)
            .slots
            .get(&slot)
            .map(|e| &e.stored)
        {
            Some(Stored::Device(d)) => Some(d.clone()),
            _ => None,
        }
    }

    /// For a received cuda descriptor naming the peer's allocation: the fd (a dup) and
    /// announced size to import it with, or what was attached to the slot already.
    /// The descriptor is checked against the slot (kind, size) first.
    pub fn device_slot(&self, desc: &TensorDesc) -> Result<DeviceSlot, ChannelError> {
        self.check()?;
        let misuse = |what: String| ChannelError::Misuse { what };
        if desc.origin != Origin::Sender || !desc.device.is_cuda() {
            return Err(misuse(
                "device_slot takes a cuda descriptor naming the peer's memory".into(),
            ));
        }
        let fds = lock(&self.inner.fds);
        let inc = fds
            .slots
            .get(&desc.slot)
            .ok_or_else(|| misuse(format!("CUDA slot {} is unknown or retired", desc.slot)))?;
        if inc.kind != layout::FD_KIND_CUDA {
            return Err(misuse(format!("slot {} is not CUDA memory", desc.slot)));
        }
        desc.validate_in(inc.size)
            .map_err(|e| misuse(e.to_string()))?;
        if let Some(a) = &inc.attached {
            return Ok(DeviceSlot {
                fd: None,
                size: inc.size,
                attached: Some(a.clone()),
            });
        }
        let fd = sys::dup_cloexec(inc.fd.as_fd()).map_err(ioerr("dup CUDA handle"))?;
        Ok(DeviceSlot {
            fd: Some(fd),
            size: inc.size,
            attached: None,
        })
    }

    /// Stores what the importer made of CUDA slot `slot` (kept until the peer retires
    /// the slot), unless something is there already; returns what is stored.
    /// (If something is there already, `obj` is dropped after the lock is released:
    /// dropping an import may unmap device memory, which can block.)
    pub fn attach_device(
        &self,
        slot: u64,
        obj: Arc<dyn Any + Send + Sync>,
    ) -> Arc<dyn Any + Send + Sync> {
        let mut fds = lock(&self.inner.fds);
        let inc = match fds.slots.get_mut(&slot) {
            Some(inc) if inc.kind == layout::FD_KIND_CUDA => inc,
            _ => return obj,
        };
        if let Some(there) = inc.attached.clone() {
            drop(fds);
            drop(obj);
            return there;
        }
        inc.attached = Some(obj.clone());
        obj
    }

    /// Shares `arena` and builds a descriptor for a tensor in it (`strides` in
    /// elements; None = C-contiguous), validated against the arena's size.
    pub fn share_tensor(
        &self,
        arena: &Arc<Arena>,
        offset: u64,
        dtype: crate::frame::DType,
        shape: &[u64],
        strides: Option<&[i64]>,
    ) -> Result<TensorDesc, ChannelError> {
        let slot = self.share(arena)?;
        let bad = |e: crate::frame::TensorError| ChannelError::Misuse {
            what: e.to_string(),
        };
        let mut d = desc_for(slot, offset, dtype, shape, strides).map_err(bad)?;
        d.writable = arena.state() == ArenaState::Output;
        d.validate_in(arena.len() as u64).map_err(bad)?;
        Ok(d)
    }

    /// How many descriptors naming `arena` the peer still holds (None: not shared).
    pub fn shared_refs(&self, arena: &Arena) -> Option<u64> {
        let ex = lock(&self.inner.exports);
        ex.by_arena
            .get(&arena.id())
            .and_then(|s| ex.slots.get(s))
            .map(|e| e.refs)
    }

    /// How many descriptors naming `mem` the peer still holds (None: not shared).
    pub fn shared_device_refs(&self, mem: &Arc<dyn DeviceMemory>) -> Option<u64> {
        let ex = lock(&self.inner.exports);
        ex.by_device
            .get(&device_key(mem))
            .and_then(|s| ex.slots.get(s))
            .map(|e| e.refs)
    }

    /// Maps the storage a received descriptor names and returns a view of it: the
    /// peer's arena read-only (writable-shared for output buffers), or this side's
    /// own arena when the descriptor echoes it back. Mappings are cached per arena.
    pub fn import(&self, desc: &TensorDesc) -> Result<TensorView, ChannelError> {
        self.import_as(desc, None)
    }

    /// Like [`Channel::import`] but with a private copy-on-write mapping: writes
    /// through the view stay in this process.
    pub fn import_cow(&self, desc: &TensorDesc) -> Result<TensorView, ChannelError> {
        self.import_as(desc, Some(Protection::CopyOnWrite))
    }

    fn import_as(
        &self,
        desc: &TensorDesc,
        prot: Option<Protection>,
    ) -> Result<TensorView, ChannelError> {
        self.check()?;
        let misuse = |what: String| ChannelError::Misuse { what };
        if desc.device.is_cuda() {
            return Err(misuse(
                "a cuda descriptor is not host memory: use device_slot / exported_device".into(),
            ));
        }
        match desc.origin {
            Origin::Receiver => {
                let ex = lock(&self.inner.exports);
                let e = ex
                    .slots
                    .get(&desc.slot)
                    .ok_or_else(|| misuse(format!("arena slot {} is not shared", desc.slot)))?;
                let Stored::Arena(arena) = &e.stored else {
                    return Err(misuse(format!("slot {} is not an arena", desc.slot)));
                };
                desc.validate_in(arena.len() as u64)
                    .map_err(|e| misuse(e.to_string()))?;
                let map = match prot {
                    Some(p) => Arc::new(
                        // Mapped afresh for each such view (not cached): a plain mapping,
                        // without the reservation calls of `map_alone`.
                        Mapping::map(arena.fd(), arena.len(), p).map_err(ioerr("mmap arena"))?,
                    ),
                    None => arena
                        .mapping()
                        .ok_or_else(|| misuse("arena has no mapping".into()))?,
                };
                Ok(TensorView::new(map, desc.clone()))
            }
            Origin::Sender => {
                let mut fds = lock(&self.inner.fds);
                let inc = fds.slots.get_mut(&desc.slot).ok_or_else(|| {
                    misuse(format!("arena slot {} is unknown or retired", desc.slot))
                })?;
                if inc.kind == layout::FD_KIND_CUDA {
                    return Err(misuse(format!("slot {} is CUDA memory", desc.slot)));
                }
                desc.validate_in(inc.size)
                    .map_err(|e| misuse(e.to_string()))?;
                if let Some(p) = prot {
                    // Reuse the slot's copy-on-write mapping when no view holds it any more:
                    // dropping its private pages makes it a fresh view of the arena. One
                    // nobody wrote is such a view already (each page maps the arena's own)
                    // and keeps its page tables: no refault of every page on the next read.
                    // Its last view usually checked that when it went (`mark_clean`).
                    if p == Protection::CopyOnWrite {
                        if let Some(m) = inc.cow.iter().find(|m| Arc::strong_count(m) == 1) {
                            let clean = m.take_clean()
                                || matches!(m.has_private_pages(0, m.len()), Ok(false));
                            if clean || m.discard_private().is_ok() {
                                return Ok(TensorView::new(m.clone(), desc.clone()));
                            }
                        }
                    }
                    // One kept for reuse is mapped alone in its page tables (the scans for
                    // private pages of each later view stay cheap); one made for this view
                    // only is a plain mapping (no reservation calls).
                    let keep = p == Protection::CopyOnWrite && inc.cow.len() < COW_CACHE;
                    let (fd, len) = (inc.fd.as_fd(), inc.size as usize);
                    let m = if keep {
                        Mapping::map_alone(fd, len, p)
                    } else {
                        Mapping::map(fd, len, p)
                    };
                    let m = Arc::new(m.map_err(ioerr("mmap arena copy-on-write"))?);
                    if keep {
                        inc.cow.push(m.clone());
                    }
                    return Ok(TensorView::new(m, desc.clone()));
                }
                if inc.map.is_none() {
                    let p = if inc.kind == layout::FD_KIND_OUTPUT {
                        Protection::WriteShared
                    } else {
                        Protection::ReadShared
                    };
                    let m = Mapping::map(inc.fd.as_fd(), inc.size as usize, p)
                        .map_err(ioerr("mmap received arena"))?;
                    inc.map = Some(Arc::new(m));
                }
                let map = inc
                    .map
                    .clone()
                    .ok_or_else(|| misuse("mapping vanished".into()))?;
                Ok(TensorView::new(map, desc.clone()))
            }
        }
    }

    /// Gives back one reference to a descriptor received from the peer (call once
    /// per descriptor received, when done with it — and after sending any frame that
    /// echoes it back, since the owner may retire the arena once all are released). The release travels with the
    /// next frame or [`Channel::flush`]; this tries to send it at once.
    pub fn release(&self, desc: &TensorDesc) -> Result<(), ChannelError> {
        self.release_queued(desc)?;
        if self.check().is_err() {
            return Ok(());
        }
        if let Ok(mut tx) = self.inner.tx.try_lock() {
            self.flush_control_locked(&mut tx, false)?;
        }
        Ok(())
    }

    /// Like [`Channel::release`], but only queues the release: it travels with the
    /// next frame this side sends (or [`Channel::flush`]). Saves the peer a wake-up
    /// per tensor when replies follow closely anyway.
    pub fn release_lazy(&self, desc: &TensorDesc) -> Result<(), ChannelError> {
        self.release_queued(desc)
    }

    fn release_queued(&self, desc: &TensorDesc) -> Result<(), ChannelError> {
        if desc.origin != Origin::Sender {
            return Ok(());
        }
        {
            let mut im = lock(&self.inner.imports);
            match im.held.get_mut(&desc.slot) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    if *n == 0 {
                        im.held.remove(&desc.slot);
                    }
                }
                _ => {
                    return Err(ChannelError::Misuse {
                        what: format!("no reference held on arena slot {}", desc.slot),
                    })
                }
            }
            if let Some(e) = im.release.iter_mut().find(|(s, _)| *s == desc.slot) {
                e.1 += 1;
            } else {
                im.release.push((desc.slot, 1));
            }
        }
        self.inner.control_pending.store(true, Ordering::Release);
        Ok(())
    }

    /// Descriptors received and not yet released, per peer arena slot.
    pub fn held_tensors(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = lock(&self.inner.imports)
            .held
            .iter()
            .map(|(a, b)| (*a, *b))
            .collect();
        v.sort_unstable();
        v
    }
}

/// A descriptor for `shape` at `offset` in `slot` (`strides` in elements; None =
/// C-contiguous), covering exactly the bytes its elements span.
fn desc_for(
    slot: u64,
    offset: u64,
    dtype: crate::frame::DType,
    shape: &[u64],
    strides: Option<&[i64]>,
) -> Result<TensorDesc, crate::frame::TensorError> {
    let mut d = TensorDesc::contiguous(slot, offset, dtype, shape)?;
    if let Some(st) = strides {
        let span = TensorDesc::new(
            slot,
            Origin::Sender,
            offset,
            u64::MAX - offset,
            dtype,
            shape,
            st,
            false,
        )?
        .span()?;
        d = TensorDesc::new(slot, Origin::Sender, offset, span, dtype, shape, st, false)?;
    }
    Ok(d)
}
