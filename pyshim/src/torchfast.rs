//! torch tensors recognised in Rust: the encoder's fast path for a CPU tensor already in
//! an arena (or in a view received on the same channel), and the direct build of a
//! received torch tensor, both without a call into the Python layer.
//!
//! Everything else a tensor can be (private storage to copy and re-point, small enough
//! to travel inline, CUDA, sparse, a dtype the wire lacks, a subclass) still goes
//! through the Python hooks (`_tensors.encode_torch`, `_tensors.decode_tensor`): this
//! module only answers the common case, and answers `None` for the rest.
//!
//! What it caches, once `torch` is in `sys.modules` (never importing it): the exact
//! type `torch.Tensor`, `torch.strided`, each wire dtype's torch dtype object, and
//! `torch._C._from_dlpack`.

use nodecell_ipc::{DType, Record as IpcRecord, TensorDesc, TensorKind, Value, TENSOR_RECORD};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::dlpack::{self, Keep, Located};
use crate::tensor::{located_desc, End, INLINE_LIMIT};

/// What the fast paths need from torch, looked up once.
struct Torch {
    /// `torch.Tensor` (the exact type: subclasses take the Python path).
    tensor: Py<PyType>,
    /// `torch.strided`.
    strided: Py<PyAny>,
    /// `torch._C._from_dlpack`.
    from_dlpack: Py<PyAny>,
    /// The torch dtype object of each wire dtype this torch has (they are singletons).
    dtypes: Vec<(Py<PyAny>, DType)>,
}

static TORCH: PyOnceLock<Torch> = PyOnceLock::new();
static SYS_MODULES: PyOnceLock<Py<PyDict>> = PyOnceLock::new();

/// The cached torch entry points, once torch is imported (None before, or while its
/// import is still running).
fn torch(py: Python<'_>) -> Option<&'static Torch> {
    if let Some(t) = TORCH.get(py) {
        return Some(t);
    }
    let modules = SYS_MODULES
        .get_or_try_init(py, || -> PyResult<Py<PyDict>> {
            Ok(py
                .import("sys")?
                .getattr("modules")?
                .cast_into::<PyDict>()?
                .unbind())
        })
        .ok()?
        .bind(py);
    let m = modules.get_item("torch").ok()??;
    let look = || -> PyResult<Torch> {
        let tensor = m.getattr("Tensor")?.cast_into::<PyType>()?.unbind();
        let strided = m.getattr("strided")?.unbind();
        let from_dlpack = m.getattr("_C")?.getattr("_from_dlpack")?.unbind();
        let dtype_type = m.getattr("dtype")?;
        let mut dtypes = Vec::new();
        for d in DType::ALL {
            if let Ok(o) = m.getattr(d.name()) {
                if o.is_instance(&dtype_type)? {
                    dtypes.push((o.unbind(), d));
                }
            }
        }
        Ok(Torch {
            tensor,
            strided,
            from_dlpack,
            dtypes,
        })
    };
    let t = look().ok()?;
    crate::heap::torch_imported(py);
    let _ = TORCH.set(py, t);
    TORCH.get(py)
}

impl Torch {
    fn dtype_of(&self, o: &Bound<'_, PyAny>) -> Option<DType> {
        self.dtypes
            .iter()
            .find(|(d, _)| d.bind(o.py()).is(o))
            .map(|(_, d)| *d)
    }
}

/// The wire value of `obj` when it is a `torch.Tensor` (exactly), strided, of a wire
/// dtype, too large to travel inline, and already in one of our arenas or in a view
/// received on this channel; `None` otherwise (the encode hook decides then). Only CPU
/// memory is registered as arenas and views, so a tensor found there is a CPU tensor.
pub(crate) fn encode(
    end: &End<'_>,
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
) -> PyResult<Option<Value>> {
    let Some(t) = torch(py) else {
        return Ok(None);
    };
    if !obj.get_type().is(t.tensor.bind(py))
        || !obj.getattr(intern!(py, "layout"))?.is(t.strided.bind(py))
    {
        return Ok(None);
    }
    let Some(dtype) = t.dtype_of(&obj.getattr(intern!(py, "dtype"))?) else {
        return Ok(None);
    };
    // Storage-less tensors (meta, some wrappers) raise here: the hook reports them.
    let Ok(ptr) = obj
        .call_method0(intern!(py, "data_ptr"))
        .and_then(|p| p.extract::<usize>())
    else {
        return Ok(None);
    };
    if ptr == 0 {
        return Ok(None);
    }
    let Ok(shape) = dims(&obj.getattr(intern!(py, "shape"))?)?
        .into_iter()
        .map(u64::try_from)
        .collect::<Result<Vec<u64>, _>>()
    else {
        return Ok(None);
    };
    let nbytes = shape
        .iter()
        .try_fold(dtype.itemsize(), |n, &s| n.checked_mul(s));
    if nbytes.is_none_or(|n| n < INLINE_LIMIT) {
        return Ok(None);
    }
    let Some(loc) = dlpack::locate(ptr, 1) else {
        return Ok(None);
    };
    if let Located::View(v, _) = &loc {
        if v.channel_id != end.id {
            return Ok(None);
        }
    }
    let strides = dims(&obj.call_method0(intern!(py, "stride"))?)?;
    let desc = located_desc(end, py, loc, dtype, &shape, &strides)?;
    Ok(Some(Value::KindTensor(TensorKind::Torch, Box::new(desc))))
}

/// The items of a tuple of ints (`torch.Size` is a tuple subclass; `stride()` a tuple).
fn dims(o: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
    let t = o.cast::<PyTuple>()?;
    let mut v = Vec::with_capacity(t.len());
    for i in t.iter() {
        v.push(i.extract()?);
    }
    Ok(v)
}

/// The `nodecell.tensor {kind, t}` record of a descriptor ([`Value::KindTensor`] for the
/// two kinds; a `kind` that is neither travels as written, and its receiver refuses it).
pub(crate) fn tensor_record(kind: &str, desc: TensorDesc) -> Value {
    match TensorKind::from_name(kind) {
        Some(k) => Value::KindTensor(k, Box::new(desc)),
        None => Value::Record(Box::new(IpcRecord {
            name: TENSOR_RECORD.to_string(),
            fields: vec![
                ("kind".to_string(), Value::Str(kind.to_string())),
                ("t".to_string(), Value::Tensor(Box::new(desc))),
            ],
        })),
    }
}

/// A received tensor's memory (`data`, inside `keep`'s storage; `strides` in elements)
/// as a torch tensor, built here when torch is imported (no Python hook, no
/// [`DLSource`](crate::dlpack::DLSource)); None when torch is not imported or its
/// DLPack reader refused the dtype (float8 on an older torch): the hook decides then.
pub(crate) fn decode(
    py: Python<'_>,
    keep: &Keep,
    data: *mut u8,
    dtype: DType,
    shape: &[u64],
    strides: &[i64],
) -> Option<Py<PyAny>> {
    let t = torch(py)?;
    let capsule = dlpack::capsule(py, keep.clone(), data, dtype, shape, strides).ok()?;
    t.from_dlpack
        .bind(py)
        .call1((capsule,))
        .ok()
        .map(Bound::unbind)
}
