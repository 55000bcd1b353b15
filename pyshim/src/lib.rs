//! The `nodecell._nodecell` extension module. (Being built: see issue 5.)
use pyo3::prelude::*;

/// The private extension module behind the `nodecell` Python package.
#[pymodule]
fn _nodecell(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
