//! CUDA tensors across the sandbox's pid namespace (`share_cuda_ipc=True`).
//!
//! Legacy CUDA IPC handles (`cudaIpcGetMemHandle`, torch's `_share_cuda_`) are
//! checked against pids and fail across pid namespaces, so storage crosses as an
//! *fd-exportable allocation* instead, through the driver API (cudarc, loaded at
//! run time: nothing here needs libcuda to build, and nothing panics without it):
//!
//! * The sender copies a tensor's storage once into a [`CudaExport`]: `cuMemCreate`
//!   with `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR` on the tensor's device
//!   (granularity-rounded), reserved, mapped and made read-write in the device's
//!   primary context (the one torch uses). Python wraps it as a torch tensor through
//!   a kDLCUDA DLPack capsule, copies into it and re-points the original tensor when
//!   nothing else shares its storage, so the next send is free.
//! * [`nodecell_ipc::Channel::share_device`] sends `cuMemExportToShareableHandle`'s
//!   fd over the channel's socket once per allocation (socket kind CUDA, with its
//!   size); descriptors with device cuda name it. The ipc crate counts references and
//!   keeps the [`CudaExport`] alive while the peer holds any (release frames, no
//!   timers), exactly like a memfd arena.
//! * The receiver imports the fd ([`CudaImport`]: `cuMemImportFromShareableHandle`,
//!   reserve, map, set access read-write), once per slot (attached to the channel's
//!   slot until the sender retires it), and hands each tensor to torch as a kDLCUDA
//!   capsule whose deleter gives the descriptor back. Unmapping happens when the
//!   last tensor and the slot are gone.
//! * CUDA memory has no copy-on-write: the worker's writes to a tensor the host
//!   sent reach the host's memory (and the reverse), like torch's own CUDA sharing.
//! * Work is asynchronous on the GPU and another process cannot wait on our
//!   streams, so before a call, callback, reply or error leaves a channel that has
//!   carried CUDA memory, this process synchronizes the primary contexts it uses
//!   ([`before_send`]): whatever it wrote is complete when the peer reads it.
//!
//! The driver is only touched when a CUDA tensor is actually sent or received (or
//! [`cuda_available`] is asked), never at import: a zygote that forks workers must
//! not initialize CUDA first.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_int, c_void};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use cudarc::driver::sys as cu;
use nodecell_ipc::{Channel, DType, Device, DeviceMemory, Origin, TensorDesc};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::dlpack::{self, DLSource, Keep, KDL_CUDA};
use crate::markers::TensorRef;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- the driver -------------------------------------------------------------------------

/// Every driver entry point used here: checked once, so that no call can hit
/// cudarc's "missing symbol" panic later.
const SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetAttribute",
    "cuDevicePrimaryCtxRetain",
    "cuCtxPushCurrent_v2",
    "cuCtxPopCurrent_v2",
    "cuCtxSynchronize",
    "cuMemCreate",
    "cuMemRelease",
    "cuMemAddressReserve",
    "cuMemAddressFree",
    "cuMemMap",
    "cuMemUnmap",
    "cuMemSetAccess",
    "cuMemGetAllocationGranularity",
    "cuMemExportToShareableHandle",
    "cuMemImportFromShareableHandle",
    "cuMemGetAllocationPropertiesFromHandle",
];

struct Driver {
    devices: c_int,
}

static DRIVER: OnceLock<Result<Driver, String>> = OnceLock::new();

