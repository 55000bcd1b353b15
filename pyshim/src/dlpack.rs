//! Zero-copy hand-off of arena memory to torch and numpy through DLPack capsules,
//! and the registry that maps a data pointer back to the arena (or received view)
//! it lives in.
//!
//! A capsule named `"dltensor"` holds a `DLManagedTensor` whose `manager_ctx`
//! keeps the storage alive (an `Arc` of the arena or of the received view). The
//! consumer (`torch._C._from_dlpack`, `numpy.from_dlpack`) renames the capsule
//! and calls the deleter when its tensor dies; a capsule nobody consumed calls the
//! deleter from its own destructor. Dropping the last reference to a received
//! view gives its descriptor back to the peer (see [`crate::arena::ViewKeep`]).

use std::collections::BTreeMap;
use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex, Weak};

use nodecell_ipc::{Arena as IpcArena, DType};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::arena::ViewKeep;

// ---- the DLPack ABI (v0.8, unversioned) -------------------------------------------

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

#[repr(C)]
struct DLPackVersion {
    major: u32,
    minor: u32,
}

#[repr(C)]
struct DLManagedTensorVersioned {
    version: DLPackVersion,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DLTensor,
}

const KDL_CPU: i32 = 1;
/// DLPack's device type for CUDA memory.
pub const KDL_CUDA: i32 = 2;
/// (device type, device id) of host memory.
pub const CPU: (i32, i32) = (KDL_CPU, 0);
const CAPSULE_NAME: &[u8] = b"dltensor\0";
const CAPSULE_NAME_VERSIONED: &[u8] = b"dltensor_versioned\0";
const FLAG_READ_ONLY: u64 = 1;

/// What keeps a capsule's memory alive.
#[derive(Clone)]
pub enum Keep {
    /// One of this process's arenas.
    Arena(Arc<IpcArena>),
    /// A received view (its drop releases the descriptor).
    View(Arc<ViewKeep>),
    /// CUDA memory: an allocation of ours or a received one (see [`crate::cuda`]).
    Device(Arc<dyn std::any::Any + Send + Sync>),
    /// The bytes of a small tensor received inline (see [`crate::tensor`]).
    Bytes(Arc<crate::tensor::Bytes>),
}

struct Ctx {
    _keep: Keep,
    shape: Vec<i64>,
    strides: Vec<i64>,
}

fn dl_dtype(d: DType) -> PyResult<DLDataType> {
    let (code, bits) = match d {
        DType::Bool => (6, 8),
        DType::U8 => (1, 8),
        DType::U16 => (1, 16),
        DType::U32 => (1, 32),
        DType::U64 => (1, 64),
        DType::I8 => (0, 8),
        DType::I16 => (0, 16),
        DType::I32 => (0, 32),
        DType::I64 => (0, 64),
        DType::F16 => (2, 16),
        DType::F32 => (2, 32),
        DType::F64 => (2, 64),
        DType::BF16 => (4, 16),
        DType::Complex64 => (5, 64),
        DType::Complex128 => (5, 128),
        // DLPack 1.1: kDLFloat8_e4m3fn = 10, kDLFloat8_e5m2 = 12.
        DType::F8E4M3FN => (10, 8),
        DType::F8E5M2 => (12, 8),
    };
    Ok(DLDataType {
        code,
        bits,
        lanes: 1,
    })
}

/// The deleter the consumer calls when its tensor dies.
unsafe extern "C" fn deleter(m: *mut DLManagedTensor) {
    if m.is_null() {
        return;
    }
    // SAFETY: `m` was made by `Box::into_raw` in `capsule` and the consumer (or our
    // capsule destructor) calls the deleter exactly once; its ctx likewise.
    let m = unsafe { Box::from_raw(m) };
    if !m.manager_ctx.is_null() {
        // SAFETY: see above; manager_ctx is the Box<Ctx> made with the tensor.
        drop(unsafe { Box::from_raw(m.manager_ctx as *mut Ctx) });
    }
}

