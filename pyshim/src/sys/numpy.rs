//! numpy's allocation hook (`PyDataMem_SetHandler`, NumPy >= 1.22): a handler whose
//! `malloc`/`realloc`/`free` serve large array buffers from the worker heap
//! ([`crate::heap`]) and hand everything else (and every `calloc`: numpy's lazily
//! zeroed `np.zeros`) to numpy's own default policy (its small-buffer cache included). The handler is a static `PyDataMem_Handler` in a capsule
//! named `mem_handler`; numpy keeps a reference to it in every array it allocates, so
//! each buffer is freed by the handler that made it.

use std::ffi::{c_void, CStr};

use pyo3::prelude::*;
use pyo3::types::PyCapsule;

/// numpy's `PyDataMemAllocator`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Allocator {
    ctx: *mut c_void,
    malloc: unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void,
    calloc: unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void,
    realloc: unsafe extern "C" fn(*mut c_void, *mut c_void, usize) -> *mut c_void,
    free: unsafe extern "C" fn(*mut c_void, *mut c_void, usize),
}

/// numpy's `PyDataMem_Handler` (version 1).
#[repr(C)]
struct Handler {
    name: [u8; 127],
    version: u8,
    allocator: Allocator,
}

// SAFETY: immutable plain data (a name and function pointers; ctx is null).
unsafe impl Sync for Handler {}

/// numpy's own default policy, which serves everything the heap does not (its small-
/// buffer cache included), read once when the heap's policy is set.
struct Default(Allocator);

// SAFETY: numpy's default allocator: function pointers and a context numpy shares
// between all threads (its functions are thread-safe: numpy calls them without the GIL).
unsafe impl Send for Default {}
// SAFETY: as above.
unsafe impl Sync for Default {}

static DEFAULT: std::sync::OnceLock<Default> = std::sync::OnceLock::new();

const fn name(s: &[u8]) -> [u8; 127] {
    let mut out = [0u8; 127];
    let mut i = 0;
    while i < s.len() && i < 126 {
        out[i] = s[i];
        i += 1;
    }
    out
}

static HANDLER: Handler = Handler {
    name: name(b"nodecell_worker_heap"),
    version: 1,
    allocator: Allocator {
        ctx: std::ptr::null_mut(),
        malloc: np_malloc,
        calloc: np_calloc,
        realloc: np_realloc,
        free: np_free,
    },
};

/// The capsule name numpy checks.
const CAPSULE_NAME: &CStr = c"mem_handler";
/// `PyDataMem_DefaultHandler`'s slot in numpy's C-API table (stable since NumPy 1.22:
/// the table only grows).
const DEFAULT_HANDLER_SLOT: usize = 306;

fn default() -> Option<&'static Allocator> {
    DEFAULT.get().map(|d| &d.0)
}

unsafe extern "C" fn np_malloc(_ctx: *mut c_void, size: usize) -> *mut c_void {
    if let Some(p) = crate::heap::take(16, size) {
        return p as *mut c_void;
    }
    match default() {
        // SAFETY: numpy's default allocator with its own context.
        Some(d) => unsafe { (d.malloc)(d.ctx, size) },
        // SAFETY: plain libc allocation of the size numpy asked for.
        None => unsafe { libc::malloc(size) },
    }
}

unsafe extern "C" fn np_calloc(_ctx: *mut c_void, n: usize, size: usize) -> *mut c_void {
    // Never the heap: numpy's zeros come as lazily zeroed pages.
    match default() {
        // SAFETY: numpy's default allocator with its own context.
        Some(d) => unsafe { (d.calloc)(d.ctx, n, size) },
        // SAFETY: plain libc allocation.
        None => unsafe { libc::calloc(n, size) },
    }
}

unsafe extern "C" fn np_realloc(ctx: *mut c_void, p: *mut c_void, size: usize) -> *mut c_void {
    let Some(old) = crate::heap::block_len(p as usize) else {
        return match default() {
            // SAFETY: not a heap block, so the default allocator's (or null).
            Some(d) => unsafe { (d.realloc)(d.ctx, p, size) },
            // SAFETY: as above, libc's.
            None => unsafe { libc::realloc(p, size) },
        };
    };
    // SAFETY: np_malloc's contract, called with numpy's own ctx.
    let q = unsafe { np_malloc(ctx, size) };
    if !q.is_null() {
        // SAFETY: `p` is a live heap block of `old` bytes, `q` a fresh block of at least
        // `size`: the first min(old, size) bytes of each are valid and do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, old.min(size)) };
        crate::heap::give_back(p as usize);
    }
    q
}

unsafe extern "C" fn np_free(_ctx: *mut c_void, p: *mut c_void, size: usize) {
    if crate::heap::give_back(p as usize) {
        return;
    }
    match default() {
        // SAFETY: not a heap block, so the default allocator's (or null).
        Some(d) => unsafe { (d.free)(d.ctx, p, size) },
        // SAFETY: as above, libc's.
        None => unsafe { libc::free(p) },
    }
}

/// Makes the worker heap numpy's allocation policy in every thread and context: numpy's
/// default policy object (`PyDataMem_DefaultHandler`, the capsule every context without
/// a policy of its own uses, and that every array it allocated names) is pointed at our
/// handler, after saving numpy's own functions, to which ours hand everything that is
/// not a heap block (so arrays allocated before are freed by numpy's own `free`).
/// `api` is numpy's `_ARRAY_API` capsule; the caller checked numpy's version (>= 1.22).
pub(crate) fn install(api: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = api.py();
    let api = api.cast::<PyCapsule>()?;
    let table = api.pointer_checked(None)?.as_ptr() as *const *const c_void;
    // `_ARRAY_API` is numpy's C-API table; in every numpy >= 1.22 (the table only grows) slot
    // 306 holds the address of `PyDataMem_DefaultHandler`, the default policy capsule's PyObject *.
    // SAFETY: reads that slot and the pointer it holds, both numpy's, alive as long as numpy.
    let cap = unsafe { *(*table.add(DEFAULT_HANDLER_SLOT) as *const *mut pyo3::ffi::PyObject) };
    if cap.is_null() {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(
            "numpy has no default memory handler",
        ));
    }
    // SAFETY: a live capsule named "mem_handler"; NULL (with an exception) if not.
    let h = unsafe { pyo3::ffi::PyCapsule_GetPointer(cap, CAPSULE_NAME.as_ptr()) };
    if h.is_null() {
        return Err(PyErr::fetch(py));
    }
    let ours = std::ptr::addr_of!(HANDLER) as *mut c_void;
    if h == ours {
        return Ok(());
    }
    // SAFETY: numpy's default PyDataMem_Handler, a static of numpy's.
    let _ = DEFAULT.set(Default(unsafe { (*(h as *const Handler)).allocator }));
    // A word store: a thread reading the capsule meanwhile sees either handler, and ours passes
    // what it does not serve to numpy's saved functions.
    // SAFETY: the GIL is held; the new pointer is a static handler living as long as the process.
    if unsafe { pyo3::ffi::PyCapsule_SetPointer(cap, ours) } != 0 {
        return Err(PyErr::fetch(py));
    }
    Ok(())
}