/// The loaded and initialized driver, or why there is none (cached: asked once).
fn driver() -> Result<&'static Driver, String> {
    DRIVER
        .get_or_init(|| {
            std::panic::catch_unwind(load_driver).unwrap_or_else(|_| {
                Err("loading the CUDA driver library failed unexpectedly".into())
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn load_driver() -> Result<Driver, String> {
    // SAFETY: only tries dlopen on cudarc's candidate names and closes what it opened.
    if !unsafe { cu::is_culib_present() } {
        return Err("the NVIDIA driver library (libcuda.so.1) is not installed or not visible to this process".into());
    }
    // SAFETY: a candidate library opens (checked just above), so culib() loads it
    // instead of panicking.
    let lib = unsafe { cu::culib() };
    for name in SYMBOLS {
        // SAFETY: a symbol lookup only; the pointer is never called through this type.
        if unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_err() {
            return Err(format!("the NVIDIA driver library lacks {name} (driver too old for fd-exportable allocations)"));
        }
    }
    // SAFETY: cuInit takes flags 0; every symbol was found above.
    check(unsafe { cu::cuInit(0) }, "cuInit")?;
    let mut n: c_int = 0;
    // SAFETY: `n` is a valid out-pointer for the count.
    check(unsafe { cu::cuDeviceGetCount(&mut n) }, "cuDeviceGetCount")?;
    if n <= 0 {
        return Err("no CUDA device is visible to this process".into());
    }
    Ok(Driver { devices: n })
}

fn check(r: cu::CUresult, op: &str) -> Result<(), String> {
    if r == cu::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(format!("{op} failed: {r:?}"))
    }
}

/// Primary contexts retained here, by device ordinal: (context, device). Kept for the
/// life of the process, as torch keeps them.
static PRIMARY: Mutex<BTreeMap<c_int, (usize, cu::CUdevice)>> = Mutex::new(BTreeMap::new());

fn primary(ordinal: c_int) -> Result<(cu::CUcontext, cu::CUdevice), String> {
    let d = driver()?;
    if ordinal < 0 || ordinal >= d.devices {
        return Err(format!(
            "CUDA device {ordinal} does not exist in this process ({} visible)",
            d.devices
        ));
    }
    let mut m = lock(&PRIMARY);
    if let Some(&(ctx, dev)) = m.get(&ordinal) {
        return Ok((ctx as cu::CUcontext, dev));
    }
    let mut dev: cu::CUdevice = 0;
    // SAFETY: valid out-pointer; the ordinal is in range.
    check(unsafe { cu::cuDeviceGet(&mut dev, ordinal) }, "cuDeviceGet")?;
    let mut ctx: cu::CUcontext = std::ptr::null_mut();
    check(
        // SAFETY: valid out-pointer and device handle.
        unsafe { cu::cuDevicePrimaryCtxRetain(&mut ctx, dev) },
        "cuDevicePrimaryCtxRetain",
    )?;
    m.insert(ordinal, (ctx as usize, dev));
    Ok((ctx, dev))
}

/// Runs `f(device)` with device `ordinal`'s primary context current on this thread.
fn in_context<R>(
    ordinal: c_int,
    f: impl FnOnce(cu::CUdevice) -> Result<R, String>,
) -> Result<R, String> {
    let (ctx, dev) = primary(ordinal)?;
    // SAFETY: `ctx` is a primary context retained above and never released.
    check(unsafe { cu::cuCtxPushCurrent_v2(ctx) }, "cuCtxPushCurrent")?;
    let r = f(dev);
    let mut popped: cu::CUcontext = std::ptr::null_mut();
    // SAFETY: pops the context pushed above (valid out-pointer).
    let _ = unsafe { cu::cuCtxPopCurrent_v2(&mut popped) };
    r
}

fn attribute(dev: cu::CUdevice, a: cu::CUdevice_attribute) -> Result<c_int, String> {
    let mut v: c_int = 0;
    check(
        // SAFETY: valid out-pointer and device handle.
        unsafe { cu::cuDeviceGetAttribute(&mut v, a, dev) },
        "cuDeviceGetAttribute",
    )?;
    Ok(v)
}

fn alloc_prop(dev: cu::CUdevice) -> cu::CUmemAllocationProp {
    cu::CUmemAllocationProp {
        type_: cu::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED,
        requestedHandleTypes:
            cu::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
        location: cu::CUmemLocation {
            type_: cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            id: dev,
        },
        win32HandleMetaData: std::ptr::null_mut(),
        allocFlags: cu::CUmemAllocationProp_st__bindgen_ty_1 {
            compressionType: 0,
            gpuDirectRDMACapable: 0,
            usage: 0,
            reserved: [0; 4],
        },
    }
}

fn granularity(prop: &cu::CUmemAllocationProp) -> Result<u64, String> {
    let mut g: usize = 0;
    let minimum = cu::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM;
    // SAFETY: valid out-pointer and a fully initialized property struct.
    let r = unsafe { cu::cuMemGetAllocationGranularity(&mut g, prop, minimum) };
    check(r, "cuMemGetAllocationGranularity")?;
    if g == 0 {
        return Err("cuMemGetAllocationGranularity returned 0".into());
    }
    Ok(g as u64)
}

/// Reserves an address range for `handle`'s `size` bytes, maps it and makes it
/// read-write for `dev`; undoes what it did on failure.
fn map_read_write(
    handle: cu::CUmemGenericAllocationHandle,
    size: u64,
    align: u64,
    dev: cu::CUdevice,
) -> Result<u64, String> {
    let (size, align) = (size as usize, align as usize);
    let mut ptr: cu::CUdeviceptr = 0;
    check(
        // SAFETY: valid out-pointer; a fresh range of `size` bytes anywhere.
        unsafe { cu::cuMemAddressReserve(&mut ptr, size, align, 0, 0) },
        "cuMemAddressReserve",
    )?;
    // SAFETY: maps the whole allocation (offset 0) at the range reserved above.
    if let Err(e) = check(unsafe { cu::cuMemMap(ptr, size, 0, handle, 0) }, "cuMemMap") {
        // SAFETY: frees the range reserved above, which nothing uses.
        let _ = unsafe { cu::cuMemAddressFree(ptr, size) };
        return Err(e);
    }
    let access = cu::CUmemAccessDesc {
        location: cu::CUmemLocation {
            type_: cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            id: dev,
        },
        flags: cu::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
    };
    if let Err(e) = check(
        // SAFETY: one valid access descriptor for the range mapped above.
        unsafe { cu::cuMemSetAccess(ptr, size, &access, 1) },
        "cuMemSetAccess",
    ) {
        // SAFETY: undoes the map and reservation above; nothing has used them.
        unsafe {
            let _ = cu::cuMemUnmap(ptr, size);
            let _ = cu::cuMemAddressFree(ptr, size);
        }
        return Err(e);
    }
    Ok(ptr)
}

/// Unmaps, frees the range and drops the allocation reference (errors ignored: this
/// runs from destructors, possibly while the process tears CUDA down).
fn unmap_and_release(
    ordinal: c_int,
    ptr: u64,
    size: u64,
    handle: cu::CUmemGenericAllocationHandle,
) {
    let _ = std::panic::catch_unwind(|| {
        let _ = in_context(ordinal, |_| {
            // SAFETY: we mapped `ptr..ptr+size` from `handle` and no tensor refers to it any more
            // (its owner is being dropped); cuMemUnmap waits for work using the range.
            unsafe {
                let _ = cu::cuMemUnmap(ptr, size as usize);
                let _ = cu::cuMemAddressFree(ptr, size as usize);
                let _ = cu::cuMemRelease(handle);
            }
            Ok(())
        });
    });
}

/// Whether this process can use CUDA: libcuda loads, has every entry point used
/// here, `cuInit` succeeds and at least one device is visible. Never panics.
pub fn available() -> bool {
    driver().is_ok()
}

/// Why CUDA is unusable here (None when it is usable).
pub fn unavailable_reason() -> Option<String> {
    driver().err()
}

// ---- allocations ------------------------------------------------------------------------

/// A CUDA allocation this process owns, exportable as a POSIX fd and mapped here.
pub struct CudaExport {
    ordinal: c_int,
    handle: cu::CUmemGenericAllocationHandle,
    ptr: u64,
    size: u64,
}

impl CudaExport {
    /// `nbytes` (rounded up to the device's granularity) on device `ordinal`.
    pub fn create(ordinal: c_int, nbytes: u64) -> Result<CudaExport, String> {
        in_context(ordinal, |dev| {
            let vmm = attribute(
                dev,
                cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
            )?;
            let fds = attribute(dev, cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED)?;
            if vmm == 0 || fds == 0 {
                return Err(format!(
                    "CUDA device {ordinal} cannot export memory as file descriptors (virtual memory management {vmm}, POSIX fd handles {fds})"
                ));
            }
            let prop = alloc_prop(dev);
            let gran = granularity(&prop)?;
            let size = nbytes
                .max(1)
                .checked_next_multiple_of(gran)
                .filter(|s| *s <= nodecell_ipc::layout::FD_EXTRA_MAX)
                .ok_or_else(|| format!("a CUDA allocation of {nbytes} bytes is too large"))?;
            let mut handle: cu::CUmemGenericAllocationHandle = 0;
            check(
                // SAFETY: valid out-pointer and property struct; size is a granularity multiple.
                unsafe { cu::cuMemCreate(&mut handle, size as usize, &prop, 0) },
                "cuMemCreate",
            )?;
            match map_read_write(handle, size, gran, dev) {
                Ok(ptr) => Ok(CudaExport {
                    ordinal,
                    handle,
                    ptr,
                    size,
                }),
                Err(e) => {
                    // SAFETY: drops the allocation made above, which nothing maps.
                    let _ = unsafe { cu::cuMemRelease(handle) };
                    Err(e)
                }
            }
        })
    }
}

impl Drop for CudaExport {
    fn drop(&mut self) {
        unregister(self.ptr);
        unmap_and_release(self.ordinal, self.ptr, self.size, self.handle);
    }
}

impl DeviceMemory for CudaExport {
    fn export_fd(&self) -> std::io::Result<OwnedFd> {
        let fd = in_context(self.ordinal, |_| {
            let mut fd: c_int = -1;
            // SAFETY: for POSIX fd handles the out-parameter is an int; the handle is ours.
            let r = unsafe {
                cu::cuMemExportToShareableHandle(
                    &mut fd as *mut c_int as *mut c_void,
                    self.handle,
                    cu::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                    0,
                )
            };
            check(r, "cuMemExportToShareableHandle")?;
            if fd < 0 {
                return Err("cuMemExportToShareableHandle gave no descriptor".to_string());
            }
            Ok(fd)
        })
        .map_err(std::io::Error::other)?;
        // SAFETY: the driver just created this descriptor for us; we own it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn device(&self) -> Device {
        Device::Cuda(u8::try_from(self.ordinal).unwrap_or(u8::MAX))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The layout of `CUmemAllocationProp` with plain integers where the driver writes
/// enum values, so an unexpected value cannot become an invalid Rust enum.
#[repr(C)]
struct RawProp {
    type_: u32,
    handle_types: u32,
    location_type: u32,
    location_id: c_int,
    win32: *mut c_void,
    alloc_flags: [u8; 8],
}

const _: () =
    assert!(std::mem::size_of::<RawProp>() == std::mem::size_of::<cu::CUmemAllocationProp>());
const _: () =
    assert!(std::mem::align_of::<RawProp>() == std::mem::align_of::<cu::CUmemAllocationProp>());

/// A peer's CUDA allocation imported from its fd and mapped read-write here.
pub struct CudaImport {
    ordinal: c_int,
    handle: cu::CUmemGenericAllocationHandle,
    ptr: u64,
    size: u64,
}

impl CudaImport {
    /// Imports the allocation behind `fd` and maps its first `size` bytes (what the
    /// sender announced; the driver refuses more than the allocation holds).
    /// `hint` is the sender's device ordinal, whose context is current for the import.
    pub fn open(fd: BorrowedFd<'_>, size: u64, hint: c_int) -> Result<CudaImport, String> {
        let d = driver()?;
        let hint = if (0..d.devices).contains(&hint) {
            hint
        } else {
            0
        };
        let handle = in_context(hint, |_| {
            let mut handle: cu::CUmemGenericAllocationHandle = 0;
            // SAFETY: a POSIX fd handle is the fd number passed by value as a pointer-sized int;
            // `fd` stays open during the call (the driver takes its own reference).
            let r = unsafe {
                cu::cuMemImportFromShareableHandle(
                    &mut handle,
                    fd.as_raw_fd() as isize as *mut c_void,
                    cu::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                )
            };
            check(r, "cuMemImportFromShareableHandle")?;
            Ok(handle)
        })?;
        let mapped = (|| {
            let mut raw = RawProp {
                type_: 0,
                handle_types: 0,
                location_type: 0,
                location_id: 0,
                win32: std::ptr::null_mut(),
                alloc_flags: [0; 8],
            };
            // SAFETY: RawProp has CUmemAllocationProp's size and alignment (asserted
            // above) and only integer fields, so any bytes the driver writes are valid.
            let r = unsafe {
                cu::cuMemGetAllocationPropertiesFromHandle(
                    &mut raw as *mut RawProp as *mut cu::CUmemAllocationProp,
                    handle,
                )
            };
            check(r, "cuMemGetAllocationPropertiesFromHandle")?;
            if raw.location_type != cu::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE as u32 {
                return Err(format!(
                    "the imported allocation is not device memory (location type {})",
                    raw.location_type
                ));
            }
            let ordinal = raw.location_id;
            let ptr = in_context(ordinal, |dev| {
                let gran = granularity(&alloc_prop(dev))?;
                if !size.is_multiple_of(gran) {
                    return Err(format!("announced size {size} is not a multiple of device {ordinal}'s granularity {gran}"));
                }
                map_read_write(handle, size, gran, dev)
            })?;
            Ok((ordinal, ptr))
        })();
        match mapped {
            Ok((ordinal, ptr)) => Ok(CudaImport {
                ordinal,
                handle,
                ptr,
                size,
            }),
            Err(e) => {
                // SAFETY: drops the reference the import gave us; nothing maps it.
                let _ = unsafe { cu::cuMemRelease(handle) };
                Err(e)
            }
        }
    }
}

impl Drop for CudaImport {
    fn drop(&mut self) {
        unmap_and_release(self.ordinal, self.ptr, self.size, self.handle);
    }
}

/// A received CUDA tensor's storage: the import, and the descriptor to give back
/// when the last tensor over it dies.
pub struct CudaViewKeep {
    import: Arc<CudaImport>,
    release: Option<(nodecell_ipc::WeakChannel, TensorDesc)>,
    channel_id: u64,
    desc: TensorDesc,
}

impl CudaViewKeep {
    fn start(&self) -> u64 {
        self.import.ptr + self.desc.offset
    }
}

impl Drop for CudaViewKeep {
    fn drop(&mut self) {
        unregister(self.start());
        if let Some((ch, desc)) = self.release.take() {
            if let Some(ch) = ch.upgrade() {
                let _ = ch.release_lazy(&desc);
            }
        }
    }
}

// ---- where a device pointer lives ---------------------------------------------------------

enum Owner {
    Buffer(Weak<CudaExport>),
    View(Weak<CudaViewKeep>),
}

static REGISTRY: Mutex<BTreeMap<u64, (u64, Owner)>> = Mutex::new(BTreeMap::new());

fn register(start: u64, len: u64, owner: Owner) {
    lock(&REGISTRY).insert(start, (start + len.max(1), owner));
}

/// Forgets the entry at `start` if what it names is gone (called from destructors).
fn unregister(start: u64) {
    let mut reg = lock(&REGISTRY);
    let dead = match reg.get(&start) {
        Some((_, Owner::Buffer(w))) => w.strong_count() == 0,
        Some((_, Owner::View(w))) => w.strong_count() == 0,
        None => false,
    };
    if dead {
        reg.remove(&start);
    }
}

enum Located {
    Buffer(Arc<CudaExport>, u64),
    View(Arc<CudaViewKeep>, u64),
}

fn locate(ptr: u64, len: u64) -> Option<Located> {
    let mut reg = lock(&REGISTRY);
    loop {
        let (&start, (end, owner)) = reg.range(..=ptr).next_back()?;
        if ptr.checked_add(len.max(1))? > *end {
            return None;
        }
        let found = match owner {
            Owner::Buffer(w) => w.upgrade().map(|b| Located::Buffer(b, ptr - start)),
            Owner::View(w) => w.upgrade().map(|v| Located::View(v, ptr - start)),
        };
        match found {
            Some(f) => return Some(f),
            None => {
                reg.remove(&start);
            }
        }
    }
}

// ---- channels ---------------------------------------------------------------------------

/// Channels (by id) whose host enabled CUDA, and those that have carried CUDA memory.
static ALLOWED: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());
static USED: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());
static ANY_USED: AtomicBool = AtomicBool::new(false);

/// Called for each new channel end that may carry CUDA memory.
pub fn register_channel(channel_id: u64) {
    lock(&ALLOWED).insert(channel_id);
}

/// Called when a channel end closes.
pub fn forget_channel(channel_id: u64) {
    lock(&ALLOWED).remove(&channel_id);
    lock(&USED).remove(&channel_id);
}

fn allowed(channel_id: u64) -> bool {
    lock(&ALLOWED).contains(&channel_id)
}

fn mark_used(channel_id: u64) {
    lock(&USED).insert(channel_id);
    ANY_USED.store(true, Ordering::Release);
}

/// Waits for this process's work on every device it shared memory from or into.
fn synchronize() -> Result<(), String> {
    let ordinals: Vec<c_int> = lock(&PRIMARY).keys().copied().collect();
    for o in ordinals {
        in_context(o, |_| {
            // SAFETY: a plain synchronize of the primary context made current by in_context.
            let r = unsafe { cu::cuCtxSynchronize() };
            check(r, "cuCtxSynchronize")
        })?;
    }
    Ok(())
}

/// Before a frame of `kind` leaves channel `channel_id`: if the channel has carried
/// CUDA memory and the frame hands control to the peer (call, callback, reply,
/// error), finish this process's GPU work so the peer sees complete data.
pub fn before_send(py: Python<'_>, channel_id: u64, kind: u8) -> PyResult<()> {
    use nodecell_ipc::frame::kind as k;
    if !ANY_USED.load(Ordering::Acquire)
        || !matches!(kind, k::CALL | k::CALLBACK | k::REPLY | k::ERROR)
    {
        return Ok(());
    }
    if !lock(&USED).contains(&channel_id) {
        return Ok(());
    }
    py.detach(synchronize).map_err(|e| {
        PyRuntimeError::new_err(format!("CUDA work before sending did not finish: {e}"))
    })
}

/// Encoder: the descriptor for a `TensorRef` whose storage is CUDA memory (ours, or
/// received on this channel and echoed back); None when the storage is not CUDA.
pub fn tensor_desc(
    py: Python<'_>,
    ch: &Channel,
    channel_id: u64,
    storage: &Bound<'_, PyAny>,
    t: &TensorRef,
    dtype: DType,
    strides: &[i64],
) -> PyResult<Option<TensorDesc>> {
    if let Ok(b) = storage.cast::<PyCudaBuffer>() {
        if !allowed(channel_id) {
            return Err(PyTypeError::new_err(
                "a CUDA tensor cannot cross this channel: load the extension with share_cuda_ipc=True (and gpu: true)",
            ));
        }
        let mem: Arc<dyn DeviceMemory> = b.get().inner.clone();
        let d = py
            .detach(|| ch.share_device_tensor(&mem, t.offset, dtype, &t.shape, Some(strides)))
            .map_err(crate::channel::channel_err)?;
        mark_used(channel_id);
        return Ok(Some(d));
    }
    if let Ok(v) = storage.cast::<PyCudaView>() {
        let k = &v.get().keep;
        if k.channel_id != channel_id {
            return Err(PyValueError::new_err(
                "this CUDA tensor's storage arrived on another channel; copy it (.clone()) to send it here",
            ));
        }
        let base = &k.desc;
        let offset = base
            .offset
            .checked_add(t.offset)
            .ok_or_else(|| PyValueError::new_err("tensor offset overflows"))?;
        let bad = |e: nodecell_ipc::TensorError| PyValueError::new_err(e.to_string());
        let span = TensorDesc::new(
            base.slot,
            Origin::Receiver,
            offset,
            u64::MAX - offset,
            dtype,
            &t.shape,
            strides,
            false,
        )
        .and_then(|p| p.span())
        .map_err(bad)?;
        if t.offset
            .checked_add(span)
            .is_none_or(|end| end > base.nbytes)
        {
            return Err(PyValueError::new_err(
                "tensor reaches outside the CUDA storage it was received in",
            ));
        }
        let d = TensorDesc::new(
            base.slot,
            Origin::Receiver,
            offset,
            span,
            dtype,
            &t.shape,
            strides,
            true,
        )
        .map_err(bad)?
        .on_device(base.device);
        mark_used(channel_id);
        return Ok(Some(d));
    }
    Ok(None)
}

fn import_slot(py: Python<'_>, ch: &Channel, d: &TensorDesc) -> PyResult<Arc<CudaImport>> {
    let slot = ch.device_slot(d).map_err(crate::channel::channel_err)?;
    if let Some(a) = slot.attached {
        if let Ok(i) = a.downcast::<CudaImport>() {
            return Ok(i);
        }
    }
    let fd = slot
        .fd
        .ok_or_else(|| PyRuntimeError::new_err("CUDA slot has neither an fd nor an import"))?;
    let size = slot.size;
    let hint = match d.device {
        Device::Cuda(i) => c_int::from(i),
        Device::Cpu => 0,
    };
    let import = py
        .detach(move || CudaImport::open(fd.as_fd(), size, hint))
        .map_err(|e| {
            PyRuntimeError::new_err(format!(
                "a CUDA tensor arrived but cannot be mapped in this process: {e}"
            ))
        })?;
    let import = Arc::new(import);
    let stored = ch.attach_device(d.slot, import.clone());
    // Another thread may have attached its import first: use that one (ours unmaps).
    Ok(stored.downcast::<CudaImport>().unwrap_or(import))
}

/// Decoder: a received cuda descriptor as a torch tensor (through
/// `nodecell._cuda.decode_cuda`). Fails for this value only (the channel stays
/// healthy) when this process cannot map CUDA memory; the descriptor is then given
/// back at once.
pub fn tensor_to_py(
    py: Python<'_>,
    ch: &Channel,
    channel_id: u64,
    d: &TensorDesc,
) -> PyResult<Py<PyAny>> {
    let (keep, data, ordinal) = match d.origin {
        Origin::Receiver => {
            let mem = ch.exported_device(d.slot).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "CUDA slot {} echoed back is no longer shared",
                    d.slot
                ))
            })?;
            let (ptr, ordinal) = match mem.as_any().downcast_ref::<CudaExport>() {
                Some(e) => (e.ptr, e.ordinal),
                None => {
                    return Err(PyValueError::new_err(
                        "echoed CUDA slot is not an allocation of this module",
                    ))
                }
            };
            (Keep::Device(Arc::new(mem)), ptr + d.offset, ordinal)
        }
        Origin::Sender => {
            let import = match import_slot(py, ch, d) {
                Ok(i) => i,
                Err(e) => {
                    let _ = ch.release_lazy(d);
                    return Err(e);
                }
            };
            let (ptr, ordinal) = (import.ptr, import.ordinal);
            let keep = Arc::new(CudaViewKeep {
                import,
                release: Some((ch.downgrade(), d.clone())),
                channel_id,
                desc: d.clone(),
            });
            register(keep.start(), d.nbytes, Owner::View(Arc::downgrade(&keep)));
            (Keep::Device(keep), ptr + d.offset, ordinal)
        }
    };
    mark_used(channel_id);
    let src = DLSource::new(
        keep,
        data as usize as *mut u8,
        d.dtype,
        d.shape().to_vec(),
        d.strides().to_vec(),
        false,
    )
    .on_device((KDL_CUDA, ordinal));
    let m = py.import("nodecell._cuda")?;
    Ok(m.call_method1("decode_cuda", (Bound::new(py, src)?,))?
        .unbind())
}

