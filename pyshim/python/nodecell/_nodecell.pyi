"""Type stubs for ``nodecell._nodecell``, the Rust half of the nodecell package."""

from typing import Any, Callable, Dict, List, Optional, Tuple, final

__version__: str
__all__ = [
    "Arena",
    "CALL_BROKEN",
    "CALL_DONE",
    "CALL_FAILED",
    "CALL_OTHER",
    "CALL_WAIT",
    "CONTROL_VERSION",
    "CallStats",
    "Channel",
    "ChannelBacklog",
    "ChannelClosed",
    "ConfineError",
    "FastCall",
    "CudaBuffer",
    "CudaView",
    "DLSource",
    "Dispatcher",
    "ErrorValue",
    "HANDLE_ASYNC_CALLABLE",
    "HANDLE_CALLABLE",
    "HANDLE_OBJECT",
    "HandleRef",
    "INLINE_LIMIT",
    "KIND_CALL",
    "KIND_CALLBACK",
    "KIND_CANCEL",
    "KIND_ERROR",
    "KIND_HEARTBEAT",
    "KIND_LOG",
    "KIND_RELEASE",
    "KIND_REPLY",
    "MAX_CONTROL_BYTES",
    "PeerGone",
    "ProtocolViolation",
    "Reactor",
    "Record",
    "SERVE_ADOPT",
    "SERVE_AWAITABLE",
    "STATUS_VERSION",
    "StepHold",
    "TensorRef",
    "View",
    "Wire",
    "WireError",
    "confine_forked_worker",
    "confine_probe",
    "cuda_available",
    "cuda_channel",
    "cuda_locate",
    "cuda_status",
    "decode_status_line",
    "decode_zygote_event",
    "decode_zygote_request",
    "dtypes",
    "encode_zygote_event",
    "encode_zygote_request",
    "find_uv",
    "cgroup_oom_kills",
    "format_size",
    "inline_tensor",
    "ipc_probe",
    "locate",
    "normalize_name",
    "parse_size",
    "pool_arena",
    "provision",
    "read_manifest",
    "requirement_name",
    "requirement_names",
    "set_tensor_pool",
    "set_worker_heap",
    "state_root",
    "tensor_pool_env_limit",
    "tensor_pool_stats",
    "tools_socket_path",
    "worker_heap",
    "worker_heap_stats",
    "__version__",
]

KIND_CALL: int
#: Tensors under this many bytes travel inline in the frame, not in an arena.
INLINE_LIMIT: int
#: Handle kind names (``HandleRef.kind``): an object, a plain callable, an ``async def`` callable.
HANDLE_OBJECT: str
HANDLE_CALLABLE: str
HANDLE_ASYNC_CALLABLE: str
KIND_REPLY: int
KIND_ERROR: int
KIND_CALLBACK: int
KIND_CANCEL: int
KIND_RELEASE: int
KIND_LOG: int
KIND_HEARTBEAT: int
#: ``Channel.call_spin`` states: the answer (value / exception) came; another frame came
#: first; no answer yet; receiving failed after the call was sent.
CALL_DONE: int
CALL_FAILED: int
CALL_OTHER: int
CALL_WAIT: int
CALL_BROKEN: int
#: ``Dispatcher.serve`` hand-overs (negative frame kinds): an awaitable a plain method
#: returned; the worker's loop (held) and maybe a call's task to adopt.
SERVE_AWAITABLE: int
SERVE_ADOPT: int

class ProtocolViolation(ValueError):
    """The peer broke the channel protocol; the channel is poisoned."""

class PeerGone(EOFError):
    """The peer process exited or closed its end of the channel."""

class ChannelClosed(EOFError):
    """This end of the channel was closed (its resources are released)."""

class ChannelBacklog(BufferError):
    """Too much already waits for the peer to read it; the frame was not sent."""

