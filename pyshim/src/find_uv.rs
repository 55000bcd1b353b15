//! `find_uv`: where the uv executable is, found by the provision crate
//! ([`nodecell_provision::Uv::find`]) so the Python package, the provisioner
//! and the command line search the same places in the same order.

use std::path::Path;

use pyo3::exceptions::PyFileNotFoundError;
use pyo3::prelude::*;

/// The path of the uv executable nodecell builds venvs with. `host_python` and
/// `host_prefix` are the host interpreter and its `sys.prefix`. Raises
/// FileNotFoundError listing every place searched.
#[pyfunction]
#[pyo3(signature = (host_python=None, host_prefix=None))]
pub fn find_uv(host_python: Option<&str>, host_prefix: Option<&str>) -> PyResult<String> {
    nodecell_provision::Uv::find(None, host_python.map(Path::new), host_prefix.map(Path::new))
        .map(|uv| uv.path.display().to_string())
        .map_err(|e| PyFileNotFoundError::new_err(e.to_string()))
}