// ---- Python classes and functions -------------------------------------------------------

/// CUDA memory this process owns, exportable to a peer as an fd (the CUDA
/// counterpart of `Arena`).
#[pyclass(name = "CudaBuffer", module = "nodecell._nodecell", frozen, weakref)]
pub struct PyCudaBuffer {
    inner: Arc<CudaExport>,
}

#[pymethods]
impl PyCudaBuffer {
    /// A new exportable allocation of at least `nbytes` on CUDA device `device`.
    #[new]
    fn new(py: Python<'_>, nbytes: u64, device: i32) -> PyResult<Self> {
        let inner = py
            .detach(|| CudaExport::create(device, nbytes))
            .map_err(|e| {
                PyRuntimeError::new_err(format!(
                    "CUDA buffer of {nbytes} bytes on device {device}: {e}"
                ))
            })?;
        let inner = Arc::new(inner);
        register(inner.ptr, inner.size, Owner::Buffer(Arc::downgrade(&inner)));
        Ok(PyCudaBuffer { inner })
    }

    /// A kDLCUDA DLPack capsule (for ``torch._C._from_dlpack``) over the bytes from
    /// ``offset``: ``dtype`` name, ``shape``, ``strides`` in elements (None:
    /// C-contiguous). Checked against the allocation's size.
    #[pyo3(signature = (offset, dtype, shape, strides = None))]
    fn dlpack(
        &self,
        py: Python<'_>,
        offset: u64,
        dtype: &str,
        shape: Vec<u64>,
        strides: Option<Vec<i64>>,
    ) -> PyResult<Py<PyAny>> {
        let dt = dlpack::dtype(dtype)?;
        let strides = strides.unwrap_or_else(|| crate::arena::contiguous(&shape));
        let span = TensorDesc::new(
            0,
            Origin::Sender,
            offset,
            u64::MAX - offset,
            dt,
            &shape,
            &strides,
            false,
        )
        .and_then(|d| d.span())
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
        if offset
            .checked_add(span)
            .is_none_or(|end| end > self.inner.size)
        {
            return Err(PyValueError::new_err(
                "tensor reaches outside the CUDA buffer",
            ));
        }
        let data = (self.inner.ptr + offset) as usize as *mut u8;
        let keep = Keep::Device(self.inner.clone());
        dlpack::capsule_on(
            py,
            keep,
            data,
            dt,
            &shape,
            &strides,
            (KDL_CUDA, self.inner.ordinal),
        )
    }