/// The deleter of a versioned tensor.
unsafe extern "C" fn deleter_versioned(m: *mut DLManagedTensorVersioned) {
    if m.is_null() {
        return;
    }
    // SAFETY: as for `deleter`: made by Box::into_raw, deleted exactly once.
    let m = unsafe { Box::from_raw(m) };
    if !m.manager_ctx.is_null() {
        // SAFETY: manager_ctx is the Box<Ctx> made with the tensor.
        drop(unsafe { Box::from_raw(m.manager_ctx as *mut Ctx) });
    }
}

/// The versioned capsule's destructor: frees the tensor if nobody consumed it.
unsafe extern "C" fn capsule_destructor_versioned(capsule: *mut pyo3::ffi::PyObject) {
    let name = CAPSULE_NAME_VERSIONED.as_ptr() as *const c_char;
    // SAFETY: as for `capsule_destructor`.
    unsafe {
        if pyo3::ffi::PyCapsule_IsValid(capsule, name) == 1 {
            let (mut t, mut v, mut tb) = (
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            pyo3::ffi::PyErr_Fetch(&mut t, &mut v, &mut tb);
            let m = pyo3::ffi::PyCapsule_GetPointer(capsule, name) as *mut DLManagedTensorVersioned;
            if !m.is_null() {
                if let Some(d) = (*m).deleter {
                    d(m);
                }
            }
            pyo3::ffi::PyErr_Restore(t, v, tb);
        }
    }
}

/// The capsule's destructor: frees the tensor if nobody consumed the capsule.
unsafe extern "C" fn capsule_destructor(capsule: *mut pyo3::ffi::PyObject) {
    let name = CAPSULE_NAME.as_ptr() as *const c_char;
    // SAFETY: CPython calls this with the dying capsule (GIL held); a consumed one was renamed
    // (IsValid false, the consumer owns it); a pending exception is saved and restored.
    unsafe {
        if pyo3::ffi::PyCapsule_IsValid(capsule, name) == 1 {
            let (mut t, mut v, mut tb) = (
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            pyo3::ffi::PyErr_Fetch(&mut t, &mut v, &mut tb);
            let m = pyo3::ffi::PyCapsule_GetPointer(capsule, name) as *mut DLManagedTensor;
            if !m.is_null() {
                if let Some(d) = (*m).deleter {
                    d(m);
                }
            }
            pyo3::ffi::PyErr_Restore(t, v, tb);
        }
    }
}

/// A DLPack 1.0 `"dltensor_versioned"` capsule over `data`, flagged read-only when
/// asked (numpy 2 honours it; unversioned capsules make numpy 2 arrays read-only).
#[allow(clippy::too_many_arguments)]
pub fn capsule_versioned(
    py: Python<'_>,
    keep: Keep,
    data: *mut u8,
    dtype: DType,
    shape: &[u64],
    strides: &[i64],
    readonly: bool,
    device: (i32, i32),
) -> PyResult<Py<PyAny>> {
    let dt = dl_dtype(dtype)?;
    let mut ctx = Box::new(Ctx {
        _keep: keep,
        shape: shape.iter().map(|&s| s as i64).collect(),
        strides: strides.to_vec(),
    });
    let ndim = ctx.shape.len() as i32;
    let m = Box::new(DLManagedTensorVersioned {
        version: DLPackVersion { major: 1, minor: 0 },
        manager_ctx: std::ptr::null_mut(),
        deleter: Some(deleter_versioned),
        flags: if readonly { FLAG_READ_ONLY } else { 0 },
        dl_tensor: DLTensor {
            data: data as *mut c_void,
            device: DLDevice {
                device_type: device.0,
                device_id: device.1,
            },
            ndim,
            dtype: dt,
            shape: ctx.shape.as_mut_ptr(),
            strides: ctx.strides.as_mut_ptr(),
            byte_offset: 0,
        },
    });
    let m = Box::into_raw(m);
    // SAFETY: as in `capsule`.
    unsafe {
        (*m).manager_ctx = Box::into_raw(ctx) as *mut c_void;
    }
    // SAFETY: as in `capsule`.
    let cap = unsafe {
        pyo3::ffi::PyCapsule_New(
            m as *mut c_void,
            CAPSULE_NAME_VERSIONED.as_ptr() as *const c_char,
            Some(capsule_destructor_versioned),
        )
    };
    if cap.is_null() {
        // SAFETY: the capsule was not made, so nobody else holds `m`.
        unsafe { deleter_versioned(m) };
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `cap` is a new reference we own.
    Ok(unsafe { Bound::from_owned_ptr(py, cap) }.unbind())
}

/// A tensor's storage offered to a DLPack consumer (`torch.from_dlpack`,
/// `numpy.from_dlpack`): it makes the capsule the consumer asks for, versioned
/// (with the read-only flag) or not.
#[pyclass(name = "DLSource", module = "nodecell._nodecell", frozen)]
pub struct DLSource {
    keep: Keep,
    data: usize,
    dtype: DType,
    shape: Vec<u64>,
    strides: Vec<i64>,
    readonly: bool,
    device: (i32, i32),
}

impl DLSource {
    /// A source over `data` inside `keep`'s storage.
    pub fn new(
        keep: Keep,
        data: *mut u8,
        dtype: DType,
        shape: Vec<u64>,
        strides: Vec<i64>,
        readonly: bool,
    ) -> Self {
        DLSource {
            keep,
            data: data as usize,
            dtype,
            shape,
            strides,
            readonly,
            device: CPU,
        }
    }

    /// The same source on another DLPack device (`(KDL_CUDA, ordinal)` for CUDA memory).
    pub fn on_device(mut self, device: (i32, i32)) -> Self {
        self.device = device;
        self
    }

    /// An unversioned `"dltensor"` capsule over the memory (what `__dlpack__()` with no
    /// `max_version` gives: torch's reader takes it).
    pub fn capsule(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        capsule_on(
            py,
            self.keep.clone(),
            self.data as *mut u8,
            self.dtype,
            &self.shape,
            &self.strides,
            self.device,
        )
    }
}

#[pymethods]
impl DLSource {
    /// The DLPack producer protocol.
    #[pyo3(signature = (stream = None, max_version = None, dl_device = None, copy = None))]
    fn __dlpack__(
        &self,
        py: Python<'_>,
        stream: Option<Py<PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<Py<PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        let _ = (stream, dl_device);
        if copy == Some(true) {
            return Err(pyo3::exceptions::PyBufferError::new_err(
                "nodecell tensors are shared, not copied",
            ));
        }
        let data = self.data as *mut u8;
        match max_version {
            Some((major, _)) if major >= 1 => capsule_versioned(
                py,
                self.keep.clone(),
                data,
                self.dtype,
                &self.shape,
                &self.strides,
                self.readonly,
                self.device,
            ),
            _ => capsule_on(
                py,
                self.keep.clone(),
                data,
                self.dtype,
                &self.shape,
                &self.strides,
                self.device,
            ),
        }
    }

    /// `(device type, device id)`: (1, 0) for host memory, (2, ordinal) for CUDA.
    fn __dlpack_device__(&self) -> (i32, i32) {
        self.device
    }

    /// Whether consumers should treat the memory as read-only.
    #[getter]
    fn readonly(&self) -> bool {
        self.readonly
    }

    /// The wire name of the element type.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype.name()
    }

    /// The same memory as elements of `dtype`, which must have the same item size
    /// (for consumers that do not know a DLPack code: float8 as uint8, then viewed).
    fn retyped(&self, dtype: &str) -> PyResult<DLSource> {
        let to = self::dtype(dtype)?;
        if to.itemsize() != self.dtype.itemsize() {
            return Err(PyValueError::new_err(format!(
                "{} and {} differ in item size",
                self.dtype.name(),
                to.name()
            )));
        }
        Ok(DLSource {
            keep: self.keep.clone(),
            data: self.data,
            dtype: to,
            shape: self.shape.clone(),
            strides: self.strides.clone(),
            readonly: self.readonly,
            device: self.device,
        })
    }
}

/// A `"dltensor"` capsule over `data` (inside the storage `keep` holds).
/// `strides` are in elements.
pub fn capsule(
    py: Python<'_>,
    keep: Keep,
    data: *mut u8,
    dtype: DType,
    shape: &[u64],
    strides: &[i64],
) -> PyResult<Py<PyAny>> {
    capsule_on(py, keep, data, dtype, shape, strides, CPU)
}

/// [`capsule`] on DLPack device `device` (`(KDL_CUDA, ordinal)` for CUDA memory).
pub fn capsule_on(
    py: Python<'_>,
    keep: Keep,
    data: *mut u8,
    dtype: DType,
    shape: &[u64],
    strides: &[i64],
    device: (i32, i32),
) -> PyResult<Py<PyAny>> {
    let dt = dl_dtype(dtype)?;
    let mut ctx = Box::new(Ctx {
        _keep: keep,
        shape: shape.iter().map(|&s| s as i64).collect(),
        strides: strides.to_vec(),
    });
    let ndim = ctx.shape.len() as i32;
    let m = Box::new(DLManagedTensor {
        dl_tensor: DLTensor {
            data: data as *mut c_void,
            device: DLDevice {
                device_type: device.0,
                device_id: device.1,
            },
            ndim,
            dtype: dt,
            shape: ctx.shape.as_mut_ptr(),
            strides: ctx.strides.as_mut_ptr(),
            byte_offset: 0,
        },
        manager_ctx: std::ptr::null_mut(),
        deleter: Some(deleter),
    });
    let m = Box::into_raw(m);
    // SAFETY: `m` is a valid, uniquely owned DLManagedTensor; its ctx box (freed with it in
    // `deleter`) keeps the shape/strides Vecs, untouched from here, valid.
    unsafe {
        (*m).manager_ctx = Box::into_raw(ctx) as *mut c_void;
    }
    // SAFETY: PyCapsule_New takes the pointer, the static NUL-terminated name and
    // our destructor; on failure it returns NULL with an exception set, and we free.
    let cap = unsafe {
        pyo3::ffi::PyCapsule_New(
            m as *mut c_void,
            CAPSULE_NAME.as_ptr() as *const c_char,
            Some(capsule_destructor),
        )
    };
    if cap.is_null() {
        // SAFETY: the capsule was not made, so nobody else holds `m`.
        unsafe { deleter(m) };
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `cap` is a new reference we own.
    Ok(unsafe { Bound::from_owned_ptr(py, cap) }.unbind())
}

// ---- pointer -> arena registry ----------------------------------------------------------

enum Owner {
    Arena(Weak<IpcArena>),
    View(Weak<ViewKeep>),
}

struct Entry {
    end: usize,
    owner: Owner,
}

static REGISTRY: Mutex<BTreeMap<usize, Entry>> = Mutex::new(BTreeMap::new());

fn registry() -> std::sync::MutexGuard<'static, BTreeMap<usize, Entry>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Remembers an arena's mapping (call again after it is remapped, e.g. frozen).
pub fn register_arena(a: &Arc<IpcArena>) {
    let start = a.as_ptr() as usize;
    if start == 0 {
        return;
    }
    registry().insert(
        start,
        Entry {
            end: start + a.len(),
            owner: Owner::Arena(Arc::downgrade(a)),
        },
    );
}

/// Remembers a received view's bytes.
pub fn register_view(v: &Arc<ViewKeep>) {
    let start = v.view.as_ptr() as usize;
    let len = v.view.len();
    if start == 0 || len == 0 {
        return;
    }
    registry().insert(
        start,
        Entry {
            end: start + len,
            owner: Owner::View(Arc::downgrade(v)),
        },
    );
}

/// What a data pointer lives in.
pub enum Located {
    /// One of our arenas, and the byte offset from its start.
    Arena(Arc<IpcArena>, u64),
    /// A received view, and the byte offset from the view's first byte.
    View(Arc<ViewKeep>, u64),
}

/// Finds the live arena or view holding `[ptr, ptr + len)`.
pub fn locate(ptr: usize, len: usize) -> Option<Located> {
    let mut reg = registry();
    let (&start, entry) = reg.range(..=ptr).next_back()?;
    let end = ptr.checked_add(len.max(1))?;
    if end > entry.end {
        return None;
    }
    let found = match &entry.owner {
        Owner::Arena(w) => w.upgrade().map(|a| Located::Arena(a, (ptr - start) as u64)),
        Owner::View(w) => w.upgrade().map(|v| Located::View(v, (ptr - start) as u64)),
    };
    if found.is_none() {
        reg.remove(&start);
    }
    found
}

/// Checks a dtype name and returns it parsed.
pub fn dtype(name: &str) -> PyResult<DType> {
    DType::from_name(name).ok_or_else(|| PyValueError::new_err(format!("unknown dtype {name:?}")))
}