@final
class Dispatcher:
    """The worker's receiving loop: serves resolved calls (plain and ``async def``) in
    Rust and hands everything else to the Python layer."""

    def __new__(cls, channel: Channel, endpoint: Any, rx: Any, serving: Any,
                error_value: Callable[[BaseException], Any], task_error_value: Callable[[BaseException], Any],
                wd_wake: Any) -> Dispatcher: ...
    def learn(self, target: int, method: str, f: Callable[..., Any], is_async: bool) -> bool:
        """Serve calls of ``method`` on handle ``target`` with ``f`` from now on."""
    def set_loop(self, lp: Any, owner: Any) -> None:
        """The worker's event loop and the lock its driver holds."""
    def set_enabled(self, on: bool) -> None:
        """Serve calls here (True) or hand every frame to Python (a hook is set)."""
    @property
    def enabled(self) -> bool:
        """Whether calls are served here."""
    @property
    def receiving(self) -> bool:
        """Whether a thread waits in ``serve`` for the next frame now."""
    def rx_idle_for(self) -> float:
        """Seconds since ``serve`` last stopped receiving."""
    def inactive_for(self) -> float:
        """Seconds since a frame was last handled."""
    def touch(self) -> None:
        """A frame was handled now (by the Python layer)."""
    def set_watch_idle(self) -> None:
        """The watchdog sleeps until the next frame arrives (``serve`` wakes it)."""
    @property
    def watch_idle(self) -> bool:
        """Whether the watchdog sleeps."""
    @property
    def served(self) -> int:
        """Calls answered in Rust so far (without the Python dispatch code)."""
    def serve(self, timeout: float) -> Any:
        """Receive and serve; None (nothing came), True (another thread receives now) or
        a ``(kind, call_id, payload)`` for Python. Releases the receive lock the caller holds."""