    /// Device address of the first byte.
    #[getter]
    fn address(&self) -> u64 {
        self.inner.ptr
    }

    /// Size in bytes (granularity-rounded).
    #[getter]
    fn nbytes(&self) -> u64 {
        self.inner.size
    }

    /// CUDA device ordinal.
    #[getter]
    fn device(&self) -> i32 {
        self.inner.ordinal
    }

    fn __repr__(&self) -> String {
        format!(
            "<nodecell CudaBuffer {} bytes on cuda:{}>",
            self.inner.size, self.inner.ordinal
        )
    }
}

/// A received CUDA tensor's storage (the peer's allocation, mapped read-write here).
#[pyclass(name = "CudaView", module = "nodecell._nodecell", frozen, weakref)]
pub struct PyCudaView {
    keep: Arc<CudaViewKeep>,
}

#[pymethods]
impl PyCudaView {
    /// Device address of the first byte the descriptor covers.
    #[getter]
    fn address(&self) -> u64 {
        self.keep.start()
    }

    /// Bytes the descriptor covers.
    #[getter]
    fn nbytes(&self) -> u64 {
        self.keep.desc.nbytes
    }

    /// CUDA device ordinal (in this process).
    #[getter]
    fn device(&self) -> i32 {
        self.keep.import.ordinal
    }

