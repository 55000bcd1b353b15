//! `StepHold`: the worker loop's `call_soon`, able to hold back one callback.
//!
//! The worker's `_WorkerLoop` sets an instance of this as its own `call_soon`
//! attribute (an asyncio Task looks `call_soon` up on its loop each time it schedules
//! a step). Normally it counts the callback and forwards to the loop's real
//! `call_soon`. After [`StepHold::hold`] it keeps the next callback instead — the
//! first step that `Task()` schedules — and returns a cancelled handle, so the
//! dispatcher (or `_WorkerLoop.run_step`) runs that step at once, like an eager task,
//! without a Python frame in between.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

/// A held step: `(callback, args, context)`.
pub(crate) type Held = (Py<PyAny>, Py<PyTuple>, Py<PyAny>);

/// The worker loop's `call_soon` (see the module docs).
#[pyclass(name = "StepHold", module = "nodecell._nodecell", frozen)]
pub struct StepHold {
    /// The loop's own `call_soon` (bound).
    call_soon: Py<PyAny>,
    /// What a held `call_soon` returns: a cancelled handle (a Task ignores it).
    handle: Py<PyAny>,
    hold: AtomicBool,
    held: Mutex<Option<Held>>,
    count: AtomicU64,
    factory: AtomicBool,
}

#[pymethods]
impl StepHold {
    /// `call_soon`: the loop's own `call_soon`, bound; `handle`: what a held call returns.
    #[new]
    fn new(call_soon: Py<PyAny>, handle: Py<PyAny>) -> Self {
        StepHold {
            call_soon,
            handle,
            hold: AtomicBool::new(false),
            held: Mutex::new(None),
            count: AtomicU64::new(0),
            factory: AtomicBool::new(false),
        }
    }

    /// `loop.call_soon(callback, *args, context=None)`: held (after `hold`) or
    /// counted and forwarded. The loop's `call_soon` attribute is this bound method (a
    /// bound method of a Rust class takes its arguments as a vector, without the tuple
    /// and keyword dict a call of the object itself would be given).
    #[pyo3(signature = (callback, *args, context = None))]
    fn call_soon(
        &self,
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        self.soon(py, callback, args, context)
    }

    /// Hold back the next callback (the owner thread of the loop only).
    fn hold(&self) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.hold.store(true, Ordering::Relaxed);
    }

    /// The callback held since `hold` as `(callback, args, context)`, None if none
    /// came; stops holding.
    fn take(&self) -> Option<Held> {
        self.take_held()
    }

    /// Whether the loop has a task factory (its `set_task_factory` says so).
    fn set_factory(&self, on: bool) {
        self.factory.store(on, Ordering::Relaxed);
    }

    /// Callbacks forwarded so far (held ones not counted).
    #[getter]
    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl StepHold {
    /// `call_soon`: held (after `hold`) or counted and forwarded.
    fn soon(
        &self,
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        if self.hold.swap(false, Ordering::Relaxed) {
            let ctx = context.unwrap_or_else(|| py.None());
            *self.held.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((callback, args.unbind(), ctx));
            return Ok(self.handle.clone_ref(py));
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut all = Vec::with_capacity(args.len() + 1);
        all.push(callback.into_bound(py));
        all.extend(args.iter());
        let all = PyTuple::new(py, all)?;
        let call_soon = self.call_soon.bind(py);
        match context {
            None => call_soon.call1(all),
            Some(ctx) => {
                let kw = PyDict::new(py);
                kw.set_item(pyo3::intern!(py, "context"), ctx)?;
                call_soon.call(all, Some(&kw))
            }
        }
        .map(Bound::unbind)
    }

    /// `take` for Rust callers.
    pub(crate) fn take_held(&self) -> Option<Held> {
        self.hold.store(false, Ordering::Relaxed);
        self.held.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// `hold` for Rust callers.
    pub(crate) fn start_hold(&self) {
        self.hold();
    }

    /// Whether the loop has a task factory (see `set_factory`).
    pub(crate) fn has_factory(&self) -> bool {
        self.factory.load(Ordering::Relaxed)
    }

    /// `count` for Rust callers.
    pub(crate) fn forwarded(&self) -> u64 {
        self.count()
    }
}
