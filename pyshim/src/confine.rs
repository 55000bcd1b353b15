//! Confining a worker forked by an app cell's zygote: the Python face of
//! [`nodecell_sandbox::confine::confine_forked_worker`].
//!
//! * `confine_forked_worker(uid, gid, ro_paths, rw_paths, system=True)`: called by
//!   the freshly forked (single-threaded) child before it imports its pack; returns
//!   what was applied as a dict, raises `ConfineError` naming the wall otherwise
//!   (the child must then exit, never run pack code).
//! * `confine_probe()`: whether this kernel can give the pack-separation wall
//!   (`(True, "Landlock ABI n, signals scoped")` or `(False, why)`).
use std::path::PathBuf;

use nodecell_sandbox::confine::{self, ConfineSpec};
use nodecell_sandbox::landlock;
use pyo3::prelude::*;
use pyo3::types::PyDict;

pyo3::create_exception!(
    _nodecell,
    ConfineError,
    pyo3::exceptions::PyRuntimeError,
    "A forked worker could not be confined (the message names the wall); it must not run pack code."
);

/// Confine the calling, freshly forked, single-threaded process: drop every capability,
/// switch to `uid`/`gid` (None: keep), set no_new_privs and stack a Landlock domain allowing
/// only `ro_paths` (read + execute), `rw_paths` (read + write) and, with `system`, the
/// system's read-only paths; signals and abstract sockets scoped to the new domain.
/// Returns `{"uid", "gid", "bounding_dropped", "landlock_abi", "scoped", "rules"}`.
#[pyfunction]
#[pyo3(signature = (uid, gid, ro_paths, rw_paths, system = true))]
pub fn confine_forked_worker<'py>(
    py: Python<'py>,
    uid: Option<u32>,
    gid: Option<u32>,
    ro_paths: Vec<PathBuf>,
    rw_paths: Vec<PathBuf>,
    system: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let spec = ConfineSpec {
        uid,
        gid,
        ro_paths,
        rw_paths,
        system,
    };
    let r =
        confine::confine_forked_worker(&spec).map_err(|e| ConfineError::new_err(e.to_string()))?;
    let d = PyDict::new(py);
    d.set_item("uid", r.uid)?;
    d.set_item("gid", r.gid)?;
    d.set_item("bounding_dropped", r.bounding_dropped)?;
    d.set_item("landlock_abi", r.landlock.abi)?;
    d.set_item("scoped", r.landlock.scoped)?;
    d.set_item("rules", r.landlock.rules)?;
    Ok(d)
}

/// Whether this kernel can separate forked workers: `(True, detail)` when Landlock is
/// there (the detail says its ABI and whether signals are scoped, ABI 6+), else
/// `(False, why)`.
#[pyfunction]
pub fn confine_probe() -> (bool, String) {
    match landlock::requested_abi() {
        Ok(abi) if landlock::abi_has_scope(abi) => (
            true,
            format!("Landlock ABI {abi}, signals and abstract sockets scoped"),
        ),
        Ok(abi) => (
            false,
            format!("Landlock ABI {abi} cannot scope signals (needs ABI 6, Linux 6.12+)"),
        ),
        Err(why) => (false, why),
    }
}

/// Adds this module's functions and exception to `_nodecell`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("ConfineError", m.py().get_type::<ConfineError>())?;
    m.add_function(wrap_pyfunction!(confine_forked_worker, m)?)?;
    m.add_function(wrap_pyfunction!(confine_probe, m)?)?;
    Ok(())
}
