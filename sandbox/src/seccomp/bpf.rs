//! The hand-written parts of the seccomp filter: a prefix that refuses
//! x32 numbers, answers `ENOSYS` for `clone3` and `openat2` (so glibc and
//! friends fall back to calls whose arguments the filter can read), and
//! checks `ioctl` requests; then a binary search over the numbers allowed
//! with any arguments.
//!
//! `ioctl` is checked here rather than with seccompiler because the rule
//! needs a masked inequality: terminal requests (type `'T'`, whatever their
//! size and direction bits) are allowed only from [`TTY_IOCTLS`]; the
//! legacy console (`KD*`) and virtual-terminal (`VT_*`) requests are
//! refused; every other request reaches the kernel (device nodes are few:
//! `/dev/null` and friends, and the GPU nodes with `--gpu`).

use seccompiler::sock_filter;

/// Marker bit of x32-ABI syscall numbers on x86-64.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

pub(super) const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
pub(super) const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

pub(super) const LD_W_ABS: u16 = 0x20;
pub(super) const AND_K: u16 = 0x54;
pub(super) const JA: u16 = 0x05;
pub(super) const JEQ_K: u16 = 0x15;
pub(super) const JGE_K: u16 = 0x35;
pub(super) const JGT_K: u16 = 0x25;
pub(super) const JSET_K: u16 = 0x45;
pub(super) const RET_K: u16 = 0x06;

/// Offset of the low 32 bits of syscall argument `i` in `seccomp_data`
/// (`nr`, `arch`, `instruction_pointer`, then six 64-bit arguments).
pub(super) const fn arg_low(i: u32) -> u32 {
    16 + 8 * i
}
const _: () = assert!(
    cfg!(target_endian = "little"),
    "arg_low assumes the low half of an argument comes first"
);

/// Terminal ioctls a worker may use on a tty it inherited (stdin/stdout of an
/// interactive `nodecell run`): read the settings and the window size, set
/// its own line settings, drain and flush, and the generic fd requests that
/// share the `'T'` type (`FIONREAD`, `FIONBIO`, `FIOCLEX`, ...). Everything
/// else of type `'T'` is refused: `TIOCSTI` (input injection), `TIOCLINUX`,
/// `TIOCSETD` (line disciplines), `TIOCCONS`, `TIOCSCTTY`, `TIOCSPGRP`,
/// `TIOCSWINSZ`, modem and serial settings, `TIOCSIG`, ...
pub const TTY_IOCTLS: &[(&str, u32)] = &[
    ("TCGETS", 0x5401),
    ("TCSETS", 0x5402),
    ("TCSETSW", 0x5403),
    ("TCSETSF", 0x5404),
    ("TCSBRK", 0x5409),
    ("TCXONC", 0x540A),
    ("TCFLSH", 0x540B),
    ("TIOCGPGRP", 0x540F),
    ("TIOCOUTQ", 0x5411),
    ("TIOCGWINSZ", 0x5413),
    ("FIONREAD", 0x541B),
    ("FIONBIO", 0x5421),
    ("TIOCGETD", 0x5424),
    ("TIOCGSID", 0x5429),
    ("TCGETS2", 0x802C_542A),
    ("TCSETS2", 0x402C_542B),
    ("TCSETSW2", 0x402C_542C),
    ("TCSETSF2", 0x402C_542D),
    ("FIONCLEX", 0x5450),
    ("FIOCLEX", 0x5451),
    ("FIOASYNC", 0x5452),
    ("FIOQSIZE", 0x5460),
];

/// Request type byte of terminal ioctls (`'T'`), in place (`request & 0xff00`).
pub const TTY_TYPE: u32 = 0x5400;
/// Legacy console (`KD*`) and virtual-terminal (`VT_*`) requests: no size or
/// direction bits, so `request & 0xffff_ff00` is exactly these.
pub const CONSOLE_TYPES: [u32; 2] = [0x4B00, 0x5600];

pub(super) fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// A jump target of [`Asm`].
#[derive(Clone, Copy)]
pub(super) enum To {
    Next,
    Label(&'static str),
}

/// A tiny assembler for short straight-line blocks with forward jumps to
/// named labels (offsets are checked to fit the 8-bit jump fields).
#[derive(Default)]
pub(super) struct Asm {
    ins: Vec<(u16, To, To, u32)>,
    labels: Vec<(&'static str, usize)>,
}

impl Asm {
    pub(super) fn op(&mut self, code: u16, k: u32) {
        self.ins.push((code, To::Next, To::Next, k));
    }
    pub(super) fn jump(&mut self, code: u16, k: u32, jt: To, jf: To) {
        self.ins.push((code, jt, jf, k));
    }
    pub(super) fn label(&mut self, name: &'static str) {
        self.labels.push((name, self.ins.len()));
    }
    pub(super) fn finish(self) -> Vec<sock_filter> {
        let at = |name: &str| {
            self.labels
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, i)| *i)
                .expect("jump to an undefined label")
        };
        self.ins
            .iter()
            .enumerate()
            .map(|(i, &(code, jt, jf, k))| {
                let off = |t: To| -> u8 {
                    match t {
                        To::Next => 0,
                        To::Label(l) => {
                            let d = at(l)
                                .checked_sub(i + 1)
                                .expect("backward jump in a BPF block");
                            u8::try_from(d).expect("jump too long for a BPF block")
                        }
                    }
                };
                insn(code, off(jt), off(jf), k)
            })
            .collect()
    }
}

