//! Small value classes the Python layer hands to the encoder (and gets from the
//! decoder): they name the wire's non-native values explicitly.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// A tensor living in an arena (or in a received view), as the encoder wants it.
#[pyclass(name = "TensorRef", module = "nodecell._nodecell", frozen)]
pub struct TensorRef {
    /// An `Arena` (ours) or a `View` (received on the same channel).
    #[pyo3(get)]
    pub arena: Py<PyAny>,
    /// Byte offset of element [0,..,0] from the arena's (or view's) start.
    #[pyo3(get)]
    pub offset: u64,
    /// dtype name (`float32`, `bfloat16`, ...).
    #[pyo3(get)]
    pub dtype: String,
    /// Dimensions.
    #[pyo3(get)]
    pub shape: Vec<u64>,
    /// Strides in bytes (non-negative multiples of the item size).
    #[pyo3(get)]
    pub strides: Vec<i64>,
    /// `numpy` or `torch`: what the receiver should build.
    #[pyo3(get)]
    pub kind: String,
}

#[pymethods]
impl TensorRef {
    #[new]
    fn new(
        arena: Py<PyAny>,
        offset: u64,
        dtype: String,
        shape: Vec<u64>,
        strides: Vec<i64>,
        kind: String,
    ) -> Self {
        TensorRef {
            arena,
            offset,
            dtype,
            shape,
            strides,
            kind,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "TensorRef(offset={}, dtype={}, shape={:?}, kind={})",
            self.offset, self.dtype, self.shape, self.kind
        )
    }
}

/// A remote handle: an object that stays with its owner, named by id.
#[pyclass(name = "HandleRef", module = "nodecell._nodecell", frozen)]
pub struct HandleRef {
    /// The owner's id for the object.
    #[pyo3(get)]
    pub id: u64,
    /// True when the side sending the frame owns the object.
    #[pyo3(get)]
    pub sender_owns: bool,
    /// `object` or `callable`.
    #[pyo3(get)]
    pub kind: String,
}

#[pymethods]
impl HandleRef {
    #[new]
    fn new(id: u64, sender_owns: bool, kind: String) -> Self {
        HandleRef {
            id,
            sender_owns,
            kind,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "HandleRef(id={}, sender_owns={}, kind={})",
            self.id, self.sender_owns, self.kind
        )
    }
}

/// A registered record (dataclass / enum) by name, with its fields.
#[pyclass(name = "Record", module = "nodecell._nodecell", frozen)]
pub struct Record {
    /// The registration name.
    #[pyo3(get)]
    pub name: String,
    /// Field name -> value.
    #[pyo3(get)]
    pub fields: Py<PyDict>,
}

#[pymethods]
impl Record {
    #[new]
    fn new(name: String, fields: Py<PyDict>) -> Self {
        Record { name, fields }
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let keys: Vec<String> = self
            .fields
            .bind(py)
            .keys()
            .iter()
            .map(|k| k.str().map(|s| s.to_string()).unwrap_or_default())
            .collect();
        format!("Record({:?}, fields={:?})", self.name, keys)
    }
}

/// An exception as data: type name, message, traceback text.
#[pyclass(name = "ErrorValue", module = "nodecell._nodecell", frozen)]
pub struct ErrorValue {
    /// e.g. `ValueError`.
    #[pyo3(get)]
    pub type_name: String,
    /// The message.
    #[pyo3(get)]
    pub message: String,
    /// Formatted traceback.
    #[pyo3(get)]
    pub traceback: String,
}

#[pymethods]
impl ErrorValue {
    #[new]
    #[pyo3(signature = (type_name, message, traceback = String::new()))]
    fn new(type_name: String, message: String, traceback: String) -> Self {
        ErrorValue {
            type_name,
            message,
            traceback,
        }
    }

    fn __repr__(&self) -> String {
        format!("ErrorValue({:?}, {:?})", self.type_name, self.message)
    }
}

/// Registers the classes on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TensorRef>()?;
    m.add_class::<HandleRef>()?;
    m.add_class::<Record>()?;
    m.add_class::<ErrorValue>()?;
    let _ = PyList::empty(m.py());
    Ok(())
}
