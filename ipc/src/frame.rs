//! Frames and values: every byte that crosses the channel, defined in one place.
//!
//! All integers are little-endian. There is no padding anywhere in a frame and no
//! alignment requirement: a frame is a plain byte string that the receiver copies
//! (or maps sealed against writes) before decoding.
//!
//! # Frame
//!
//! ```text
//! offset size field
//! 0      1    version   = 1 (FRAME_VERSION)
//! 1      1    kind      1 call, 2 reply, 3 error, 4 callback, 5 cancel, 6 release, 7 log, 8 heartbeat
//! 2      2    flags     = 0 (reserved; a receiver rejects other values)
//! 4      4    reserved  = 0
//! 8      8    id        call id (call/callback: new id chosen by the sender;
//!                       reply/error/cancel: the id of the call it answers or cancels;
//!                       release/log: 0; heartbeat: sequence number)
//! 16     ...  body, by kind (below); nothing may follow the body
//! ```
//!
//! Bodies (`str` = u32 byte length + UTF-8 bytes, `value` = one encoded [`Value`]):
//!
//! * **call (1) / callback (4)**: `u64 parent` (0 for call; the id of the call, sent
//!   by the peer, in whose service this callback is made, for callback — never 0),
//!   `u64 target` (remote-handle id the method is looked up on, 0 = the extension
//!   root), `u64 deadline_ns` (time budget in nanoseconds, 0 = none), `str method`,
//!   `u32 nargs` + `nargs` values, `u32 nkwargs` + `nkwargs` × (`str name`, value).
//! * **reply (2)**: one value.
//! * **error (3)**: `str type_name`, `str message`, `str traceback`.
//! * **cancel (5)**: empty.
//! * **release (6)**: `u32 n` + n × `u64` remote-handle ids the sender no longer
//!   uses; `u32 m` + m × (`u64 slot`, `u64 count`): the sender drops `count`
//!   references to tensor descriptors naming the receiver's arena `slot`;
//!   `u32 r` + r × `u64 slot`: the sender retires its own arena `slot` (the
//!   receiver closes its descriptor; the slot id is never used again).
//! * **log (7)**: `u8 level` (0 debug, 1 info, 2 warning, 3 error, 4 critical),
//!   `str logger`, `str message`.
//! * **heartbeat (8)**: `u64 sender_monotonic_ns`.
//!
//! # Value
//!
//! One tag byte, then:
//!
//! | tag | value | payload |
//! |---|---|---|
//! | 0x00 | none | - |
//! | 0x01 / 0x02 | false / true | - |
//! | 0x03 | int | i64 |
//! | 0x04 | big int | u32 len + ASCII decimal (`-`? digits, no leading zeros, at most 10000 digits) |
//! | 0x05 | float | f64 (IEEE-754 bits) |
//! | 0x06 | str | u32 len + UTF-8 |
//! | 0x07 | bytes | u32 len + bytes |
//! | 0x08 | list | u32 count + values |
//! | 0x09 | tuple | u32 count + values |
//! | 0x0A | dict | u32 count + count × (key value, value value), order kept |
//! | 0x0B | set | u32 count + values |
//! | 0x0C | tensor | a tensor descriptor (below) |
//! | 0x0D | handle | u64 id, u8 owner (0 host, 1 worker), u8 kind (0 object, 1 callable) |
//! | 0x0E | record | str name, u32 count + count × (str field, value) |
//! | 0x0F | error | str type_name, str message, str traceback |
//!
//! # Tensor descriptor
//!
//! ```text
//! 0   u64 slot     arena id: which fd, sent earlier over the socket, holds the storage
//! 8   u64 offset   byte offset of element [0,..,0] inside the arena
//! 16  u64 nbytes   bytes from offset that the view may touch
//! 24  u8  dtype    see DType (0 bool .. 16 float8_e5m2)
//! 25  u8  ndim     0..=8
//! 26  u8  flags    bit 0 writable, bit 1 origin: 0 = the sender's arena, 1 = the receiver's own arena echoed back
//! 27  u8  device   0 = cpu, 1 = cuda (others reserved)
//! 28  u8  index    cpu: 0; cuda: the device ordinal on the sender's side (0..=255)
//! 29  3×u8 reserved = 0
//! 32  ndim × u64 shape, then ndim × i64 strides (in elements, each >= 0)
//! ```
//!
//! A cpu descriptor names a memfd arena (socket kinds ARENA/OUTPUT, see
//! [`crate::layout`]); a cuda descriptor names an exported CUDA allocation (socket
//! kind CUDA): `offset`/`nbytes` are then bytes inside that allocation. CUDA memory
//! has no copy-on-write, so a cuda descriptor always has the writable bit set: the
//! receiver maps the allocation read-write and its writes reach the owner. CPU
//! descriptors are byte-for-byte what they were before cuda existed.
//!
//! A descriptor is valid when every product and sum below fits in u64 and, if no
//! dimension is 0, `((Σ (shape[i]-1)·stride[i]) + 1) · itemsize <= nbytes`, and
//! `offset + nbytes` fits; the receiver also checks `offset + nbytes <= arena size`.
//!
//! # Limits
//!
//! Decoding is bounded by [`Limits`]: total frame length, nesting depth (a list
//! inside a list counts 1), and the total number of values (so a 256 MiB frame of
//! empty lists cannot expand to gigabytes of memory). Counts are never trusted for
//! allocation beyond the bytes left in the frame.

use thiserror::Error;

/// The frame format version this crate speaks.
pub const FRAME_VERSION: u8 = 1;
/// Bytes in the fixed frame header.
pub const FRAME_HEADER_LEN: usize = 16;
/// Most dimensions a tensor descriptor may have.
pub const MAX_NDIM: usize = 8;
/// Most digits a big int may have.
pub const MAX_BIGINT_DIGITS: usize = 10_000;

/// Which side of a channel something belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The trusted host process.
    Host,
    /// The sandboxed worker.
    Worker,
}

impl Side {
    /// The other side.
    pub fn peer(self) -> Side {
        match self {
            Side::Host => Side::Worker,
            Side::Worker => Side::Host,
        }
    }
}

/// What a remote handle stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandleKind {
    /// An object whose methods can be called.
    Object,
    /// A callable (a plain function: calling it through the handle returns its value).
    Callable,
    /// An `async def` callable (calling it through the handle gives an awaitable).
    AsyncCallable,
}

impl HandleKind {
    /// Every kind, in wire-code order.
    pub const ALL: [HandleKind; 3] = [
        HandleKind::Object,
        HandleKind::Callable,
        HandleKind::AsyncCallable,
    ];

    /// The kind's name as Python sees it (`object`, `callable`, `async-callable`).
    pub fn name(self) -> &'static str {
        match self {
            HandleKind::Object => "object",
            HandleKind::Callable => "callable",
            HandleKind::AsyncCallable => "async-callable",
        }
    }

    /// The kind named `name` (see [`HandleKind::name`]), if any.
    pub fn from_name(name: &str) -> Option<HandleKind> {
        HandleKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kind's code on the wire.
    fn code(self) -> u8 {
        match self {
            HandleKind::Object => 0,
            HandleKind::Callable => 1,
            HandleKind::AsyncCallable => 2,
        }
    }
}

/// An object that stays on its owner's side and is named by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemoteHandle {
    /// Id chosen by the owner.
    pub id: u64,
    /// Which side holds the object.
    pub owner: Side,
    /// Object or callable.
    pub kind: HandleKind,
}

/// A registered dataclass or enum value, named by its registration name.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The name it was registered under (never imported: looked up in a registry).
    pub name: String,
    /// Field name → value, in order.
    pub fields: Vec<(String, Value)>,
}