@final
class FastCall:
    """The host's common case of ``await ext.method(...)`` in one Rust call, on the worker
    it was armed with; returns ``not_sent`` when nothing was sent (take the general path),
    ``after_spin(w, call_id, state, payload, more, elapsed_ns)`` (receive lock held) when
    the answer did not come in the spin, ``send_failed(w, call_id, method, exc)`` when
    sending raised; else the value (or raises the worker's error)."""

    def __new__(cls, target: int, not_sent: Any, after_spin: Callable[..., Any], send_failed: Callable[..., Any],
                profile: Any, stats: CallStats) -> FastCall: ...
    def __call__(self, method: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any: ...
    def arm(self, w: Any, channel: Channel, rx: Any, lp: Any, ep: Any, ids: Any) -> None:
        """Send calls to worker ``w`` from now on (its channel, receive lock, loop, endpoint, call ids);
        called on the thread running ``lp``, while it runs."""
    def disarm(self) -> None:
        """Every call takes the general path until armed again."""
    @property
    def armed(self) -> bool:
        """Whether calls take the fast path (before the per-call checks)."""
    @property
    def answered(self) -> int:
        """Calls answered by the fast path itself (no Python continuation) since it was made."""

@final
class StepHold:
    """The worker loop's ``call_soon``: counts and forwards callbacks to the loop's own
    ``call_soon``, or, after ``hold()``, keeps the next one (a new task's first step)."""

    def __new__(cls, call_soon: Callable[..., Any], handle: Any) -> StepHold: ...
    def call_soon(self, callback: Callable[..., Any], *args: Any, context: Any = None) -> Any:
        """``loop.call_soon``: held (after ``hold()``) or counted and forwarded (the loop's
        ``call_soon`` attribute is this method)."""
    def hold(self) -> None:
        """Hold back the next callback."""
    def take(self) -> Optional[Tuple[Callable[..., Any], Tuple[Any, ...], Any]]:
        """The held ``(callback, args, context)``, None if none came; stops holding."""
    def set_factory(self, on: bool) -> None:
        """Whether the loop has a task factory (its ``set_task_factory`` says so)."""
    @property
    def count(self) -> int:
        """Callbacks forwarded so far (held ones not counted)."""

@final
class Channel:
    """One end of a host/worker channel (rings in a sealed memfd + a socket for fds)."""

    @staticmethod
    def create(max_frame: int = ..., stall_timeout: float = ..., cuda: bool = False,
               frozen_outputs: bool = False) -> Channel:
        """Host side: a new channel; ``peer_fds()`` gives the worker's two fds. ``cuda``:
        CUDA memory may cross it (``share_cuda_ipc``). Sends never block; a worker that
        reads nothing for ``stall_timeout`` seconds while frames wait poisons it.
        ``frozen_outputs``: the worker must send immutable (write-sealed) tensors, not
        pooled ones."""
    @staticmethod
    def open(ring_fd: int, sock_fd: int, max_frame: int = ..., send_timeout: float = ...) -> Channel:
        """Worker side: opens the channel from the host's fds (taking ownership of them)."""
    def peer_fds(self) -> Tuple[int, int]:
        """Host side: the worker's ``(ring_fd, sock_fd)``, once; the caller closes them."""
    def set_peer_pidfd(self, pidfd: int) -> None:
        """Watches the peer's process through ``pidfd`` (duplicated)."""
    def set_hooks(
        self,
        encode: Callable[[Any], Any],
        decode_tensor: Callable[[Any, str, bool], Any],
        decode_handle: Callable[[int, bool, str], Any],
        decode_record: Callable[[str, Dict[str, Any]], Any],
        decode_error: Callable[[str, str, str], Any],
    ) -> None:
        """Sets the Python callbacks used to encode and decode non-native values."""
    @property
    def id(self) -> int:
        """Process-unique id of this channel end."""
    @property
    def side(self) -> str:
        """``host`` or ``worker``."""
    @property
    def cuda(self) -> bool:
        """Whether CUDA memory may cross this channel (``share_cuda_ipc``)."""
    @property
    def frozen_outputs(self) -> bool:
        """Whether the worker's tensors must be immutable copies (``frozen_outputs``)."""
    @property
    def closed(self) -> bool:
        """Whether this end was closed (its resources are released)."""
    @property
    def outbox_bytes(self) -> int:
        """Bytes of frames waiting in the outbox for the peer to make room."""
    def send(self, kind: int, call_id: int, payload: Any) -> bool:
        """Sends one frame; False when it waits in the outbox (a host send never blocks)."""
    def send_call(self, call_id: int, target: int, method: str, args: Tuple[Any, ...], kwargs: Dict[str, Any],
                  parent: Optional[int] = None) -> bool:
        """Sends a call (``parent``: the peer's call this one is nested in); returns like ``send``."""
    def call_spin(self, call_id: int, target: int, method: str, args: Tuple[Any, ...], kwargs: Dict[str, Any],
                  spin_ns: int, stats: Optional[CallStats] = None) -> Tuple[int, Any, bool, int, int]:
        """Host: makes a call and spins up to ``spin_ns`` (GIL released) for its answer, the
        doorbell quiet meanwhile: ``(state, payload, more, elapsed_ns, next_spin_ns)`` with a
        ``CALL_*`` state; ``more``: frames arrived after the doorbell was re-armed;
        ``elapsed_ns``: since the method began; ``next_spin_ns``: the spin window for the next
        call (from the round trip once answered, else ``spin_ns``). An answered call is
        counted in ``stats`` when given. The caller must own receiving. Raises like
        ``send_call`` when the call could not be sent."""
    def try_recv(self) -> Optional[Tuple[int, int, Any]]:
        """The next frame if one is ready, else None (never blocks)."""
    def set_profiling(self, on: bool) -> None:
        """Time the decoding of received frames (the profiler's switch)."""
    @property
    def last_decode_ns(self) -> int:
        """Nanoseconds the last received frame took to decode (0 unless profiling)."""
    def recv(self, timeout: Optional[float] = None) -> Optional[Tuple[int, int, Any]]:
        """Waits up to ``timeout`` seconds (None: forever) for a frame; None on timeout."""
    def spin_recv(self, max_us: int) -> Optional[Tuple[int, int, Any]]:
        """Spins up to ``max_us`` microseconds for a frame."""
    def quiet_doorbell(self) -> None:
        """Host: the caller polls for replies itself for a while; no reactor wake-ups."""
    def resume_doorbell(self) -> bool:
        """Host: hand waiting back to the reactor; True if frames arrived meanwhile."""
    def flush(self) -> None:
        """Sends queued releases now, if the ring has room."""
    def flush_out(self) -> bool:
        """Pushes what waits in the outbox as far as the peer made room; True when empty."""
    def check_alive(self) -> None:
        """Raises PeerGone if the peer is gone."""
    def failure(self) -> Optional[str]:
        """The error that poisoned the channel, as text (None if healthy)."""
    def close(self, reason: str = ...) -> List[int]:
        """Closes this end; returns the ids of our calls still pending."""
    def held_tensors(self) -> List[Tuple[int, int]]:
        """(peer arena slot, descriptors still held) for received tensors not yet released."""

@final
class Wire:
    """One end of a byte transport speaking nodecell frames (bytes + out-of-band tensor buffers)."""

    def __new__(cls, side: str, max_frame: int = ...) -> Wire: ...
    def set_hooks(
        self,
        encode: Callable[[Any], Any],
        decode_tensor: Callable[[Any, int, str, List[int], List[int], str], Any],
        decode_handle: Callable[[int, bool, str], Any],
        decode_record: Callable[[str, Dict[str, Any]], Any],
        decode_error: Callable[[str, str, str], Any],
    ) -> None:
        """Sets the Python callbacks used to encode and decode non-native values."""
    def close(self) -> None:
        """Drops the hooks."""
    @property
    def side(self) -> str:
        """``host`` or ``worker``."""
    def encode(self, kind: int, call_id: int, payload: Any) -> Tuple[bytes, List[Any]]:
        """One frame as ``(bytes, buffers)``: tensors named by their index in ``buffers``."""
    def decode(self, data: bytes, buffers: Any) -> Tuple[int, int, Any]:
        """``(kind, call_id, payload)`` from a frame's bytes and the buffers that came with it."""

@final
class Arena:
    """Tensor storage this process owns: a memfd mapped here, sealed before it is shared."""

    def __new__(cls, nbytes: int, shared_writable: bool = False) -> Arena: ...
    @staticmethod
    def frozen_copy_from(address: int, nbytes: int) -> Arena:
        """An immutable arena holding a copy of ``nbytes`` bytes at ``address``."""
    def dlpack(self, offset: int, dtype: str, shape: List[int], strides: Optional[List[int]] = None) -> Any:
        """A DLPack capsule over this arena's bytes from ``offset`` (strides in elements)."""
    def dlsource(self, offset: int, dtype: str, shape: List[int], strides: Optional[List[int]] = None,
                 readonly: bool = False) -> DLSource:
        """A DLPack producer over this arena's bytes (for ``numpy.from_dlpack``)."""
    @property
    def address(self) -> int:
        """Address of this process's mapping."""
    @property
    def nbytes(self) -> int:
        """Size in bytes."""
    @property
    def id(self) -> int:
        """Process-unique id."""
    @property
    def shared_writable(self) -> bool:
        """Whether peers may write it (an output buffer)."""
    @property
    def writable(self) -> bool:
        """Whether this process may write through ``address``."""
    @property
    def state(self) -> str:
        """``open``, ``read-only``, ``output`` or ``frozen``."""

@final
class View:
    """A received tensor's storage (a mapping of the peer's arena)."""

    @property
    def address(self) -> int:
        """Address of the first byte the descriptor covers."""
    @property
    def nbytes(self) -> int:
        """Bytes the descriptor covers."""
    @property
    def writable(self) -> bool:
        """Whether writes through ``address`` are allowed."""
    @property
    def shared_writable(self) -> bool:
        """Whether writes reach the owner (an output buffer)."""
    @property
    def channel_id(self) -> int:
        """The id of the channel it arrived on."""

@final
class DLSource:
    """A tensor's storage offered to a DLPack consumer."""

    def __dlpack__(self, stream: Any = None, max_version: Optional[Tuple[int, int]] = None,
                   dl_device: Any = None, copy: Optional[bool] = None) -> Any:
        """A DLPack capsule (versioned when ``max_version`` allows)."""
    def __dlpack_device__(self) -> Tuple[int, int]:
        """``(device type, device id)``: ``(1, 0)`` for host memory, ``(2, ordinal)`` for CUDA."""
    @property
    def readonly(self) -> bool:
        """Whether consumers should treat the memory as read-only."""
    @property
    def dtype(self) -> str:
        """The wire name of the element type."""
    def retyped(self, dtype: str) -> DLSource:
        """The same memory as elements of ``dtype`` (same item size)."""

@final
class CudaBuffer:
    """CUDA memory this process owns, exportable to a peer as an fd."""

    def __new__(cls, nbytes: int, device: int) -> CudaBuffer: ...
    def dlpack(self, offset: int, dtype: str, shape: List[int], strides: Optional[List[int]] = None) -> Any:
        """A kDLCUDA DLPack capsule over the bytes from ``offset`` (strides in elements)."""
    @property
    def address(self) -> int:
        """Device address of the first byte."""
    @property
    def nbytes(self) -> int:
        """Size in bytes (granularity-rounded)."""
    @property
    def device(self) -> int:
        """CUDA device ordinal."""

@final
class CudaView:
    """A received CUDA tensor's storage (the peer's allocation, mapped read-write here)."""

    @property
    def address(self) -> int:
        """Device address of the first byte the descriptor covers."""
    @property
    def nbytes(self) -> int:
        """Bytes the descriptor covers."""
    @property
    def device(self) -> int:
        """CUDA device ordinal (in this process)."""
    @property
    def channel_id(self) -> int:
        """The id of the channel it arrived on."""

@final
class Reactor:
    """The host process's one event thread (io_uring where the kernel has futex ops)."""

    def __new__(cls) -> Reactor: ...
    def fileno(self) -> int:
        """The eventfd that becomes readable when events are queued."""
    @property
    def backend(self) -> str:
        """Which backend waits."""
    def register(self, channel: Channel) -> int:
        """Starts watching a host channel; returns a token."""
    def unregister(self, token: int) -> None:
        """Stops watching."""
    def drain(self) -> List[Tuple[int, str]]:
        """Queued events as ``(token, kind)``."""

@final
class TensorRef:
    """A tensor in an arena (or a received view), as the encoder wants it."""

    @property
    def arena(self) -> Any: ...
    @property
    def offset(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    @property
    def shape(self) -> List[int]: ...
    @property
    def strides(self) -> List[int]: ...
    @property
    def kind(self) -> str: ...
    def __new__(cls, arena: Any, offset: int, dtype: str, shape: List[int], strides: List[int], kind: str) -> TensorRef: ...

@final
class HandleRef:
    """A remote handle: an object that stays with its owner, named by id."""

    @property
    def id(self) -> int: ...
    @property
    def sender_owns(self) -> bool: ...
    @property
    def kind(self) -> str: ...
    def __new__(cls, id: int, sender_owns: bool, kind: str) -> HandleRef: ...

@final
class Record:
    """A registered record (dataclass / enum) by name, with its fields."""

    @property
    def name(self) -> str: ...
    @property
    def fields(self) -> Dict[str, Any]: ...
    def __new__(cls, name: str, fields: Dict[str, Any]) -> Record: ...

@final
class ErrorValue:
    """An exception as data: type name, message, traceback text."""

    @property
    def type_name(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def traceback(self) -> str: ...
    def __new__(cls, type_name: str, message: str, traceback: str = ...) -> ErrorValue: ...

def read_manifest(path: str) -> Dict[str, Any]:
    """Reads a pack's manifest; raises ValueError naming file, line and field."""

def provision(spec: Dict[str, Any], on_event: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Builds (or finds) an extension's venv; returns its path, python, key and read-only paths."""

def requirement_names(path: str) -> List[str]:
    """The distribution names a requirements file asks for, normalized, in order."""

def normalize_name(name: str) -> str:
    """A distribution name normalized as PEP 503 says (provisioning's own rule)."""

def requirement_name(spec: str) -> Optional[str]:
    """The normalized distribution name a dependency string asks for, or None."""

def state_root() -> str:
    """nodecell's state folder (pack layers)."""

def parse_size(text: str) -> int:
    """Bytes in a size such as ``"8GB"``, ``"512MiB"``, ``"1.5G"``, ``"4096"`` (nodecell's one
    size table); ``ValueError`` saying what is wrong."""

def cgroup_oom_kills(dir: str) -> int:
    """OOM kills recorded so far in the memory cgroup directory ``dir`` (v2 ``memory.events`` or v1
    ``memory.oom_control``; 0 when unreadable): the sandbox crate's one counter."""

def format_size(bytes: int) -> str:
    """A byte count as nodecell prints sizes (``256 MiB``, ``8 GB``, ``1.5 GiB``)."""

def locate(address: int, nbytes: int) -> Optional[Tuple[Any, int]]:
    """Where the memory at ``address`` lives: ``(Arena or View, byte offset)``, or None."""

def cuda_available() -> bool:
    """Whether this process can share CUDA memory (libcuda, ``cuInit``, a device); never raises."""

def cuda_status() -> Optional[str]:
    """Why CUDA memory cannot be shared here (None when it can)."""

def cuda_channel(channel_id: int) -> bool:
    """Whether the channel with this id may carry CUDA memory."""

def cuda_locate(address: int, nbytes: int) -> Optional[Tuple[Any, int]]:
    """Where the CUDA memory at ``address`` lives: ``(CudaBuffer or CudaView, byte offset)``, or None."""

def find_uv(host_python: Optional[str] = None, host_prefix: Optional[str] = None) -> str:
    """The uv executable nodecell builds venvs with; FileNotFoundError lists every place searched."""

def ipc_probe() -> List[Tuple[str, bool, str]]:
    """What this kernel offers the channel."""

@final
class CallStats:
    """Call counters of one extension: calls, errors, a latency histogram (lock-free)."""
    def __new__(cls) -> CallStats: ...
    def record(self, ns: int) -> None:
        """Count one finished call that took ``ns`` nanoseconds."""
    def record_error(self, ns: int) -> None:
        """Count one finished call that took ``ns`` nanoseconds and raised."""
    @property
    def calls(self) -> int: ...
    @property
    def errors(self) -> int: ...
    def latency(self) -> List[Tuple[int, int]]:
        """The latency histogram as sparse ``(bucket, count)`` pairs."""
    def quantile(self, q: float) -> Optional[int]:
        """The ``q``-quantile of the latencies in nanoseconds, or None."""

def tools_socket_path(pid: int) -> Optional[str]:
    """Where process ``pid`` publishes its tools socket (directory created, mode 0700), or None when off."""
def pool_arena(channel: Channel, nbytes: int, src_address: int = 0) -> Arena:
    """An arena for a tensor about to be sent on ``channel``, from this process's pool
    (reused once free), filled with the ``nbytes`` at ``src_address`` when given."""

def set_tensor_pool(limit: int) -> None:
    """The most bytes of free pooled arenas this process keeps (0: none)."""

def tensor_pool_env_limit() -> int:
    """The free-arena limit ``NODECELL_TENSOR_POOL`` sets (the default when unset); ValueError
    naming the variable and quoting the value when it cannot be read."""

def tensor_pool_stats() -> Dict[str, int]:
    """``hits``, ``misses``, ``dropped``, ``arenas``, ``bytes``, ``free_bytes``, ``limit``,
    ``copies``, ``copied_bytes``."""

def worker_heap(channel: Channel) -> bool:
    """In a worker (after its fork): torch's large CPU allocations from now on in pooled
    arenas of ``channel``, so outputs cross without a copy (``NODECELL_WORKER_HEAP=0``:
    off). Returns whether it is on."""

def worker_heap_stats() -> Dict[str, Any]:
    """The worker heap's counters: ``installed`` (torch's allocator hooked), ``numpy`` (numpy's
    allocation policy set), ``enabled``, ``off_reason``, ``min_bytes``,
    ``max_bytes``, ``max_arenas``, ``takes``, ``taken_bytes``, ``frees``, ``live_blocks``, ``live_bytes``,
    ``fallbacks``, ``sent``, ``sent_bytes``, ``privatized``, ``copied``."""

def set_worker_heap(on: bool) -> bool:
    """Stops or resumes serving new allocations from the worker heap; whether it serves now."""

def inline_tensor(kind: str, dtype: str, shape: List[int], address: int, nbytes: int) -> Record:
    """The ``nodecell.ndarray`` record for a small C-contiguous tensor (bytes copied)."""

def dtypes() -> List[Tuple[str, int, int, Optional[str], str]]:
    """The wire dtypes: ``(name, code, item size, numpy name or None, torch name)``."""

class ConfineError(RuntimeError):
    """A forked worker could not be confined (the message names the wall); it must not run pack code."""

def confine_forked_worker(uid: Optional[int], gid: Optional[int], ro_paths: List[str], rw_paths: List[str],
                          system: bool = True) -> Dict[str, Any]:
    """Confine this freshly forked, single-threaded process: no capabilities, ``uid``/``gid`` (None:
    keep), no_new_privs, a stacked Landlock domain of ``ro_paths`` (read + exec), ``rw_paths`` (read +
    write) and, with ``system``, the system's read-only paths; signals scoped to it. Returns
    ``uid``, ``gid``, ``bounding_dropped``, ``landlock_abi``, ``scoped``, ``rules``; raises ConfineError."""

def confine_probe() -> Tuple[bool, str]:
    """Whether this kernel can wall forked workers apart: ``(True, detail)`` or ``(False, why)``."""

# --- zygote control messages and launcher status records (nodecell_wire) ---------------------

CONTROL_VERSION: int
STATUS_VERSION: int
MAX_CONTROL_BYTES: int

class WireError(ValueError):
    """A control message or status record is malformed (the message names the field)."""

def encode_zygote_request(msg: Dict[str, Any]) -> bytes:
    """Checks a host -> zygote message (``spawn`` {wid, pack?}, ``kill`` {wid}, ``exit``)
    and encodes it with its version. Raises :class:`WireError` naming the field."""

def decode_zygote_request(data: bytes) -> Dict[str, Any]:
    """Reads a host -> zygote message: ``{"op": ..., fields}``. Raises :class:`WireError`."""

def encode_zygote_event(msg: Dict[str, Any]) -> bytes:
    """Checks a zygote -> host message (``ready``, ``spawned``, ``exited``) and encodes it."""

def decode_zygote_event(data: bytes) -> Dict[str, Any]:
    """Reads a zygote -> host message: ``{"op": ..., fields}``. Raises :class:`WireError`."""

def decode_status_line(line: bytes) -> Tuple[str, Dict[str, Any]]:
    """Reads one ``nodecell run --status-fd`` line: ``("up", {walls, cgroup, pid, uid, gid, uids})``
    or ``("exit", {code, reason, detail})``. Raises :class:`WireError`."""
