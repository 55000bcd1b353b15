//! The zygote control messages and the launcher's status records for the Python
//! layer: encoded and checked by `nodecell_wire`, handed to Python as dicts.
//!
//! * `encode_zygote_request(msg) -> bytes` / `decode_zygote_request(data) -> dict`:
//!   host -> zygote (`spawn`, `kill`, `exit`);
//! * `encode_zygote_event(msg) -> bytes` / `decode_zygote_event(data) -> dict`:
//!   zygote -> host (`ready`, `spawned`, `exited`);
//! * `decode_status_line(line) -> ("up" | "exit", dict)`: `nodecell run --status-fd`.
//!
//! Anything malformed raises `WireError` (a `ValueError`) naming the field.

use nodecell_wire::{control, status};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::pyjson::{json_to_py, py_to_json};

pyo3::create_exception!(
    _nodecell,
    WireError,
    pyo3::exceptions::PyValueError,
    "A control message or status record is malformed (the message names the field)."
);

fn wire_err(e: nodecell_wire::WireError) -> PyErr {
    WireError::new_err(e.to_string())
}

/// Python value -> JSON, naming the field in a `WireError`.
fn json_of(what: &str, msg: &Bound<'_, PyDict>) -> PyResult<serde_json::Value> {
    py_to_json(msg.as_any()).map_err(|e| WireError::new_err(format!("{what}: field {e}")))
}

fn to_dict<T: serde::Serialize>(py: Python<'_>, msg: &T) -> PyResult<Py<PyAny>> {
    let value = serde_json::to_value(msg).map_err(|e| WireError::new_err(e.to_string()))?;
    json_to_py(py, &value)
}

/// Checks a host -> zygote message (`{"op": "spawn", "wid": n, "pack"?: {...}}`,
/// `{"op": "kill", "wid": n}`, `{"op": "exit"}`) and encodes it, with its version.
#[pyfunction]
fn encode_zygote_request<'py>(
    py: Python<'py>,
    msg: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyBytes>> {
    let req = control::request_from_json(json_of("zygote request", msg)?).map_err(wire_err)?;
    Ok(PyBytes::new(py, &control::encode_request(&req)))
}

/// Reads a host -> zygote message as a dict (`op` and its fields).
#[pyfunction]
fn decode_zygote_request(py: Python<'_>, data: &[u8]) -> PyResult<Py<PyAny>> {
    let req = control::decode_request(data).map_err(wire_err)?;
    to_dict(py, &req)
}

/// Checks a zygote -> host message (`ready`, `spawned`, `exited`) and encodes it.
#[pyfunction]
fn encode_zygote_event<'py>(
    py: Python<'py>,
    msg: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyBytes>> {
    let ev = control::event_from_json(json_of("zygote event", msg)?).map_err(wire_err)?;
    Ok(PyBytes::new(py, &control::encode_event(&ev)))
}

/// Reads a zygote -> host message as a dict (`op` and its fields).
#[pyfunction]
fn decode_zygote_event(py: Python<'_>, data: &[u8]) -> PyResult<Py<PyAny>> {
    let ev = control::decode_event(data).map_err(wire_err)?;
    to_dict(py, &ev)
}

/// Reads one `--status-fd` line: `("up", {walls, cgroup, pid, uid, gid, uids})` or
/// `("exit", {code, reason, detail})`.
#[pyfunction]
fn decode_status_line(py: Python<'_>, line: &[u8]) -> PyResult<(&'static str, Py<PyAny>)> {
    match status::decode_line(line).map_err(wire_err)? {
        status::Record::Up(up) => Ok(("up", to_dict(py, &up)?)),
        status::Record::Exit(exit) => Ok(("exit", to_dict(py, &exit)?)),
    }
}

/// Adds the functions, constants and `WireError` to `_nodecell`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CONTROL_VERSION", control::CONTROL_VERSION)?;
    m.add("STATUS_VERSION", status::STATUS_VERSION)?;
    m.add("MAX_CONTROL_BYTES", control::MAX_CONTROL_BYTES)?;
    m.add("WireError", m.py().get_type::<WireError>())?;
    m.add_function(wrap_pyfunction!(encode_zygote_request, m)?)?;
    m.add_function(wrap_pyfunction!(decode_zygote_request, m)?)?;
    m.add_function(wrap_pyfunction!(encode_zygote_event, m)?)?;
    m.add_function(wrap_pyfunction!(decode_zygote_event, m)?)?;
    m.add_function(wrap_pyfunction!(decode_status_line, m)?)?;
    Ok(())
}
