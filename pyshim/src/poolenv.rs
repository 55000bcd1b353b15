//! `NODECELL_TENSOR_POOL` read where a bad value can be reported: the tensor pool itself
//! ([`nodecell_ipc::ArenaPool::global`]) is made lazily, on a process's first tensor, and
//! can only fall back to its default there.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// The free-arena limit `NODECELL_TENSOR_POOL` sets for this process (the default when
/// unset); a value that cannot be read raises ValueError naming the variable and quoting
/// the value. The host calls it when an extension starts, a worker when it starts.
#[pyfunction]
pub fn tensor_pool_env_limit() -> PyResult<usize> {
    nodecell_ipc::pool::env_limit().map_err(|e| PyValueError::new_err(e.to_string()))
}