/// The filter's prefix (the syscall number is loaded first and is still in
/// the accumulator when the prefix falls through):
///
/// * x32 numbers: `EPERM`;
/// * `clone3`, `openat2`: `ENOSYS` (their arguments are behind pointers);
/// * `ioctl`: the terminal rule above, answered here.
pub fn prefix() -> Vec<sock_filter> {
    let eperm = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let enosys = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let mut a = Asm::default();
    a.op(LD_W_ABS, 0);
    if cfg!(target_arch = "x86_64") {
        a.jump(JGE_K, X32_SYSCALL_BIT, To::Label("eperm"), To::Next);
    }
    a.jump(
        JEQ_K,
        libc::SYS_clone3 as u32,
        To::Label("enosys"),
        To::Next,
    );
    a.jump(
        JEQ_K,
        libc::SYS_openat2 as u32,
        To::Label("enosys"),
        To::Next,
    );
    a.jump(JEQ_K, libc::SYS_ioctl as u32, To::Next, To::Label("done"));
    // ioctl: the request is argument 1 (an unsigned int).
    a.op(LD_W_ABS, arg_low(1));
    for &(_, req) in TTY_IOCTLS {
        a.jump(JEQ_K, req, To::Label("allow"), To::Next);
    }
    a.op(AND_K, 0xff00);
    a.jump(JEQ_K, TTY_TYPE, To::Label("eperm"), To::Next);
    a.op(LD_W_ABS, arg_low(1));
    a.op(AND_K, 0xffff_ff00);
    for t in CONSOLE_TYPES {
        a.jump(JEQ_K, t, To::Label("eperm"), To::Next);
    }
    a.label("allow");
    a.op(RET_K, SECCOMP_RET_ALLOW);
    a.label("eperm");
    a.op(RET_K, eperm);
    a.label("enosys");
    a.op(RET_K, enosys);
    // Not a special number: on to the allow tree (the accumulator still
    // holds the syscall number on this path).
    a.label("done");
    a.finish()
}

/// Ranges of allowed numbers checked one by one at the leaves of the
/// search tree.
pub(super) const LEAF: usize = 6;

/// `nrs` (sorted, unique) as inclusive ranges of consecutive numbers.
fn ranges(nrs: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &n in nrs {
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == n => *hi = n,
            _ => out.push((n, n)),
        }
    }
    out
}

enum Op {
    Raw(sock_filter),
    /// A conditional jump whose true branch goes to the leaf's RET ALLOW.
    ToAllow {
        code: u16,
        k: u32,
    },
    /// A conditional jump whose false branch goes to the leaf's RET ALLOW.
    ElseAllow {
        code: u16,
        k: u32,
    },
    /// Jump past the end of the tree (not an allowed number).
    JumpMiss,
    /// The leaf's `RET ALLOW`.
    RetAllow,
}

/// A binary search over sorted `nrs` (the syscall number is in the
/// accumulator): returns ALLOW for a member, falls through past its last
/// instruction otherwise. Consecutive numbers are checked as ranges.
/// Conditional jumps only ever skip a few instructions inside a leaf; long
/// distances use `JA`, whose offset is 32 bits.
pub fn allow_tree(nrs: &[u32]) -> Vec<sock_filter> {
    fn leaf(rs: &[(u32, u32)], out: &mut Vec<sock_filter>) {
        let mut ops = Vec::new();
        for &(lo, hi) in rs {
            if lo == hi {
                ops.push(Op::ToAllow { code: JEQ_K, k: lo });
            } else {
                // nr < lo: skip the next check; nr > hi: go on; else allow.
                ops.push(Op::Raw(insn(JGE_K, 0, 1, lo)));
                ops.push(Op::ElseAllow { code: JGT_K, k: hi });
            }
        }
        ops.push(Op::JumpMiss);
        ops.push(Op::RetAllow);
        let ret = ops.len() - 1;
        for (i, op) in ops.into_iter().enumerate() {
            // Offset from the instruction after `i` to the RET ALLOW.
            let to_ret = || (ret - i - 1) as u8;
            out.push(match op {
                Op::Raw(f) => f,
                Op::ToAllow { code, k } => insn(code, to_ret(), 0, k),
                Op::ElseAllow { code, k } => insn(code, 0, to_ret(), k),
                // Placeholder, fixed once the tree's length is known.
                Op::JumpMiss => insn(JA, 0, 0, u32::MAX),
                Op::RetAllow => insn(RET_K, 0, 0, SECCOMP_RET_ALLOW),
            });
        }
    }
    fn emit(rs: &[(u32, u32)], out: &mut Vec<sock_filter>) {
        if rs.len() <= LEAF {
            leaf(rs, out);
            return;
        }
        let mid = rs.len() / 2;
        let mut left = Vec::new();
        emit(&rs[..mid], &mut left);
        // nr >= start of the right half: take the JA over the left half.
        out.push(insn(JGE_K, 0, 1, rs[mid].0));
        out.push(insn(JA, 0, 0, left.len() as u32));
        out.extend(left);
        emit(&rs[mid..], out);
    }
    if nrs.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    emit(&ranges(nrs), &mut out);
    let total = out.len();
    for (i, f) in out.iter_mut().enumerate() {
        if f.code == JA && f.k == u32::MAX {
            f.k = (total - i - 1) as u32;
        }
    }
    out
}