/// An exception crossing the channel as text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorValue {
    /// e.g. `ValueError` (text only; never imported).
    pub type_name: String,
    /// The message.
    pub message: String,
    /// Formatted traceback text.
    pub traceback: String,
}

/// The closed set of values a frame can carry.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `bool`.
    Bool(bool),
    /// An int that fits in i64.
    Int(i64),
    /// An int that does not, as ASCII decimal (`-`? digits).
    BigInt(String),
    /// `float`.
    Float(f64),
    /// `str`.
    Str(String),
    /// `bytes`.
    Bytes(Vec<u8>),
    /// `list`.
    List(Vec<Value>),
    /// `tuple`.
    Tuple(Vec<Value>),
    /// `dict`, order kept, any key.
    Dict(Vec<(Value, Value)>),
    /// `set` / `frozenset`.
    Set(Vec<Value>),
    /// A tensor whose storage lives in an arena.
    Tensor(Box<TensorDesc>),
    /// An object that stays on its owner's side.
    Handle(RemoteHandle),
    /// A registered dataclass / enum.
    Record(Box<Record>),
    /// A tensor and the kind of array its receiver builds. On the wire it is the record
    /// [`TENSOR_RECORD`] `{kind, t}` (the decoder makes this of such a record); kept
    /// apart in memory so that this common value costs no strings.
    KindTensor(TensorKind, Box<TensorDesc>),
    /// An exception.
    Error(Box<ErrorValue>),
}

/// The record a tensor travels in with the kind of array to build from it:
/// `nodecell.tensor {kind: "numpy" | "torch", t: tensor}` ([`Value::KindTensor`]).
pub const TENSOR_RECORD: &str = "nodecell.tensor";

/// What a receiver builds from a [`TENSOR_RECORD`]: a numpy array or a torch tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorKind {
    /// A numpy array.
    Numpy,
    /// A torch tensor.
    Torch,
}

impl TensorKind {
    /// The name the record's `kind` field holds.
    pub fn name(self) -> &'static str {
        match self {
            TensorKind::Numpy => "numpy",
            TensorKind::Torch => "torch",
        }
    }

    /// The kind named `name` (None: not a kind).
    pub fn from_name(name: &str) -> Option<TensorKind> {
        match name {
            "numpy" => Some(TensorKind::Numpy),
            "torch" => Some(TensorKind::Torch),
            _ => None,
        }
    }
}

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum DType {
    Bool = 0,
    U8 = 1,
    I8 = 2,
    I16 = 3,
    U16 = 4,
    I32 = 5,
    U32 = 6,
    I64 = 7,
    U64 = 8,
    F16 = 9,
    BF16 = 10,
    F32 = 11,
    F64 = 12,
    Complex64 = 13,
    Complex128 = 14,
    F8E4M3FN = 15,
    F8E5M2 = 16,
}

impl DType {
    /// All dtypes, in code order.
    pub const ALL: [DType; 17] = [
        DType::Bool,
        DType::U8,
        DType::I8,
        DType::I16,
        DType::U16,
        DType::I32,
        DType::U32,
        DType::I64,
        DType::U64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
        DType::Complex64,
        DType::Complex128,
        DType::F8E4M3FN,
        DType::F8E5M2,
    ];

    /// From the wire code.
    pub fn from_code(c: u8) -> Option<DType> {
        DType::ALL.get(usize::from(c)).copied()
    }

    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Bytes per element.
    pub fn itemsize(self) -> u64 {
        match self {
            DType::Bool | DType::U8 | DType::I8 | DType::F8E4M3FN | DType::F8E5M2 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::I64 | DType::U64 | DType::F64 | DType::Complex64 => 8,
            DType::Complex128 => 16,
        }
    }

    /// The numpy/torch-style name (`float32`, `bfloat16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::U16 => "uint16",
            DType::I32 => "int32",
            DType::U32 => "uint32",
            DType::I64 => "int64",
            DType::U64 => "uint64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::Complex64 => "complex64",
            DType::Complex128 => "complex128",
            DType::F8E4M3FN => "float8_e4m3fn",
            DType::F8E5M2 => "float8_e5m2",
        }
    }

    /// From the name given by [`DType::name`].
    pub fn from_name(n: &str) -> Option<DType> {
        DType::ALL.iter().copied().find(|d| d.name() == n)
    }
}

/// Whose arena a descriptor's slot names, seen from the frame's receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The sender's arena (its fd crossed the socket earlier).
    Sender,
    /// The receiver's own arena, echoed back (e.g. a filled output buffer).
    Receiver,
}

/// Which memory a descriptor's slot is: host memory (a memfd arena) or a CUDA device's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// A memfd arena (wire code 0).
    #[default]
    Cpu,
    /// An exported CUDA allocation on the sender's device `ordinal` (wire code 1).
    Cuda(u8),
}

impl Device {
    /// Wire code 0 (cpu).
    pub const CODE_CPU: u8 = 0;
    /// Wire code 1 (cuda).
    pub const CODE_CUDA: u8 = 1;

    /// Whether this is CUDA memory.
    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// (device code, index) as on the wire.
    pub fn to_wire(self) -> (u8, u8) {
        match self {
            Device::Cpu => (Device::CODE_CPU, 0),
            Device::Cuda(i) => (Device::CODE_CUDA, i),
        }
    }

    /// From the wire's (device code, index); cpu must have index 0.
    pub fn from_wire(code: u8, index: u8) -> Result<Device, TensorError> {
        match (code, index) {
            (Device::CODE_CPU, 0) => Ok(Device::Cpu),
            (Device::CODE_CPU, _) => Err(TensorError::Reserved),
            (Device::CODE_CUDA, i) => Ok(Device::Cuda(i)),
            (c, _) => Err(TensorError::UnknownDevice(c)),
        }
    }
}

/// Where a tensor's elements are: (arena slot, offset, nbytes) plus dtype, shape, strides.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorDesc {
    /// Arena id (see the module docs).
    pub slot: u64,
    /// Whose arena `slot` names.
    pub origin: Origin,
    /// Byte offset of element [0,..,0] in the arena.
    pub offset: u64,
    /// Bytes from `offset` the view may touch.
    pub nbytes: u64,
    /// Element type.
    pub dtype: DType,
    /// Whether the receiver may write (output-buffer arenas; always set for CUDA).
    pub writable: bool,
    /// Host memory or a CUDA device's (see the module docs).
    pub device: Device,
    ndim: u8,
    shape: [u64; MAX_NDIM],
    strides: [i64; MAX_NDIM],
}

/// Why a tensor descriptor is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TensorError {
    /// dtype code not in [`DType`].
    #[error("unknown dtype code {0}")]
    UnknownDtype(u8),
    /// More than [`MAX_NDIM`] dimensions.
    #[error("ndim {0} exceeds {MAX_NDIM}")]
    TooManyDims(u8),
    /// shape and strides have different lengths.
    #[error("shape has {shape} dims but strides has {strides}")]
    RankMismatch {
        /// shape length
        shape: usize,
        /// strides length
        strides: usize,
    },
    /// A stride below zero.
    #[error("stride {stride} of dim {dim} is negative")]
    NegativeStride {
        /// which dimension
        dim: usize,
        /// its stride
        stride: i64,
    },
    /// Unknown flag bits.
    #[error("unknown tensor flag bits {0:#x}")]
    UnknownFlags(u8),
    /// Device code other than cpu (0) or cuda (1).
    #[error("unknown device code {0}")]
    UnknownDevice(u8),
    /// A cuda descriptor without the writable bit (CUDA memory is always shared read-write).
    #[error("a cuda tensor descriptor must be marked writable (CUDA memory has no copy-on-write)")]
    CudaReadOnly,
    /// Reserved bytes not zero.
    #[error("reserved tensor bytes are not zero")]
    Reserved,
    /// Arithmetic on shape, strides, offset or size overflows.
    #[error("tensor {field} overflows")]
    Overflow {
        /// what overflowed
        field: &'static str,
    },
    /// The elements reach past `nbytes`.
    #[error("tensor elements span {span} bytes but nbytes is {nbytes}")]
    SpanTooLarge {
        /// bytes the elements span
        span: u64,
        /// bytes the descriptor allows
        nbytes: u64,
    },
    /// `offset + nbytes` is past the arena's end.
    #[error("tensor bytes {offset}..{end} are outside arena slot {slot} of {size} bytes")]
    OutOfArena {
        /// slot
        slot: u64,
        /// offset
        offset: u64,
        /// offset + nbytes
        end: u64,
        /// arena size
        size: u64,
    },
}

