//! `Dispatcher`: the worker's receiving loop, serving the host's plain calls in Rust.
//!
//! [`Dispatcher::serve`] receives frames (the GIL released while it waits) and serves
//! a CALL on its own when the Python layer already resolved its `(target, method)`
//! ([`Dispatcher::learn`]: methods of pinned objects, which never change): the
//! arguments are decoded, the method is called with the worker's `_SERVING`
//! context variable set to the call's id, and the value (or the error, described by
//! the `error_value` function) goes back as REPLY (ERROR); then it receives the next
//! frame, without a return to the Python dispatch code. An `async def` method's call
//! becomes an asyncio Task on the worker's loop (so `asyncio.current_task()`, task
//! groups and timeouts work in it) whose first step runs right here, in its copy of the
//! context (with `_SERVING` set) and with the loop set as the running one through the
//! loop-implementer hook `asyncio._set_running_loop`; most such calls end in that
//! step and are answered at once.
//!
//! Everything else returns to Python as `(kind, call_id, payload)`: other frames,
//! nested calls (they carry a parent id), targets not resolved yet, every call while
//! a debugger or profiler hook is set ([`Dispatcher::set_enabled`]), an `async def`
//! call while the loop is driven or blocked elsewhere, and two hand-overs:
//!
//! | kind | payload | the Python layer |
//! |---|---|---|
//! | [`SERVE_AWAITABLE`] | what a plain method returned: an awaitable | awaits it in a task, replies |
//! | [`SERVE_ADOPT`] | the call's task (None: it ended and was answered) | owns the loop (its lock is held): adopts the task, drives the loop, releases the lock |
//!
//! [`Dispatcher::serve`] returns None when nothing came in time, True when it served
//! calls and another thread took the receiving role meanwhile. The receive lock
//! (`rx`, a `threading.Lock` the caller holds) is released while a call runs, so a
//! long call lets another dispatcher thread receive (the watchdog reads
//! [`Dispatcher::receiving`] and [`Dispatcher::rx_idle_for`] to decide).
//!
//! The dispatcher and the endpoint it serves refer to each other: both live as long
//! as the worker process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodecell_ipc::frame::kind;
use nodecell_ipc::{Call, Channel, Frame};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::channel::PyChannel;
use crate::markers::ErrorValue;
use crate::stephold::StepHold;

/// `serve` hands Python an awaitable a plain method returned (kind of the tuple).
pub const SERVE_AWAITABLE: i32 = -1;
/// `serve` hands Python the worker's loop (held) and maybe a call's task to adopt.
pub const SERVE_ADOPT: i32 = -2;
/// Most `(target, method)` entries the table keeps.
const MAX_ENTRIES: usize = 4096;

