//! The few places `_nodecell` itself talks to the loader and libc directly (everything
//! else goes through `nodecell_ipc::sys`): each function small, each unsafe block with
//! its `// SAFETY:` argument.
//!
//! * [`got`]: finding a loaded library and rewriting its GOT slots for a libc function.
//! * [`alloc`]: the `posix_memalign` / `free` replacements the worker heap installs there.

pub(crate) mod alloc;
pub(crate) mod got;