impl TensorDesc {
    /// A descriptor; fails if shape/strides are inconsistent (see [`TensorDesc::validate`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        slot: u64,
        origin: Origin,
        offset: u64,
        nbytes: u64,
        dtype: DType,
        shape: &[u64],
        strides: &[i64],
        writable: bool,
    ) -> Result<TensorDesc, TensorError> {
        if shape.len() > MAX_NDIM {
            return Err(TensorError::TooManyDims(
                u8::try_from(shape.len()).unwrap_or(u8::MAX),
            ));
        }
        if shape.len() != strides.len() {
            return Err(TensorError::RankMismatch {
                shape: shape.len(),
                strides: strides.len(),
            });
        }
        let mut d = TensorDesc {
            slot,
            origin,
            offset,
            nbytes,
            dtype,
            writable,
            device: Device::Cpu,
            ndim: shape.len() as u8,
            shape: [0; MAX_NDIM],
            strides: [0; MAX_NDIM],
        };
        d.shape[..shape.len()].copy_from_slice(shape);
        d.strides[..strides.len()].copy_from_slice(strides);
        d.validate()?;
        Ok(d)
    }

    /// A C-contiguous descriptor covering exactly its elements.
    pub fn contiguous(
        slot: u64,
        offset: u64,
        dtype: DType,
        shape: &[u64],
    ) -> Result<TensorDesc, TensorError> {
        let mut strides = [0i64; MAX_NDIM];
        let n = shape.len().min(MAX_NDIM);
        let mut acc: u64 = 1;
        for i in (0..n).rev() {
            strides[i] =
                i64::try_from(acc).map_err(|_| TensorError::Overflow { field: "strides" })?;
            acc = acc
                .checked_mul(shape[i].max(1))
                .ok_or(TensorError::Overflow { field: "shape" })?;
        }
        let numel = shape
            .iter()
            .try_fold(1u64, |a, &s| a.checked_mul(s))
            .ok_or(TensorError::Overflow { field: "shape" })?;
        let nbytes = numel
            .checked_mul(dtype.itemsize())
            .ok_or(TensorError::Overflow { field: "nbytes" })?;
        TensorDesc::new(
            slot,
            Origin::Sender,
            offset,
            nbytes,
            dtype,
            shape,
            &strides[..n],
            false,
        )
    }

    /// Dimensions.
    pub fn shape(&self) -> &[u64] {
        &self.shape[..usize::from(self.ndim)]
    }

    /// Strides, in elements.
    pub fn strides(&self) -> &[i64] {
        &self.strides[..usize::from(self.ndim)]
    }

    /// Number of elements.
    pub fn numel(&self) -> u64 {
        // validate() proved the product fits.
        self.shape().iter().product()
    }

    /// The same descriptor as its receiver would send it back (origin flipped).
    pub fn echo(&self) -> TensorDesc {
        let mut d = self.clone();
        d.origin = match self.origin {
            Origin::Sender => Origin::Receiver,
            Origin::Receiver => Origin::Sender,
        };
        d
    }

    /// Bytes the elements span from `offset` (0 when there are no elements).
    pub fn span(&self) -> Result<u64, TensorError> {
        let mut numel: u64 = 1;
        let mut last: u64 = 0;
        for (i, (&s, &st)) in self.shape().iter().zip(self.strides()).enumerate() {
            if st < 0 {
                return Err(TensorError::NegativeStride { dim: i, stride: st });
            }
            numel = numel
                .checked_mul(s)
                .ok_or(TensorError::Overflow { field: "shape" })?;
            if s > 0 {
                let step = (s - 1)
                    .checked_mul(st as u64)
                    .ok_or(TensorError::Overflow { field: "strides" })?;
                last = last
                    .checked_add(step)
                    .ok_or(TensorError::Overflow { field: "strides" })?;
            }
        }
        // numel*itemsize must fit too (consumers compute it).
        numel
            .checked_mul(self.dtype.itemsize())
            .ok_or(TensorError::Overflow { field: "numel" })?;
        if numel == 0 {
            return Ok(0);
        }
        last.checked_add(1)
            .and_then(|n| n.checked_mul(self.dtype.itemsize()))
            .ok_or(TensorError::Overflow { field: "span" })
    }

    /// The same descriptor on another device (for CUDA also marked writable, as the
    /// wire requires).
    pub fn on_device(mut self, device: Device) -> TensorDesc {
        self.device = device;
        if device.is_cuda() {
            self.writable = true;
        }
        self
    }

    /// Checks everything that does not need the arena: ndim, strides, overflow, span
    /// <= nbytes, and that a cuda descriptor is writable.
    pub fn validate(&self) -> Result<(), TensorError> {
        if usize::from(self.ndim) > MAX_NDIM {
            return Err(TensorError::TooManyDims(self.ndim));
        }
        if self.device.is_cuda() && !self.writable {
            return Err(TensorError::CudaReadOnly);
        }
        self.offset
            .checked_add(self.nbytes)
            .ok_or(TensorError::Overflow {
                field: "offset+nbytes",
            })?;
        let span = self.span()?;
        if span > self.nbytes {
            return Err(TensorError::SpanTooLarge {
                span,
                nbytes: self.nbytes,
            });
        }
        Ok(())
    }

    /// [`TensorDesc::validate`] plus `offset + nbytes <= arena_size`.
    pub fn validate_in(&self, arena_size: u64) -> Result<(), TensorError> {
        self.validate()?;
        let end = self.offset + self.nbytes; // checked in validate
        if end > arena_size {
            return Err(TensorError::OutOfArena {
                slot: self.slot,
                offset: self.offset,
                end,
                size: arena_size,
            });
        }
        Ok(())
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        32 + 16 * usize::from(self.ndim)
    }

    /// Appends the wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.slot.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.nbytes.to_le_bytes());
        let flags = u8::from(self.writable) | (u8::from(self.origin == Origin::Receiver) << 1);
        let (device, index) = self.device.to_wire();
        out.extend_from_slice(&[self.dtype.code(), self.ndim, flags, device, index, 0, 0, 0]);
        for s in self.shape() {
            out.extend_from_slice(&s.to_le_bytes());
        }
        for s in self.strides() {
            out.extend_from_slice(&s.to_le_bytes());
        }
    }

    /// Decodes one descriptor from the front of `buf`; returns it and the bytes used.
    /// The result has passed [`TensorDesc::validate`].
    pub fn decode(buf: &[u8]) -> Result<(TensorDesc, usize), DecodeError> {
        let limits = Limits::default();
        let mut r = Reader::new(buf, &limits);
        let d = r.tensor()?;
        Ok((d, r.pos))
    }
}

/// Decoding limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, in bytes.
    pub max_frame: usize,
    /// Deepest nesting of containers.
    pub max_depth: u32,
    /// Most values in one frame.
    pub max_items: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_frame: 256 << 20,
            max_depth: 64,
            max_items: 1 << 22,
        }
    }
}

