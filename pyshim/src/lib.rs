//! `nodecell._nodecell`: the Rust half of the nodecell Python package.
//!
//! * [`channel::PyChannel`] (`Channel`): frames over the ipc crate's rings, with
//!   Python values converted here and hooks for everything else.
//! * [`arena::PyArena`] / [`arena::PyView`] (`Arena`, `View`): tensor storage
//!   owned here / received from the peer; [`tensor`]: tensors on the channel, the
//!   pooled arenas sent tensors are copied into, the inline record, the dtype table.
//! * [`dispatch::Dispatcher`] (`Dispatcher`): the worker's receiving loop, serving
//!   resolved calls (plain and `async def`) without the Python dispatch code.
//! * [`reactor::PyReactor`] (`Reactor`): the host's io_uring event thread.
//! * [`wire::PyWire`] (`Wire`): the same frames as bytes plus out-of-band tensor
//!   buffers, for transports between machines (the Ray backend).
//! * [`cuda`] (`CudaBuffer`, `CudaView`, `cuda_available`, ...): CUDA tensors across
//!   the sandbox as fd-exported allocations (driver loaded at run time).
//! * [`provision::read_manifest`], [`provision::provision`]: pack environments;
//!   [`find_uv::find_uv`]: the uv they are built with.
//! * [`confine`] (`confine_forked_worker`, `confine_probe`): an app cell's forked workers, each
//!   walled to its own pack (uid, capabilities, Landlock).
//! * [`control`] (`encode_zygote_request`, `decode_zygote_event`, `decode_status_line`, ...):
//!   the zygote control messages and the launcher's status records of `nodecell_wire`.
//! * [`tools`] (`CallStats`, `tools_socket_path`): what `nodecell top` / `debug` / `profile` need.
//! * [`dispatch`] (`Dispatcher`), [`stephold`] (`StepHold`): the worker's call path.
//!
//! The Python package (`pyshim/python/nodecell`) builds the user-facing API on top.
#![deny(missing_docs)]

use pyo3::prelude::*;

pub mod arena;
pub mod channel;
pub mod confine;
pub mod control;
pub mod cuda;
pub mod dispatch;
pub mod dlpack;
pub mod fastcall;
pub mod find_uv;
pub mod heap;
pub mod markers;
pub mod poolenv;
pub mod provision;
mod pyjson;
pub mod reactor;
pub mod stephold;
mod sys;
pub mod tensor;
pub mod tools;
pub mod torchfast;
pub mod values;
pub mod wire;

pyo3::create_exception!(
    _nodecell,
    ProtocolViolation,
    pyo3::exceptions::PyValueError,
    "The peer broke the channel protocol; the channel is poisoned."
);
pyo3::create_exception!(
    _nodecell,
    PeerGone,
    pyo3::exceptions::PyEOFError,
    "The peer process exited or closed its end of the channel."
);
pyo3::create_exception!(
    _nodecell,
    ChannelClosed,
    pyo3::exceptions::PyEOFError,
    "This end of the channel was closed (its resources are released)."
);
pyo3::create_exception!(
    _nodecell,
    ChannelBacklog,
    pyo3::exceptions::PyBufferError,
    "Too much already waits for the peer to read it; the frame was not sent."
);

/// What this kernel offers the channel (the rows `nodecell check` prints for ipc).
#[pyfunction]
fn ipc_probe() -> Vec<(String, bool, String)> {
    nodecell_ipc::probe::probe()
        .into_iter()
        .map(|f| (f.name, f.available, f.detail))
        .collect()
}

/// Bytes in a size such as `"8GB"`, `"512MiB"`, `"1.5G"` or `"4096"`: nodecell's one size
/// table (`KB`/`MB`/`GB`/`TB` powers of 1000, `K`/`M`/`G`/`T` and `KiB`... powers of 1024).
/// Raises `ValueError` saying what is wrong.
#[pyfunction]
fn parse_size(text: &str) -> PyResult<u64> {
    nodecell_units::parse_size(text)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
}

/// OOM kills recorded so far in the memory cgroup directory `dir` (v2
/// `memory.events` or v1 `memory.oom_control`; 0 when unreadable): the
/// sandbox crate's one counter.
#[pyfunction]
fn cgroup_oom_kills(dir: std::path::PathBuf) -> u64 {
    nodecell_sandbox::cgroup::oom_kills_in(&dir)
}