    /// The id of the channel it arrived on.
    #[getter]
    fn channel_id(&self) -> u64 {
        self.keep.channel_id
    }

    fn __repr__(&self) -> String {
        format!(
            "<nodecell CudaView {} bytes on cuda:{}>",
            self.keep.desc.nbytes, self.keep.import.ordinal
        )
    }
}

/// Whether this process can share CUDA memory: libcuda present, ``cuInit`` OK, a
/// device visible. Initializes the CUDA driver when it can (never call it in a
/// process that forks workers afterwards). Never raises.
#[pyfunction]
fn cuda_available() -> bool {
    available()
}

/// Why CUDA memory cannot be shared here (None when it can). Like ``cuda_available``.
#[pyfunction]
fn cuda_status() -> Option<String> {
    unavailable_reason()
}

/// Whether the channel with this id may carry CUDA memory (``share_cuda_ipc``).
#[pyfunction]
fn cuda_channel(channel_id: u64) -> bool {
    allowed(channel_id)
}

/// Where the CUDA memory at ``address`` (``nbytes`` long) lives: ``(CudaBuffer or
/// CudaView, byte offset from its start)``, or None when it is not shared memory.
#[pyfunction]
fn cuda_locate(py: Python<'_>, address: u64, nbytes: u64) -> PyResult<Option<(Py<PyAny>, u64)>> {
    Ok(match locate(address, nbytes) {
        None => None,
        Some(Located::Buffer(b, off)) => Some((
            Bound::new(py, PyCudaBuffer { inner: b })?
                .into_any()
                .unbind(),
            off,
        )),
        Some(Located::View(v, off)) => Some((
            Bound::new(py, PyCudaView { keep: v })?.into_any().unbind(),
            off,
        )),
    })
}