/// Why bytes are not a valid frame or value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes end in the middle of something.
    #[error("truncated at byte {at}: need {need} more")]
    Truncated {
        /// offset
        at: usize,
        /// bytes missing
        need: u64,
    },
    /// Bytes left after the body.
    #[error("{extra} trailing bytes after the frame body")]
    TrailingBytes {
        /// how many
        extra: usize,
    },
    /// Frame version this crate does not speak.
    #[error("frame version {0} (this side speaks {FRAME_VERSION})")]
    Version(u8),
    /// Unknown frame kind.
    #[error("unknown frame kind {0}")]
    FrameKind(u8),
    /// A reserved field is not zero, or a field has an out-of-range value.
    #[error("bad {field} at byte {at}: {value}")]
    Field {
        /// field name
        field: &'static str,
        /// offset
        at: usize,
        /// the value found
        value: u64,
    },
    /// Unknown value tag.
    #[error("unknown value tag {tag:#04x} at byte {at}")]
    Tag {
        /// offset
        at: usize,
        /// the tag
        tag: u8,
    },
    /// Nested deeper than the limit.
    #[error("values nested deeper than {limit}")]
    TooDeep {
        /// limit
        limit: u32,
    },
    /// More values than the limit.
    #[error("more than {limit} values in one frame")]
    TooManyItems {
        /// limit
        limit: u64,
    },
    /// Frame longer than the limit.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// length
        len: u64,
        /// limit
        limit: u64,
    },
    /// A string is not UTF-8.
    #[error("invalid UTF-8 in string at byte {at}")]
    Utf8 {
        /// offset
        at: usize,
    },
    /// A big int is not a canonical decimal.
    #[error("invalid big int at byte {at}")]
    BigInt {
        /// offset
        at: usize,
    },
    /// A tensor descriptor is invalid.
    #[error("tensor descriptor at byte {at}: {err}")]
    Tensor {
        /// offset
        at: usize,
        /// why
        err: TensorError,
    },
}

/// Why a value cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// Nested deeper than the limit.
    #[error("values nested deeper than {limit}")]
    TooDeep {
        /// limit
        limit: u32,
    },
    /// The encoded frame exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// length
        len: u64,
        /// limit
        limit: u64,
    },
    /// A string, bytes or container longer than u32 can say.
    #[error("{what} of length {len} is too long for the wire")]
    TooLong {
        /// what
        what: &'static str,
        /// length
        len: u64,
    },
    /// A big int that is not canonical decimal, a callback without parent, ...
    #[error("invalid {what}")]
    Invalid {
        /// what
        what: &'static str,
    },
    /// A tensor descriptor fails validation.
    #[error("tensor descriptor: {0}")]
    Tensor(TensorError),
}

/// A call (or callback) request.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// New id chosen by the sender.
    pub id: u64,
    /// `Some(id)` makes this a callback issued while serving the peer's call `id`.
    pub parent: Option<u64>,
    /// Remote-handle id to call the method on; 0 = the extension root.
    pub target: u64,
    /// Method name (looked up by the receiver in its own tables, never imported).
    pub method: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments, in order.
    pub kwargs: Vec<(String, Value)>,
    /// Time budget in nanoseconds (0 = none).
    pub deadline_ns: u64,
}

/// References given back and arenas retired.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Release {
    /// Remote handles the sender no longer uses.
    pub handles: Vec<u64>,
    /// (receiver's arena slot, count of descriptors released).
    pub tensors: Vec<(u64, u64)>,
    /// The sender's own arena slots it will never name again.
    pub retired: Vec<u64>,
}

/// Log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum LogLevel {
    Debug = 0,
    Info = 1,
    Warning = 2,
    Error = 3,
    Critical = 4,
}

/// One frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A call (kind 1), or a callback (kind 4) when `parent` is set.
    Call(Call),
    /// A successful result (kind 2).
    Reply {
        /// id of the call answered
        id: u64,
        /// result
        value: Value,
    },
    /// A failed call (kind 3).
    Error {
        /// id of the call answered
        id: u64,
        /// the exception
        error: ErrorValue,
    },
    /// Asks the peer to cancel call `id` (kind 5).
    Cancel {
        /// id of the call to cancel
        id: u64,
    },
    /// References given back (kind 6).
    Release(Release),
    /// A log record (kind 7).
    Log {
        /// level
        level: LogLevel,
        /// logger name
        logger: String,
        /// text
        message: String,
    },
    /// Liveness (kind 8).
    Heartbeat {
        /// sequence number
        seq: u64,
        /// sender's CLOCK_MONOTONIC in ns
        monotonic_ns: u64,
    },
}

/// Frame kind codes.
pub mod kind {
    /// call
    pub const CALL: u8 = 1;
    /// reply
    pub const REPLY: u8 = 2;
    /// error
    pub const ERROR: u8 = 3;
    /// callback
    pub const CALLBACK: u8 = 4;
    /// cancel
    pub const CANCEL: u8 = 5;
    /// release
    pub const RELEASE: u8 = 6;
    /// log
    pub const LOG: u8 = 7;
    /// heartbeat
    pub const HEARTBEAT: u8 = 8;
}

/// Value tags.
pub mod tag {
    #![allow(missing_docs)]
    pub const NONE: u8 = 0x00;
    pub const FALSE: u8 = 0x01;
    pub const TRUE: u8 = 0x02;
    pub const INT: u8 = 0x03;
    pub const BIGINT: u8 = 0x04;
    pub const FLOAT: u8 = 0x05;
    pub const STR: u8 = 0x06;
    pub const BYTES: u8 = 0x07;
    pub const LIST: u8 = 0x08;
    pub const TUPLE: u8 = 0x09;
    pub const DICT: u8 = 0x0A;
    pub const SET: u8 = 0x0B;
    pub const TENSOR: u8 = 0x0C;
    pub const HANDLE: u8 = 0x0D;
    pub const RECORD: u8 = 0x0E;
    pub const ERROR: u8 = 0x0F;
}

impl Frame {
    /// The call id in the header.
    pub fn id(&self) -> u64 {
        match self {
            Frame::Call(c) => c.id,
            Frame::Reply { id, .. } | Frame::Error { id, .. } | Frame::Cancel { id } => *id,
            Frame::Heartbeat { seq, .. } => *seq,
            Frame::Release(_) | Frame::Log { .. } => 0,
        }
    }

