//! JSON values <-> Python objects, for the records `_nodecell` checks with serde.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use pyo3::IntoPyObjectExt;

/// Deepest nesting [`py_to_json`] follows.
const MAX_DEPTH: usize = 64;

/// serde_json value -> Python object (objects become dicts, arrays lists).
pub(crate) fn json_to_py(py: Python<'_>, v: &serde_json::Value) -> PyResult<Py<PyAny>> {
    Ok(match v {
        serde_json::Value::Null => py.None(),
        serde_json::Value::Bool(b) => b.into_py_any(py)?,
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_py_any(py)?
            } else if let Some(u) = n.as_u64() {
                u.into_py_any(py)?
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_py_any(py)?
            }
        }
        serde_json::Value::String(s) => s.into_py_any(py)?,
        serde_json::Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len());
            for x in a {
                out.push(json_to_py(py, x)?);
            }
            PyList::new(py, out)?.into_any().unbind()
        }
        serde_json::Value::Object(o) => {
            let d = PyDict::new(py);
            for (k, x) in o {
                d.set_item(k, json_to_py(py, x)?)?;
            }
            d.into_any().unbind()
        }
    })
}

/// Python object (None, bool, int, float, str, list/tuple, dict with str keys) -> JSON.
/// Raises `ValueError` naming the path (`pack.env`) of anything else.
pub(crate) fn py_to_json(obj: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    to_json(obj, &mut String::new(), 0)
}

fn to_json(obj: &Bound<'_, PyAny>, path: &mut String, depth: usize) -> PyResult<serde_json::Value> {
    let here = |path: &str| {
        if path.is_empty() {
            ".".to_string()
        } else {
            path.to_string()
        }
    };
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "{}: nested deeper than {MAX_DEPTH}",
            here(path)
        )));
    }
    if obj.is_none() {
        return Ok(serde_json::Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(b.is_true().into());
    }
    if obj.cast::<PyInt>().is_ok() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(i.into());
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(u.into());
        }
        return Err(PyValueError::new_err(format!(
            "{}: integer out of range",
            here(path)
        )));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(serde_json::Number::from_f64(f.value())
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(s.to_cow()?.into_owned().into());
    }
    if obj.cast::<PyList>().is_ok() || obj.cast::<PyTuple>().is_ok() {
        let mut out = Vec::new();
        for (i, x) in obj.try_iter()?.enumerate() {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            out.push(to_json(&x?, path, depth + 1)?);
            path.truncate(len);
        }
        return Ok(serde_json::Value::Array(out));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut out = serde_json::Map::new();
        for (k, v) in d.iter() {
            let Ok(k) = k.cast::<PyString>().map(|k| k.to_string()) else {
                return Err(PyValueError::new_err(format!(
                    "{}: keys must be strings, got {}",
                    here(path),
                    k.get_type().name()?
                )));
            };
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&k);
            let value = to_json(&v, path, depth + 1)?;
            path.truncate(len);
            out.insert(k, value);
        }
        return Ok(serde_json::Value::Object(out));
    }
    Err(PyValueError::new_err(format!(
        "{}: cannot be sent as JSON: {}",
        here(path),
        obj.get_type().name()?
    )))
}
