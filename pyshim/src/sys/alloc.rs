//! The allocation functions the worker heap ([`crate::heap`]) puts in torch's
//! `libc10.so` imports: thin C-ABI shims over the heap's safe functions, falling back
//! to libc's own `posix_memalign` and `free` for everything the heap does not serve.

use std::ffi::{c_int, c_void};

/// `posix_memalign` for `libc10.so`: a large block from the worker heap, else libc's.
pub(crate) unsafe extern "C" fn posix_memalign(
    out: *mut *mut c_void,
    align: usize,
    size: usize,
) -> c_int {
    if let Some(p) = crate::heap::take(align, size) {
        // SAFETY: `out` is the caller's result pointer (posix_memalign's contract).
        unsafe { *out = p as *mut c_void };
        return 0;
    }
    // SAFETY: the caller's own arguments, passed on unchanged.
    unsafe { libc::posix_memalign(out, align, size) }
}

/// `free` for `libc10.so`: a worker-heap block goes back to the heap, anything else to libc.
pub(crate) unsafe extern "C" fn free(p: *mut c_void) {
    if crate::heap::give_back(p as usize) {
        return;
    }
    // SAFETY: not a heap block, so memory libc allocated (or null): libc's free takes it.
    unsafe { libc::free(p) }
}

/// Runs `f` in the child of every later `fork()` of this process (`pthread_atfork`);
/// false when it could not be registered (ENOMEM).
pub(crate) fn on_fork_child(f: unsafe extern "C" fn()) -> bool {
    // SAFETY: registers a handler for the rest of the process's life; `f` is a plain
    // function the caller wrote to be async-signal-safe (it only stores atomics).
    unsafe { libc::pthread_atfork(None, None, Some(f)) == 0 }
}