/// Registers the CUDA classes and functions on the module.
pub fn register_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCudaBuffer>()?;
    m.add_class::<PyCudaView>()?;
    m.add_function(wrap_pyfunction!(cuda_available, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_status, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_channel, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_locate, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the test runs decides what is true, so it asserts the consistency that
    /// must hold everywhere: no panic, and a reason exactly when unavailable. On this
    /// project's CI machines (no GPU) it also proves the "no libcuda" path.
    #[test]
    fn availability_never_panics_and_explains_itself() {
        let a = available();
        assert_eq!(a, unavailable_reason().is_none());
        assert_eq!(available(), a, "cached");
        if !std::path::Path::new("/dev/nvidiactl").exists() {
            assert!(
                !a,
                "no NVIDIA device node here, yet CUDA claims to be available"
            );
            let r = unavailable_reason().unwrap_or_default();
            assert!(!r.is_empty());
        }
    }

    #[test]
    fn bad_inputs_fail_cleanly_with_or_without_a_device() {
        // /dev/null is no exported allocation: refused by the driver, or before it.
        let null = std::fs::File::open("/dev/null").unwrap();
        let e = CudaImport::open(null.as_fd(), 2 << 20, 0)
            .err()
            .unwrap_or_default();
        assert!(!e.is_empty());
        // No machine has device 4096.
        let e = CudaExport::create(4096, 1 << 20).err().unwrap_or_default();
        assert!(e.contains("4096") || !available(), "{e}");
        if !available() {
            let e = CudaExport::create(0, 1 << 20).err().unwrap_or_default();
            assert_eq!(Some(e), unavailable_reason());
            assert!(
                synchronize().is_ok(),
                "nothing retained, nothing to wait for"
            );
        }
    }

    #[test]
    fn registry_finds_live_owners_only() {
        // No CUDA calls: a registry entry for an owner that is already gone.
        let w: Weak<CudaExport> = Weak::new();
        register(0x7000_0000_0000, 4096, Owner::Buffer(w));
        assert!(locate(0x7000_0000_0010, 16).is_none());
        assert!(
            lock(&REGISTRY).get(&0x7000_0000_0000).is_none(),
            "dead entries are dropped on lookup"
        );
        assert!(!allowed(u64::MAX));
        register_channel(u64::MAX);
        assert!(allowed(u64::MAX));
        forget_channel(u64::MAX);
        assert!(!allowed(u64::MAX));
    }
}