    /// The kind code.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Call(c) if c.parent.is_some() => kind::CALLBACK,
            Frame::Call(_) => kind::CALL,
            Frame::Reply { .. } => kind::REPLY,
            Frame::Error { .. } => kind::ERROR,
            Frame::Cancel { .. } => kind::CANCEL,
            Frame::Release(_) => kind::RELEASE,
            Frame::Log { .. } => kind::LOG,
            Frame::Heartbeat { .. } => kind::HEARTBEAT,
        }
    }

    /// Appends the encoded frame to `out` (which may already hold bytes; the limit
    /// applies to what this call appends).
    pub fn encode(&self, out: &mut Vec<u8>, limits: &Limits) -> Result<(), EncodeError> {
        let start = out.len();
        out.push(FRAME_VERSION);
        out.push(self.kind());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&self.id().to_le_bytes());
        let mut w = Writer { out, limits };
        match self {
            Frame::Call(c) => {
                if c.parent == Some(0) {
                    return Err(EncodeError::Invalid {
                        what: "callback parent 0",
                    });
                }
                w.u64(c.parent.unwrap_or(0));
                w.u64(c.target);
                w.u64(c.deadline_ns);
                w.str(&c.method)?;
                w.count("args", c.args.len())?;
                for a in &c.args {
                    w.value(a, 1)?;
                }
                w.count("kwargs", c.kwargs.len())?;
                for (k, v) in &c.kwargs {
                    w.str(k)?;
                    w.value(v, 1)?;
                }
            }
            Frame::Reply { value, .. } => w.value(value, 1)?,
            Frame::Error { error, .. } => w.error(error)?,
            Frame::Cancel { .. } => {}
            Frame::Release(r) => {
                w.count("handles", r.handles.len())?;
                for h in &r.handles {
                    w.u64(*h);
                }
                w.count("tensors", r.tensors.len())?;
                for (s, n) in &r.tensors {
                    w.u64(*s);
                    w.u64(*n);
                }
                w.count("retired", r.retired.len())?;
                for s in &r.retired {
                    w.u64(*s);
                }
            }
            Frame::Log {
                level,
                logger,
                message,
            } => {
                w.out.push(*level as u8);
                w.str(logger)?;
                w.str(message)?;
            }
            Frame::Heartbeat { monotonic_ns, .. } => w.u64(*monotonic_ns),
        }
        let len = (out.len() - start) as u64;
        if len > limits.max_frame as u64 {
            out.truncate(start);
            return Err(EncodeError::FrameTooLarge {
                len,
                limit: limits.max_frame as u64,
            });
        }
        Ok(())
    }

    /// Decodes one whole frame; every byte must belong to it.
    pub fn decode(buf: &[u8], limits: &Limits) -> Result<Decoded, DecodeError> {
        if buf.len() > limits.max_frame {
            return Err(DecodeError::FrameTooLarge {
                len: buf.len() as u64,
                limit: limits.max_frame as u64,
            });
        }
        let mut r = Reader::new(buf, limits);
        let version = r.u8()?;
        if version != FRAME_VERSION {
            return Err(DecodeError::Version(version));
        }
        let k = r.u8()?;
        let at = r.pos;
        let flags = r.u16()?;
        if flags != 0 {
            return Err(DecodeError::Field {
                field: "flags",
                at,
                value: u64::from(flags),
            });
        }
        let at = r.pos;
        let reserved = r.u32()?;
        if reserved != 0 {
            return Err(DecodeError::Field {
                field: "reserved",
                at,
                value: u64::from(reserved),
            });
        }
        let at = r.pos;
        let id = r.u64()?;
        if id != 0 && (k == kind::RELEASE || k == kind::LOG) {
            return Err(DecodeError::Field {
                field: "id (must be 0 for release and log)",
                at,
                value: id,
            });
        }
        let frame = match k {
            kind::CALL | kind::CALLBACK => {
                let at = r.pos;
                let parent = r.u64()?;
                let parent = match (k, parent) {
                    (kind::CALL, 0) => None,
                    (kind::CALLBACK, p) if p != 0 => Some(p),
                    _ => {
                        return Err(DecodeError::Field {
                            field: "parent",
                            at,
                            value: parent,
                        })
                    }
                };
                let target = r.u64()?;
                let deadline_ns = r.u64()?;
                let method = r.string()?;
                let n = r.count()?;
                let mut args = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    args.push(r.value(1)?);
                }
                let n = r.count()?;
                let mut kwargs = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    let k = r.string()?;
                    kwargs.push((k, r.value(1)?));
                }
                Frame::Call(Call {
                    id,
                    parent,
                    target,
                    method,
                    args,
                    kwargs,
                    deadline_ns,
                })
            }
            kind::REPLY => Frame::Reply {
                id,
                value: r.value(1)?,
            },
            kind::ERROR => Frame::Error {
                id,
                error: r.error()?,
            },
            kind::CANCEL => Frame::Cancel { id },
            kind::RELEASE => {
                let mut rel = Release::default();
                let n = r.count_sized(8)?;
                for _ in 0..n {
                    rel.handles.push(r.u64()?);
                }
                let n = r.count_sized(16)?;
                for _ in 0..n {
                    rel.tensors.push((r.u64()?, r.u64()?));
                }
                let n = r.count_sized(8)?;
                for _ in 0..n {
                    rel.retired.push(r.u64()?);
                }
                Frame::Release(rel)
            }
            kind::LOG => {
                let at = r.pos;
                let level = match r.u8()? {
                    0 => LogLevel::Debug,
                    1 => LogLevel::Info,
                    2 => LogLevel::Warning,
                    3 => LogLevel::Error,
                    4 => LogLevel::Critical,
                    v => {
                        return Err(DecodeError::Field {
                            field: "log level",
                            at,
                            value: u64::from(v),
                        })
                    }
                };
                Frame::Log {
                    level,
                    logger: r.string()?,
                    message: r.string()?,
                }
            }
            kind::HEARTBEAT => Frame::Heartbeat {
                seq: id,
                monotonic_ns: r.u64()?,
            },
            other => return Err(DecodeError::FrameKind(other)),
        };
        if r.pos != buf.len() {
            return Err(DecodeError::TrailingBytes {
                extra: buf.len() - r.pos,
            });
        }
        Ok(Decoded {
            frame,
            tensors: r.tensors,
        })
    }
}

/// A decoded frame and how many tensor descriptors it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The frame.
    pub frame: Frame,
    /// Tensor descriptors anywhere in it (0 lets the channel skip the walk).
    pub tensors: u32,
}

impl Value {
    /// Encodes this value alone (no frame header), e.g. for tests and fuzzing.
    pub fn encode(&self, out: &mut Vec<u8>, limits: &Limits) -> Result<(), EncodeError> {
        Writer { out, limits }.value(self, 1)
    }

    /// Decodes one value; every byte must belong to it.
    pub fn decode(buf: &[u8], limits: &Limits) -> Result<Value, DecodeError> {
        if buf.len() > limits.max_frame {
            return Err(DecodeError::FrameTooLarge {
                len: buf.len() as u64,
                limit: limits.max_frame as u64,
            });
        }
        let mut r = Reader::new(buf, limits);
        let v = r.value(1)?;
        if r.pos != buf.len() {
            return Err(DecodeError::TrailingBytes {
                extra: buf.len() - r.pos,
            });
        }
        Ok(v)
    }

    /// Calls `f` on every tensor descriptor in the tree (depth-first, in order).
    pub fn for_each_tensor<'a>(&'a self, f: &mut dyn FnMut(&'a TensorDesc)) {
        match self {
            Value::Tensor(t) | Value::KindTensor(_, t) => f(t),
            Value::List(v) | Value::Tuple(v) | Value::Set(v) => {
                v.iter().for_each(|x| x.for_each_tensor(f))
            }
            Value::Dict(kv) => kv.iter().for_each(|(k, v)| {
                k.for_each_tensor(f);
                v.for_each_tensor(f)
            }),
            Value::Record(r) => r.fields.iter().for_each(|(_, v)| v.for_each_tensor(f)),
            _ => {}
        }
    }
}

impl Frame {
    /// Calls `f` on every tensor descriptor in the frame.
    pub fn for_each_tensor<'a>(&'a self, f: &mut dyn FnMut(&'a TensorDesc)) {
        match self {
            Frame::Call(c) => {
                c.args.iter().for_each(|v| v.for_each_tensor(f));
                c.kwargs.iter().for_each(|(_, v)| v.for_each_tensor(f));
            }
            Frame::Reply { value, .. } => value.for_each_tensor(f),
            _ => {}
        }
    }
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
    limits: &'a Limits,
}