/// A byte count as nodecell prints sizes (`256 MiB`, `8 GB`, `1.5 GiB`).
#[pyfunction]
fn format_size(bytes: u64) -> String {
    nodecell_units::format_size(bytes)
}

/// The private extension module behind the `nodecell` Python package.
#[pymodule]
fn _nodecell(m: &Bound<'_, PyModule>) -> PyResult<()> {
    use nodecell_ipc::frame::{kind, HandleKind};
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("KIND_CALL", kind::CALL)?;
    m.add("INLINE_LIMIT", tensor::INLINE_LIMIT)?;
    m.add("KIND_REPLY", kind::REPLY)?;
    m.add("KIND_ERROR", kind::ERROR)?;
    m.add("KIND_CALLBACK", kind::CALLBACK)?;
    m.add("KIND_CANCEL", kind::CANCEL)?;
    m.add("KIND_RELEASE", kind::RELEASE)?;
    m.add("KIND_LOG", kind::LOG)?;
    m.add("KIND_HEARTBEAT", kind::HEARTBEAT)?;
    // Handle kinds, by name (the wire's codes stay in `nodecell_ipc::frame`).
    m.add("HANDLE_OBJECT", HandleKind::Object.name())?;
    m.add("HANDLE_CALLABLE", HandleKind::Callable.name())?;
    m.add("HANDLE_ASYNC_CALLABLE", HandleKind::AsyncCallable.name())?;
    m.add("ProtocolViolation", m.py().get_type::<ProtocolViolation>())?;
    m.add("PeerGone", m.py().get_type::<PeerGone>())?;
    m.add("ChannelClosed", m.py().get_type::<ChannelClosed>())?;
    m.add("ChannelBacklog", m.py().get_type::<ChannelBacklog>())?;
    m.add_class::<channel::PyChannel>()?;
    m.add_class::<arena::PyArena>()?;
    m.add_class::<arena::PyView>()?;
    m.add_class::<reactor::PyReactor>()?;
    m.add_class::<dlpack::DLSource>()?;
    m.add_class::<wire::PyWire>()?;
    markers::register(m)?;
    control::register(m)?;
    cuda::register_module(m)?;
    tools::register(m)?;
    confine::register(m)?;
    dispatch::register(m)?;
    m.add_class::<stephold::StepHold>()?;
    m.add_class::<fastcall::FastCall>()?;
    m.add_function(wrap_pyfunction!(provision::read_manifest, m)?)?;
    m.add_function(wrap_pyfunction!(provision::provision, m)?)?;
    m.add_function(wrap_pyfunction!(provision::requirement_names, m)?)?;
    m.add_function(wrap_pyfunction!(provision::normalize_name, m)?)?;
    m.add_function(wrap_pyfunction!(provision::requirement_name, m)?)?;
    m.add_function(wrap_pyfunction!(provision::state_root, m)?)?;
    m.add_function(wrap_pyfunction!(ipc_probe, m)?)?;
    m.add_function(wrap_pyfunction!(parse_size, m)?)?;
    m.add_function(wrap_pyfunction!(format_size, m)?)?;
    m.add_function(wrap_pyfunction!(cgroup_oom_kills, m)?)?;
    m.add_function(wrap_pyfunction!(find_uv::find_uv, m)?)?;
    m.add_function(wrap_pyfunction!(arena::locate, m)?)?;
    m.add_function(wrap_pyfunction!(tensor::pool_arena, m)?)?;
    m.add_function(wrap_pyfunction!(tensor::set_tensor_pool, m)?)?;
    m.add_function(wrap_pyfunction!(poolenv::tensor_pool_env_limit, m)?)?;
    m.add_function(wrap_pyfunction!(tensor::tensor_pool_stats, m)?)?;
    m.add_function(wrap_pyfunction!(tensor::inline_tensor, m)?)?;
    m.add_function(wrap_pyfunction!(tensor::dtypes, m)?)?;
    m.add_function(wrap_pyfunction!(heap::worker_heap, m)?)?;
    m.add_function(wrap_pyfunction!(heap::worker_heap_stats, m)?)?;
    m.add_function(wrap_pyfunction!(heap::set_worker_heap, m)?)?;
    Ok(())
}