thread_local! {
    /// The loop this thread left set as its running loop after a call's task ended in
    /// its first step (its address; 0: none set by us). Setting and unsetting the
    /// running loop cost a `getpid` each in CPython 3.11 (a syscall, ~0.3-0.6 us on a VM,
    /// more under seccomp), so a thread serving `async def` calls back to back sets it
    /// once; it is unset before anything else runs on the thread (a plain method, the
    /// Python layer: see [`Dispatcher::unset_loop`]). Per thread, as the running loop is.
    static LOOP_LEFT_SET: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A resolved method.
struct Entry {
    f: Py<PyAny>,
    is_async: bool,
    /// The method's name: an `async def` call's task is named after it (CPython 3.11
    /// formats a default `Task-N` name for every task: ~0.2 us a call).
    name: Py<PyString>,
}

/// The worker's event loop and what running a task's first step needs of it.
struct Aio {
    /// The `_WorkerLoop`.
    lp: Py<PyAny>,
    /// Its owner lock's `acquire` / `release`.
    owner_acquire: Py<PyAny>,
    owner_release: Py<PyAny>,
    /// `create_task` (when a task factory is set).
    create_task: Py<PyAny>,
    /// `{"loop": lp}`: the keyword arguments of `asyncio.Task(coro, loop=lp)`.
    task_kw: Py<PyDict>,
    /// Its `call_soon` (`_nc_step`), which holds back a new task's first step.
    hold: Py<StepHold>,
}

/// What one served call left to do.
enum Step {
    /// Answered; nothing left for Python.
    Done,
    /// Hand this `(kind, call_id, payload)` to Python.
    Python(Py<PyAny>),
}

/// The worker's receiving loop (see the module docs).
#[pyclass(name = "Dispatcher", module = "nodecell._nodecell", frozen)]
pub struct Dispatcher {
    channel: Py<PyChannel>,
    ep: Py<PyAny>,
    rx_acquire: Py<PyAny>,
    rx_release: Py<PyAny>,
    serving_set: Py<PyAny>,
    serving_reset: Py<PyAny>,
    error_value: Py<PyAny>,
    task_error_value: Py<PyAny>,
    isawaitable: Py<PyAny>,
    wd_wake: Py<PyAny>,
    set_running_loop: Py<PyAny>,
    task_type: Py<PyAny>,
    table: Mutex<HashMap<u64, HashMap<String, Entry>>>,
    entries: AtomicU64,
    aio: Mutex<Option<Arc<Aio>>>,
    enabled: AtomicBool,
    receiving: AtomicBool,
    watch_idle: AtomicBool,
    idle_since_ns: AtomicU64,
    active_ns: AtomicU64,
    served: AtomicU64,
    epoch: Instant,
}

#[pymethods]
impl Dispatcher {
    /// `channel`: the worker's end; `endpoint`: the `WorkerEndpoint` (its
    /// `_loop_blocked`, `_nlive`, `_queued` and `_release_queue` are read, its
    /// `flush_releases()` called); `rx`: the receive lock; `serving`: the `_SERVING`
    /// context variable; `error_value(exc)` / `task_error_value(exc)`: an exception as
    /// an `ErrorValue` (the second for a task's exception: cancellation included);
    /// `wd_wake`: the watchdog's `threading.Event`.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        channel: Py<PyChannel>,
        endpoint: Py<PyAny>,
        rx: &Bound<'_, PyAny>,
        serving: &Bound<'_, PyAny>,
        error_value: Py<PyAny>,
        task_error_value: Py<PyAny>,
        wd_wake: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let asyncio = py.import("asyncio")?;
        Ok(Dispatcher {
            channel,
            ep: endpoint,
            rx_acquire: rx.getattr("acquire")?.unbind(),
            rx_release: rx.getattr("release")?.unbind(),
            serving_set: serving.getattr("set")?.unbind(),
            serving_reset: serving.getattr("reset")?.unbind(),
            error_value,
            task_error_value,
            isawaitable: py.import("inspect")?.getattr("isawaitable")?.unbind(),
            wd_wake: wd_wake.getattr("set")?.unbind(),
            // The loop-implementer hook (in asyncio.events.__all__), as _WorkerLoop uses it.
            set_running_loop: asyncio.getattr("_set_running_loop")?.unbind(),
            task_type: asyncio.getattr("Task")?.unbind(),
            table: Mutex::new(HashMap::new()),
            entries: AtomicU64::new(0),
            aio: Mutex::new(None),
            enabled: AtomicBool::new(true),
            receiving: AtomicBool::new(false),
            watch_idle: AtomicBool::new(false),
            idle_since_ns: AtomicU64::new(0),
            active_ns: AtomicU64::new(0),
            served: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Serve calls of `method` on handle `target` with `fn` from now on (`is_async`:
    /// calling it returns a coroutine). Only for objects whose methods never change.
    /// Returns False when the table is full (the call is served by Python then).
    #[pyo3(name = "learn")]
    fn learn(
        &self,
        py: Python<'_>,
        target: u64,
        method: String,
        f: Py<PyAny>,
        is_async: bool,
    ) -> bool {
        if self.entries.load(Ordering::Relaxed) >= MAX_ENTRIES as u64 {
            return false;
        }
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if t.entry(target)
            .or_default()
            .insert(
                method.clone(),
                Entry {
                    f,
                    is_async,
                    name: PyString::intern(py, &method).unbind(),
                },
            )
            .is_none()
        {
            self.entries.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// The worker's event loop (a `_WorkerLoop`) and the lock its driver holds.
    fn set_loop(&self, lp: &Bound<'_, PyAny>, owner: &Bound<'_, PyAny>) -> PyResult<()> {
        let aio = Aio {
            lp: lp.clone().unbind(),
            owner_acquire: owner.getattr("acquire")?.unbind(),
            owner_release: owner.getattr("release")?.unbind(),
            create_task: lp.getattr("create_task")?.unbind(),
            task_kw: {
                let kw = PyDict::new(lp.py());
                kw.set_item("loop", lp)?;
                kw.unbind()
            },
            hold: lp.getattr("_nc_step")?.extract()?,
        };
        *self.aio.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(aio));
        Ok(())
    }

    /// Serve calls here (True, the default) or hand every frame to Python (False:
    /// a debugger or profiler hook wants to see each call).
    fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Whether calls are served here (see `set_enabled`).
    #[getter]
    fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Whether a thread waits in `serve` for the next frame now.
    #[getter]
    fn receiving(&self) -> bool {
        self.receiving.load(Ordering::Relaxed)
    }

    /// Seconds since `serve` last stopped receiving.
    fn rx_idle_for(&self) -> f64 {
        self.since(&self.idle_since_ns)
    }

    /// Seconds since a frame was last handled (`serve`, or `touch`).
    fn inactive_for(&self) -> f64 {
        self.since(&self.active_ns)
    }

    /// A frame was handled now (by the Python layer).
    fn touch(&self) {
        self.active_ns.store(self.now(), Ordering::Relaxed);
    }

    /// The watchdog sleeps until the next frame arrives: `serve` sets `wd_wake` then.
    fn set_watch_idle(&self) {
        self.watch_idle.store(true, Ordering::Relaxed);
    }

    /// Calls answered here so far (without the Python dispatch code).
    #[getter]
    fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Whether the watchdog sleeps (see `set_watch_idle`).
    #[getter]
    fn watch_idle(&self) -> bool {
        self.watch_idle.load(Ordering::Relaxed)
    }

    /// Receive and serve (see the module docs). The caller holds `rx`; it is released
    /// before this returns or raises (and not held again). `timeout`: seconds to wait
    /// for a frame. Raises what receiving or answering raised (the channel is broken).
    fn serve(&self, py: Python<'_>, timeout: f64) -> PyResult<Py<PyAny>> {
        let r = self.serve_frames(py, timeout);
        // Whatever the Python layer does next (drive the loop, run a plain method) must
        // find this thread without a running loop, as it would without the dispatcher.
        let unset = self.unset_loop(py);
        let out = r?;
        unset?;
        Ok(out)
    }
}

impl Dispatcher {
    /// [`Dispatcher::serve`]'s loop (it may leave the worker's loop set as this thread's
    /// running loop; `serve` unsets it).
    fn serve_frames(&self, py: Python<'_>, timeout: f64) -> PyResult<Py<PyAny>> {
        let chan = self.channel.get();
        let wait = Duration::from_secs_f64(timeout.max(0.0));
        loop {
            self.receiving.store(true, Ordering::Relaxed);
            let got = chan
                .ch()
                .and_then(|ch| chan.recv_frame(py, &ch, wait).map(|f| (ch, f)));
            self.receiving.store(false, Ordering::Relaxed);
            self.idle_since_ns.store(self.now(), Ordering::Relaxed);
            self.rx_release.call0(py)?;
            let (ch, f) = match got? {
                (_, None) => return Ok(py.None()),
                (ch, Some(f)) => (ch, f),
            };
            if self.watch_idle.swap(false, Ordering::Relaxed) {
                self.wd_wake.call0(py)?;
            }
            let out = self.handle(py, chan, &ch, f)?;
            self.active_ns.store(self.now(), Ordering::Relaxed);
            if let Step::Python(obj) = out {
                return Ok(obj);
            }
            self.served.fetch_add(1, Ordering::Relaxed);
            if !self.rx_acquire.call1(py, (false,))?.is_truthy(py)? {
                return Ok(PyBool::new(py, true).to_owned().into_any().unbind());
            }
        }
    }

    /// Unsets the running loop this thread left set ([`LOOP_LEFT_SET`]), if any.
    fn unset_loop(&self, py: Python<'_>) -> PyResult<()> {
        if LOOP_LEFT_SET.with(|c| c.replace(0)) != 0 {
            self.set_running_loop.call1(py, (py.None(),))?;
        }
        Ok(())
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn since(&self, stamp: &AtomicU64) -> f64 {
        let then = stamp.load(Ordering::Relaxed);
        self.now().saturating_sub(then) as f64 / 1e9
    }

    fn lookup(
        &self,
        py: Python<'_>,
        target: u64,
        method: &str,
    ) -> Option<(Py<PyAny>, bool, Py<PyString>)> {
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.get(&target)
            .and_then(|m| m.get(method))
            .map(|e| (e.f.clone_ref(py), e.is_async, e.name.clone_ref(py)))
    }

    /// One received frame: served here, or handed to Python.
    fn handle(&self, py: Python<'_>, chan: &PyChannel, ch: &Channel, f: Frame) -> PyResult<Step> {
        let c = match f {
            Frame::Call(c) if c.parent.is_none() && self.enabled.load(Ordering::Relaxed) => c,
            other => return chan.decode(py, ch, other).map(Step::Python),
        };
        let Some((f, is_async, name)) = self.lookup(py, c.target, &c.method) else {
            return chan.decode(py, ch, Frame::Call(c)).map(Step::Python);
        };
        let Call {
            id,
            target,
            method,
            args,
            kwargs,
            ..
        } = c;
        let (args, kwargs) = match chan.call_args(py, ch, args, kwargs) {
            Ok(a) => a,
            Err(e) => {
                self.reply_error(py, chan, id, e, &self.error_value)?;
                return Ok(Step::Done);
            }
        };
        if is_async {
            let f = (f.bind(py), name.bind(py));
            return self.serve_async(py, chan, id, target, method, f, args, kwargs);
        }
        self.unset_loop(py)?; // a plain method runs without a running loop, as it would directly
        let token = self.serving_set.call1(py, (id,))?;
        let kw = (!kwargs.is_empty()).then_some(&kwargs);
        let r = f.bind(py).call(args, kw);
        self.serving_reset.call1(py, (token,))?;
        match r {
            Err(e) => self.reply_error(py, chan, id, e, &self.error_value)?,
            Ok(v) => {
                if may_await(&v) && self.isawaitable.call1(py, (&v,))?.is_truthy(py)? {
                    return Ok(Step::Python((SERVE_AWAITABLE, id, v).into_py_any(py)?));
                }
                self.reply(py, chan, id, &v)?;
            }
        }
        Ok(Step::Done)
    }

    /// An `async def` method's call: its task's first step here when the loop is free.
    #[allow(clippy::too_many_arguments)]
    fn serve_async(
        &self,
        py: Python<'_>,
        chan: &PyChannel,
        id: u64,
        target: u64,
        method: String,
        f: (&Bound<'_, PyAny>, &Bound<'_, PyString>),
        args: Bound<'_, PyTuple>,
        kwargs: Bound<'_, PyDict>,
    ) -> PyResult<Step> {
        let ep = self.ep.bind(py);
        let aio = self.aio.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let free = match &aio {
            None => false,
            Some(aio) => {
                aio.owner_acquire.call1(py, (false,))?.is_truthy(py)?
                    && if ep.getattr(intern!(py, "_loop_blocked"))?.is_truthy()?
                        || ep.getattr(intern!(py, "_nlive"))?.is_truthy()?
                    {
                        aio.owner_release.call0(py)?;
                        false
                    } else {
                        true
                    }
            }
        };
        let Some(aio) = aio.filter(|_| free) else {
            // The Python path queues it on the loop (or runs it detached).
            let payload = (target, method, args, kwargs, py.None());
            return Ok(Step::Python((kind::CALL, id, payload).into_py_any(py)?));
        };
        // This thread drives the loop now: released here when the call is done, by
        // the Python layer when it is handed the loop.
        // The task's context is a copy of this thread's, with `_SERVING` set to the call
        // (unset here once the call was answered: off the call's path).
        let token = self.serving_set.call1(py, (id,))?;
        let r = self.first_step(py, chan, &aio, id, f, args, kwargs);
        self.serving_reset.call1(py, (token,))?;
        if !matches!(r, Ok(Step::Python(_))) {
            aio.owner_release.call0(py)?;
            // Work other threads queued on the loop while this one drove it (they found
            // it taken): drive it now, as `_run_async` does, or nobody would.
            if ep.getattr(intern!(py, "_queued"))?.is_truthy()? {
                self.unset_loop(py)?; // the Python layer sets it while it drives
                ep.call_method0(intern!(py, "_drive_if_free"))?;
            }
        }
        r
    }

    /// Creates the call's task and runs its first step; answers when it ended there.
    #[allow(clippy::too_many_arguments)]
    fn first_step(
        &self,
        py: Python<'_>,
        chan: &PyChannel,
        aio: &Aio,
        id: u64,
        (f, name): (&Bound<'_, PyAny>, &Bound<'_, PyString>),
        args: Bound<'_, PyTuple>,
        kwargs: Bound<'_, PyDict>,
    ) -> PyResult<Step> {
        let kw = (!kwargs.is_empty()).then_some(&kwargs);
        let coro = match f.call(args, kw) {
            Ok(c) => c,
            Err(e) => {
                self.reply_error(py, chan, id, e, &self.error_value)?;
                return Ok(Step::Done);
            }
        };
        let lp = aio.lp.bind(py);
        // The task's first step, which `Task()` queues with `call_soon`, is held back
        // (the loop's `call_soon` is a `StepHold`) to be run right here.
        let task_kw = aio.task_kw.bind(py).copy()?;
        task_kw.set_item(intern!(py, "name"), name)?;
        let hold = aio.hold.get();
        hold.start_hold();
        let made = if !hold.has_factory() {
            self.task_type.bind(py).call((&coro,), Some(&task_kw))
        } else {
            aio.create_task.bind(py).call1((&coro,))
        };
        let held = hold.take_held();
        let task = match made {
            Ok(t) => t,
            Err(e) => {
                let _ = coro.call_method0(intern!(py, "close"));
                self.reply_error(py, chan, id, e, &self.error_value)?;
                return Ok(Step::Done);
            }
        };
        let Some((cb, cb_args, cb_ctx)) = held else {
            return adopt(py, id, Some(task)); // a task factory that queued nothing
        };
        let soon = hold.forwarded();
        let (cb, cb_args, cb_ctx) = (
            cb.into_bound(py),
            cb_args.into_bound(py),
            cb_ctx.into_bound(py),
        );
        let lp_addr = lp.as_ptr() as usize;
        if LOOP_LEFT_SET.with(|c| c.get()) != lp_addr {
            self.unset_loop(py)?;
            self.set_running_loop.call1(py, (lp,))?;
        }
        // Set from here on: unset below unless the task ended in this step.
        LOOP_LEFT_SET.with(|c| c.set(lp_addr));
        let ran = if cb_ctx.is_none() {
            cb.call1(cb_args)
        } else {
            let mut all = Vec::with_capacity(cb_args.len() + 1);
            all.push(cb);
            all.extend(cb_args.iter());
            cb_ctx.call_method1(intern!(py, "run"), PyTuple::new(py, all)?)
        };
        // When the task ended in this step, the loop stays set (the answer is sent with it
        // running, as when a task replies itself) until something else runs on this
        // thread: the next `async def` call on it needs no `getpid` for it.
        let done = ran.and_then(|_| task.call_method0(intern!(py, "done"))?.is_truthy());
        if !matches!(done, Ok(true)) {
            self.unset_loop(py)?;
            done?;
            return adopt(py, id, Some(task));
        }
        // Done in its first step: answered at once. Then a loop turn is needed only
        // when the step queued something (a task it started) or other threads queued
        // work meanwhile (also while the answer was sent, the GIL released).
        let sent = match task.call_method0(intern!(py, "result")) {
            Ok(v) => self.reply(py, chan, id, &v),
            Err(e) => self.reply_error(py, chan, id, e, &self.task_error_value),
        };
        sent?;
        let ep = self.ep.bind(py);
        let idle = !ep.getattr(intern!(py, "_queued"))?.is_truthy()?
            && !ep.getattr(intern!(py, "_nlive"))?.is_truthy()?
            && hold.forwarded() == soon;
        if idle {
            Ok(Step::Done)
        } else {
            adopt(py, id, None)
        }
    }

    /// Sends the REPLY (an error answer when the value cannot be sent), then any
    /// queued releases.
    fn reply(
        &self,
        py: Python<'_>,
        chan: &PyChannel,
        id: u64,
        v: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if let Err(e) = chan.send(py, kind::REPLY, id, v) {
            return self.reply_error(py, chan, id, e, &self.error_value);
        }
        let ep = self.ep.bind(py);
        if ep.getattr(intern!(py, "_release_queue"))?.is_truthy()? {
            ep.call_method0(intern!(py, "flush_releases"))?;
        }
        Ok(())
    }

    /// Sends the ERROR for `e` as `describe(e)` gives it (a short one if that fails).
    fn reply_error(
        &self,
        py: Python<'_>,
        chan: &PyChannel,
        id: u64,
        e: PyErr,
        describe: &Py<PyAny>,
    ) -> PyResult<()> {
        // `into_value` attaches the traceback (the worker's frames) to the exception.
        let sent = describe
            .call1(py, (e.into_value(py),))
            .and_then(|ev| chan.send(py, kind::ERROR, id, ev.bind(py)));
        let Err(e2) = sent else {
            return Ok(());
        };
        let type_name = e2.get_type(py).name()?.to_string();
        let message: String = e2.value(py).str()?.to_string().chars().take(4096).collect();
        let ev = Bound::new(
            py,
            ErrorValue {
                type_name,
                message,
                traceback: String::new(),
            },
        )?;
        chan.send(py, kind::ERROR, id, ev.as_any()).map(|_| ())
    }
}

/// The loop (held) and maybe a task, for the Python layer to drive.
fn adopt(py: Python<'_>, id: u64, task: Option<Bound<'_, PyAny>>) -> PyResult<Step> {
    Ok(Step::Python((SERVE_ADOPT, id, task).into_py_any(py)?))
}

/// Whether `v` may be awaitable (values of the closed set never are).
fn may_await(v: &Bound<'_, PyAny>) -> bool {
    !(v.is_none()
        || v.is_exact_instance_of::<PyBool>()
        || v.is_exact_instance_of::<PyInt>()
        || v.is_exact_instance_of::<PyFloat>()
        || v.is_exact_instance_of::<PyString>()
        || v.is_exact_instance_of::<PyBytes>()
        || v.is_exact_instance_of::<PyTuple>()
        || v.is_exact_instance_of::<PyList>()
        || v.is_exact_instance_of::<PyDict>())
}

/// Registers the class and its constants in the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Dispatcher>()?;
    m.add("SERVE_AWAITABLE", SERVE_AWAITABLE)?;
    m.add("SERVE_ADOPT", SERVE_ADOPT)?;
    m.add("CALL_DONE", crate::channel::CALL_DONE)?;
    m.add("CALL_FAILED", crate::channel::CALL_FAILED)?;
    m.add("CALL_OTHER", crate::channel::CALL_OTHER)?;
    m.add("CALL_WAIT", crate::channel::CALL_WAIT)?;
    m.add("CALL_BROKEN", crate::channel::CALL_BROKEN)?;
    Ok(())
}