impl Writer<'_> {
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn count(&mut self, what: &'static str, n: usize) -> Result<(), EncodeError> {
        let n32 = u32::try_from(n).map_err(|_| EncodeError::TooLong {
            what,
            len: n as u64,
        })?;
        self.u32(n32);
        Ok(())
    }

    fn bytes(&mut self, what: &'static str, b: &[u8]) -> Result<(), EncodeError> {
        if b.len() > self.limits.max_frame {
            return Err(EncodeError::FrameTooLarge {
                len: b.len() as u64,
                limit: self.limits.max_frame as u64,
            });
        }
        self.count(what, b.len())?;
        self.out.extend_from_slice(b);
        Ok(())
    }

    fn str(&mut self, s: &str) -> Result<(), EncodeError> {
        self.bytes("str", s.as_bytes())
    }

    fn error(&mut self, e: &ErrorValue) -> Result<(), EncodeError> {
        self.str(&e.type_name)?;
        self.str(&e.message)?;
        self.str(&e.traceback)
    }

    fn value(&mut self, v: &Value, depth: u32) -> Result<(), EncodeError> {
        if depth > self.limits.max_depth {
            return Err(EncodeError::TooDeep {
                limit: self.limits.max_depth,
            });
        }
        match v {
            Value::None => self.out.push(tag::NONE),
            Value::Bool(false) => self.out.push(tag::FALSE),
            Value::Bool(true) => self.out.push(tag::TRUE),
            Value::Int(i) => {
                self.out.push(tag::INT);
                self.out.extend_from_slice(&i.to_le_bytes());
            }
            Value::BigInt(s) => {
                if !bigint_ok(s.as_bytes()) {
                    return Err(EncodeError::Invalid { what: "big int" });
                }
                self.out.push(tag::BIGINT);
                self.str(s)?;
            }
            Value::Float(f) => {
                self.out.push(tag::FLOAT);
                self.out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Value::Str(s) => {
                self.out.push(tag::STR);
                self.str(s)?;
            }
            Value::Bytes(b) => {
                self.out.push(tag::BYTES);
                self.bytes("bytes", b)?;
            }
            Value::List(items) | Value::Tuple(items) | Value::Set(items) => {
                self.out.push(match v {
                    Value::List(_) => tag::LIST,
                    Value::Tuple(_) => tag::TUPLE,
                    _ => tag::SET,
                });
                self.count("container", items.len())?;
                for i in items {
                    self.value(i, depth + 1)?;
                    self.check_len()?;
                }
            }
            Value::Dict(kv) => {
                self.out.push(tag::DICT);
                self.count("dict", kv.len())?;
                for (k, v) in kv {
                    self.value(k, depth + 1)?;
                    self.value(v, depth + 1)?;
                    self.check_len()?;
                }
            }
            Value::Tensor(t) => {
                t.validate().map_err(EncodeError::Tensor)?;
                self.out.push(tag::TENSOR);
                t.encode(self.out);
            }
            Value::Handle(h) => {
                self.out.push(tag::HANDLE);
                self.u64(h.id);
                self.out.push(match h.owner {
                    Side::Host => 0,
                    Side::Worker => 1,
                });
                self.out.push(h.kind.code());
            }
            Value::Record(r) => {
                self.out.push(tag::RECORD);
                self.str(&r.name)?;
                self.count("record", r.fields.len())?;
                for (k, v) in &r.fields {
                    self.str(k)?;
                    self.value(v, depth + 1)?;
                }
            }
            Value::Error(e) => {
                self.out.push(tag::ERROR);
                self.error(e)?;
            }
            Value::KindTensor(kind, t) => {
                // The record's two fields are one level deeper, as a Record's are.
                if depth + 1 > self.limits.max_depth {
                    return Err(EncodeError::TooDeep {
                        limit: self.limits.max_depth,
                    });
                }
                t.validate().map_err(EncodeError::Tensor)?;
                self.out.push(tag::RECORD);
                self.str(TENSOR_RECORD)?;
                self.count("record", 2)?;
                self.str("kind")?;
                self.out.push(tag::STR);
                self.str(kind.name())?;
                self.str("t")?;
                self.out.push(tag::TENSOR);
                t.encode(self.out);
            }
        }
        Ok(())
    }

    /// Stops early (before building gigabytes) when a container outgrows the frame limit.
    fn check_len(&self) -> Result<(), EncodeError> {
        if self.out.len() > self.limits.max_frame.saturating_add(FRAME_HEADER_LEN) {
            return Err(EncodeError::FrameTooLarge {
                len: self.out.len() as u64,
                limit: self.limits.max_frame as u64,
            });
        }
        Ok(())
    }
}

fn bigint_ok(s: &[u8]) -> bool {
    let digits = match s.first() {
        Some(b'-') => &s[1..],
        _ => s,
    };
    !digits.is_empty()
        && digits.len() <= MAX_BIGINT_DIGITS
        && digits.iter().all(u8::is_ascii_digit)
        && !(digits.len() > 1 && digits[0] == b'0')
        && !(s[0] == b'-' && digits == b"0")
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    limits: &'a Limits,
    items: u64,
    tensors: u32,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], limits: &'a Limits) -> Reader<'a> {
        Reader {
            buf,
            pos: 0,
            limits,
            items: 0,
            tensors: 0,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(DecodeError::Truncated {
                at: self.pos,
                need: (n - left) as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A count of values, each at least one byte: cannot exceed the bytes left.
    fn count(&mut self) -> Result<usize, DecodeError> {
        self.count_sized(1)
    }

    /// A count of items of at least `each` bytes.
    fn count_sized(&mut self, each: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.u32()? as usize;
        let left = self.buf.len() - self.pos;
        if n.saturating_mul(each) > left {
            return Err(DecodeError::Truncated {
                at,
                need: (n.saturating_mul(each) - left) as u64,
            });
        }
        Ok(n)
    }

    fn len_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let at = self.pos;
        let b = self.len_bytes()?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(DecodeError::Utf8 { at }),
        }
    }

    fn error(&mut self) -> Result<ErrorValue, DecodeError> {
        Ok(ErrorValue {
            type_name: self.string()?,
            message: self.string()?,
            traceback: self.string()?,
        })
    }

    fn item(&mut self) -> Result<(), DecodeError> {
        self.items += 1;
        if self.items > self.limits.max_items {
            return Err(DecodeError::TooManyItems {
                limit: self.limits.max_items,
            });
        }
        Ok(())
    }

    fn tensor(&mut self) -> Result<TensorDesc, DecodeError> {
        let at = self.pos;
        let slot = self.u64()?;
        let offset = self.u64()?;
        let nbytes = self.u64()?;
        let h = self.take(8)?;
        let (dtype, ndim, flags, device) = (h[0], h[1], h[2], h[3]);
        let terr = |err| DecodeError::Tensor { at, err };
        let dtype = DType::from_code(dtype).ok_or(terr(TensorError::UnknownDtype(dtype)))?;
        if usize::from(ndim) > MAX_NDIM {
            return Err(terr(TensorError::TooManyDims(ndim)));
        }
        if flags & !0b11 != 0 {
            return Err(terr(TensorError::UnknownFlags(flags)));
        }
        let device = Device::from_wire(device, h[4]).map_err(terr)?;
        if h[5..8] != [0, 0, 0] {
            return Err(terr(TensorError::Reserved));
        }
        let mut d = TensorDesc {
            slot,
            origin: if flags & 2 != 0 {
                Origin::Receiver
            } else {
                Origin::Sender
            },
            offset,
            nbytes,
            dtype,
            writable: flags & 1 != 0,
            device,
            ndim,
            shape: [0; MAX_NDIM],
            strides: [0; MAX_NDIM],
        };
        for i in 0..usize::from(ndim) {
            d.shape[i] = self.u64()?;
        }
        for i in 0..usize::from(ndim) {
            d.strides[i] = self.u64()? as i64;
        }
        d.validate().map_err(terr)?;
        self.tensors = self.tensors.saturating_add(1);
        Ok(d)
    }

    /// A record (its tag read) that is exactly `nodecell.tensor {kind: "numpy" |
    /// "torch", t: tensor}`, as a [`Value::KindTensor`], read without allocating its
    /// names; None (position and counts as they were) for any other record, or one
    /// that is malformed: the general reader then reads it (and names the error).
    fn kind_tensor(&mut self, depth: u32) -> Option<Value> {
        let (pos, items, tensors) = (self.pos, self.items, self.tensors);
        let v = self.kind_tensor_fields(depth);
        if v.is_none() {
            (self.pos, self.items, self.tensors) = (pos, items, tensors);
        }
        v
    }

    fn kind_tensor_fields(&mut self, depth: u32) -> Option<Value> {
        // The general reader reads the fields at depth + 1, each counted as an item.
        if depth + 1 > self.limits.max_depth
            || self.len_bytes().ok()? != TENSOR_RECORD.as_bytes()
            || self.u32().ok()? != 2
            || self.len_bytes().ok()? != b"kind"
        {
            return None;
        }
        self.item().ok()?;
        if self.u8().ok()? != tag::STR {
            return None;
        }
        let kind = TensorKind::from_name(std::str::from_utf8(self.len_bytes().ok()?).ok()?)?;
        if self.len_bytes().ok()? != b"t" {
            return None;
        }
        self.item().ok()?;
        if self.u8().ok()? != tag::TENSOR {
            return None;
        }
        let t = self.tensor().ok()?;
        Some(Value::KindTensor(kind, Box::new(t)))
    }

    fn value(&mut self, depth: u32) -> Result<Value, DecodeError> {
        if depth > self.limits.max_depth {
            return Err(DecodeError::TooDeep {
                limit: self.limits.max_depth,
            });
        }
        self.item()?;
        let at = self.pos;
        let t = self.u8()?;
        Ok(match t {
            tag::NONE => Value::None,
            tag::FALSE => Value::Bool(false),
            tag::TRUE => Value::Bool(true),
            tag::INT => Value::Int(self.u64()? as i64),
            tag::BIGINT => {
                let at = self.pos;
                let b = self.len_bytes()?;
                if !bigint_ok(b) {
                    return Err(DecodeError::BigInt { at });
                }
                // bigint_ok proved it is ASCII.
                Value::BigInt(String::from_utf8_lossy(b).into_owned())
            }
            tag::FLOAT => Value::Float(f64::from_bits(self.u64()?)),
            tag::STR => Value::Str(self.string()?),
            tag::BYTES => Value::Bytes(self.len_bytes()?.to_vec()),
            tag::LIST | tag::TUPLE | tag::SET => {
                let n = self.count()?;
                let mut v = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    v.push(self.value(depth + 1)?);
                }
                match t {
                    tag::LIST => Value::List(v),
                    tag::TUPLE => Value::Tuple(v),
                    _ => Value::Set(v),
                }
            }
            tag::DICT => {
                let n = self.count_sized(2)?;
                let mut v = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    let k = self.value(depth + 1)?;
                    v.push((k, self.value(depth + 1)?));
                }
                Value::Dict(v)
            }
            tag::TENSOR => Value::Tensor(Box::new(self.tensor()?)),
            tag::HANDLE => {
                let id = self.u64()?;
                let at = self.pos;
                let owner = match self.u8()? {
                    0 => Side::Host,
                    1 => Side::Worker,
                    v => {
                        return Err(DecodeError::Field {
                            field: "handle owner",
                            at,
                            value: u64::from(v),
                        })
                    }
                };
                let at = self.pos;
                let kind = match self.u8()? {
                    0 => HandleKind::Object,
                    1 => HandleKind::Callable,
                    2 => HandleKind::AsyncCallable,
                    v => {
                        return Err(DecodeError::Field {
                            field: "handle kind",
                            at,
                            value: u64::from(v),
                        })
                    }
                };
                Value::Handle(RemoteHandle { id, owner, kind })
            }
            tag::RECORD => {
                if let Some(v) = self.kind_tensor(depth) {
                    return Ok(v);
                }
                let name = self.string()?;
                let n = self.count_sized(5)?;
                let mut fields = Vec::with_capacity(n.min(256));
                for _ in 0..n {
                    let k = self.string()?;
                    fields.push((k, self.value(depth + 1)?));
                }
                Value::Record(Box::new(Record { name, fields }))
            }
            tag::ERROR => Value::Error(Box::new(self.error()?)),
            other => return Err(DecodeError::Tag { at, tag: other }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(f: &Frame) -> Frame {
        let mut b = Vec::new();
        f.encode(&mut b, &Limits::default()).unwrap();
        Frame::decode(&b, &Limits::default()).unwrap().frame
    }

    #[test]
    fn every_value_round_trips() {
        let t = TensorDesc::contiguous(3, 64, DType::F32, &[2, 3, 4]).unwrap();
        let v = Value::Dict(vec![
            (
                Value::Str("a".into()),
                Value::List(vec![Value::None, Value::Bool(true), Value::Bool(false)]),
            ),
            (
                Value::Int(-5),
                Value::Tuple(vec![
                    Value::Float(1.5),
                    Value::BigInt("-123456789012345678901234567890".into()),
                ]),
            ),
            (
                Value::Bytes(vec![0, 255]),
                Value::Set(vec![Value::Int(i64::MIN)]),
            ),
            (Value::Tuple(vec![]), Value::Tensor(Box::new(t))),
            (
                Value::Handle(RemoteHandle {
                    id: 9,
                    owner: Side::Worker,
                    kind: HandleKind::Callable,
                }),
                Value::Record(Box::new(Record {
                    name: "pkg.Color".into(),
                    fields: vec![("value".into(), Value::Int(2))],
                })),
            ),
            (
                Value::None,
                Value::Error(Box::new(ErrorValue {
                    type_name: "ValueError".into(),
                    message: "m".into(),
                    traceback: "tb".into(),
                })),
            ),
        ]);
        let f = Frame::Call(Call {
            id: 7,
            parent: Some(3),
            target: 11,
            method: "run".into(),
            args: vec![v.clone()],
            kwargs: vec![("k".into(), v)],
            deadline_ns: 5,
        });
        assert_eq!(rt(&f), f);
        for f in [
            Frame::Reply {
                id: 1,
                value: Value::Str("x".into()),
            },
            Frame::Error {
                id: 2,
                error: ErrorValue::default(),
            },
            Frame::Cancel { id: 3 },
            Frame::Release(Release {
                handles: vec![1, 2],
                tensors: vec![(3, 4)],
                retired: vec![5],
            }),
            Frame::Log {
                level: LogLevel::Warning,
                logger: "l".into(),
                message: "m".into(),
            },
            Frame::Heartbeat {
                seq: 4,
                monotonic_ns: 99,
            },
        ] {
            assert_eq!(rt(&f), f);
        }
    }

    #[test]
    fn handle_kinds_round_trip_by_code_and_name() {
        for kind in HandleKind::ALL {
            assert_eq!(HandleKind::from_name(kind.name()), Some(kind));
            let f = Frame::Reply {
                id: 7,
                value: Value::Handle(RemoteHandle {
                    id: 42,
                    owner: Side::Worker,
                    kind,
                }),
            };
            assert_eq!(rt(&f), f);
        }
        assert_eq!(HandleKind::from_name("coroutine"), None);
    }

    #[test]
    fn depth_bomb_is_typed() {
        let mut b = vec![
            FRAME_VERSION,
            kind::REPLY,
            0,
            0,
            0,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        for _ in 0..100_000 {
            b.extend_from_slice(&[tag::LIST, 1, 0, 0, 0]);
        }
        b.push(tag::NONE);
        assert_eq!(
            Frame::decode(&b, &Limits::default()).unwrap_err(),
            DecodeError::TooDeep { limit: 64 }
        );
    }

    #[test]
    fn count_bomb_is_typed() {
        // A list claiming 4 billion items in a 21-byte frame.
        let mut b = vec![
            FRAME_VERSION,
            kind::REPLY,
            0,
            0,
            0,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        b.extend_from_slice(&[tag::LIST, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            Frame::decode(&b, &Limits::default()),
            Err(DecodeError::Truncated { .. })
        ));
        // Many tiny items beyond max_items.
        let limits = Limits {
            max_items: 1000,
            ..Limits::default()
        };
        let mut b = vec![
            FRAME_VERSION,
            kind::REPLY,
            0,
            0,
            0,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        b.extend_from_slice(&[tag::LIST]);
        b.extend_from_slice(&5000u32.to_le_bytes());
        b.extend(std::iter::repeat_n(tag::NONE, 5000));
        assert_eq!(
            Frame::decode(&b, &limits).unwrap_err(),
            DecodeError::TooManyItems { limit: 1000 }
        );
    }

    #[test]
    fn tensor_overflow_is_typed() {
        let mut d = TensorDesc::contiguous(1, 0, DType::F64, &[4, 4]).unwrap();
        d.shape[0] = u64::MAX / 2;
        assert!(matches!(d.validate(), Err(TensorError::Overflow { .. })));
        let d = TensorDesc::new(
            1,
            Origin::Sender,
            0,
            16,
            DType::F32,
            &[2, 3],
            &[3, 1],
            false,
        );
        assert!(matches!(
            d,
            Err(TensorError::SpanTooLarge {
                span: 24,
                nbytes: 16
            })
        ));
        let d = TensorDesc::contiguous(1, u64::MAX - 4, DType::U8, &[8]);
        assert!(matches!(d, Err(TensorError::Overflow { .. })));
        let d = TensorDesc::contiguous(1, 100, DType::U8, &[8]).unwrap();
        assert!(matches!(
            d.validate_in(104),
            Err(TensorError::OutOfArena { .. })
        ));
        d.validate_in(108).unwrap();
        let zero = TensorDesc::contiguous(1, 0, DType::U8, &[0, 5]).unwrap();
        assert_eq!(zero.span().unwrap(), 0);
    }

    #[test]
    fn cpu_descriptors_keep_their_bytes_and_cuda_ones_are_strict() {
        let cpu = TensorDesc::contiguous(3, 64, DType::F32, &[2, 3]).unwrap();
        let mut b = Vec::new();
        cpu.encode(&mut b);
        assert_eq!(
            &b[24..32],
            &[DType::F32.code(), 2, 0, 0, 0, 0, 0, 0],
            "cpu header bytes as before"
        );
        let cuda = cpu.clone().on_device(Device::Cuda(7));
        let mut c = Vec::new();
        cuda.encode(&mut c);
        assert_eq!(&c[24..32], &[DType::F32.code(), 2, 1, 1, 7, 0, 0, 0]);
        assert_eq!(TensorDesc::decode(&c).unwrap().0, cuda);
        assert_eq!(TensorDesc::decode(&b).unwrap().0, cpu);
        let bad = |at: usize, v: u8, base: &[u8]| {
            let mut x = base.to_vec();
            x[at] = v;
            TensorDesc::decode(&x).map(|d| d.0)
        };
        assert!(matches!(
            bad(27, 2, &b),
            Err(DecodeError::Tensor {
                err: TensorError::UnknownDevice(2),
                ..
            })
        ));
        assert!(matches!(
            bad(28, 1, &b),
            Err(DecodeError::Tensor {
                err: TensorError::Reserved,
                ..
            })
        ));
        for at in 29..32 {
            assert!(matches!(
                bad(at, 1, &c),
                Err(DecodeError::Tensor {
                    err: TensorError::Reserved,
                    ..
                })
            ));
        }
        // A cuda descriptor must be writable (no copy-on-write for device memory).
        assert!(matches!(
            bad(26, 0, &c),
            Err(DecodeError::Tensor {
                err: TensorError::CudaReadOnly,
                ..
            })
        ));
        let mut ro = cuda.clone();
        ro.writable = false;
        assert!(matches!(
            Value::Tensor(Box::new(ro)).encode(&mut Vec::new(), &Limits::default()),
            Err(EncodeError::Tensor(TensorError::CudaReadOnly))
        ));
        // Echo keeps the device.
        assert_eq!(cuda.echo().device, Device::Cuda(7));
    }

    #[test]
    fn bigint_must_be_canonical() {
        for bad in ["", "-", "01", "-0", "1a", "+1"] {
            let mut b = vec![tag::BIGINT];
            b.extend_from_slice(&(bad.len() as u32).to_le_bytes());
            b.extend_from_slice(bad.as_bytes());
            assert!(
                matches!(
                    Value::decode(&b, &Limits::default()),
                    Err(DecodeError::BigInt { .. })
                ),
                "{bad}"
            );
        }
    }

    fn tensor_record(kind: &str, t: &TensorDesc, extra: Option<(&str, Value)>) -> Value {
        let mut fields = vec![
            ("kind".to_string(), Value::Str(kind.to_string())),
            ("t".to_string(), Value::Tensor(Box::new(t.clone()))),
        ];
        if let Some((k, v)) = extra {
            fields.push((k.to_string(), v));
        }
        Value::Record(Box::new(Record {
            name: TENSOR_RECORD.to_string(),
            fields,
        }))
    }

    fn bytes_of(v: &Value) -> Vec<u8> {
        let mut b = Vec::new();
        v.encode(&mut b, &Limits::default()).unwrap();
        b
    }

    #[test]
    fn a_kind_tensor_is_the_tensor_record_on_the_wire() {
        let t = TensorDesc::contiguous(3, 64, DType::F32, &[2, 8]).unwrap();
        for kind in [TensorKind::Numpy, TensorKind::Torch] {
            let compact = Value::KindTensor(kind, Box::new(t.clone()));
            let record = tensor_record(kind.name(), &t, None);
            assert_eq!(bytes_of(&compact), bytes_of(&record), "{kind:?}");
            // Either form decodes to the compact one, and it names its tensor.
            let back = Value::decode(&bytes_of(&record), &Limits::default()).unwrap();
            assert_eq!(back, compact);
            let mut seen = Vec::new();
            back.for_each_tensor(&mut |d| seen.push(d.clone()));
            assert_eq!(seen, vec![t.clone()]);
        }
    }

    #[test]
    fn other_tensor_records_decode_as_records_and_bad_ones_fail_as_before() {
        let t = TensorDesc::contiguous(3, 0, DType::U8, &[16]).unwrap();
        // Not one of the two kinds, or a field more: the general reader's record.
        for v in [
            tensor_record("jax", &t, None),
            tensor_record("torch", &t, Some(("x", Value::None))),
        ] {
            assert_eq!(Value::decode(&bytes_of(&v), &Limits::default()).unwrap(), v);
        }
        // A bad tensor inside is reported by the general reader, with its position.
        let mut b = bytes_of(&tensor_record("torch", &t, None));
        let dtype_at = b.len() - (8 + 16); // the header (dtype first), then shape and strides
        b[dtype_at] = 200;
        assert!(matches!(
            Value::decode(&b, &Limits::default()),
            Err(DecodeError::Tensor {
                err: TensorError::UnknownDtype(200),
                ..
            })
        ));
        // Its fields count as items, as a record's do.
        let limits = Limits {
            max_items: 2,
            ..Limits::default()
        };
        let ok = bytes_of(&tensor_record("torch", &t, None));
        assert!(matches!(
            Value::decode(&ok, &limits),
            Err(DecodeError::TooManyItems { limit: 2 })
        ));
    }
}
