//! `cargo xtask bench ipc`: round trips and bandwidth between two processes.
//!
//! Every row is measured in this one run, between a parent and a forked child,
//! pinned to different cores (rows without suffix) and to the same core
//! (`*_same_core`). Prints a table and the goals from issue 3, and writes
//! `target/bench/ipc.json` as `{"rows":[{"name","median_ns","p90_ns","min_ns"}]}`.
//!
//! Stable row names: `spin_floor_rtt`, `ring_spin_rtt`, `ring_futex_rtt`, `uds_rtt`,
//! `ring_throughput` (ns per frame), `tensor_1MiB_rtt`, `tensor_64MiB_rtt`,
//! `tensor_1GiB_rtt`, `memcpy_64MiB`; plus `ring_adaptive_rtt` (default spin
//! policy), the `_same_core` variants, `futex_floor_rtt` (bare futex ping-pong: what
//! any futex doorbell pays) and `uds_frame_rtt` (a socket carrying the ring's
//! encoded frames). `--only a,b` runs some rows; `--rounds N` repeats them
//! interleaved and pools the samples (A/B on a busy machine).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nodecell_ipc::{
    Arena, Call, Channel, ChannelConfig, DType, Frame, Limits, SpinPolicy, Value, WorkerFds,
};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Fewer iterations (a quick look; numbers are noisier).
    #[arg(long)]
    quick: bool,
    /// Skip the 1 GiB tensor row (needs ~1 GiB of memory).
    #[arg(long)]
    no_1gib: bool,
    /// Where to write the JSON (default target/bench/ipc.json).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Run even in a debug build (numbers will be meaningless).
    #[arg(long)]
    allow_debug: bool,
    /// Also chart the rows against their floors: ipc.svg next to the JSON
    /// (`cargo xtask bench plot ipc` redraws it).
    #[arg(long)]
    plot: bool,
    /// Run only these rows (comma-separated names; the goals then cover what ran).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Repeat the selected rows this many times, interleaved (A/B on a noisy machine);
    /// each row's samples of all rounds are pooled.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

#[derive(serde::Serialize, Clone)]
struct Row {
    name: String,
    median_ns: f64,
    p90_ns: f64,
    min_ns: f64,
}

fn row(name: &str, mut ns: Vec<f64>) -> Row {
    ns.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let at = |q: f64| ns[((ns.len() as f64 - 1.0) * q).round() as usize];
    Row {
        name: name.into(),
        median_ns: at(0.5),
        p90_ns: at(0.9),
        min_ns: ns[0],
    }
}

fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity(0) applies to this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

struct Child(i32);

impl Child {
    fn wait(self) -> Result<()> {
        let mut st = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(self.0, &mut st, 0) };
        std::mem::forget(self);
        if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 {
            Ok(())
        } else {
            bail!("bench child failed (status {st:#x})")
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: killing and reaping our own child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

/// Forks a child pinned to `cpu` that runs `f` and exits with its code.
fn fork_on(cpu: usize, f: impl FnOnce() -> i32) -> Child {
    // SAFETY: the bench is single-threaded when it forks; the child runs f and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: plain prctl in the child.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        pin(cpu);
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: leave the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    Child(pid)
}

struct Plan {
    rtt_iters: usize,
    futex_iters: usize,
    tput_frames: u64,
    tput_runs: usize,
    tensor_iters: usize,
}

/// A 4 KiB anonymous shared mapping (a child forked afterwards shares it), unmapped
/// when dropped: the two words the floor ping-pongs take turns on.
struct SharedPage(*mut libc::c_void);

/// The atomics [`SharedPage::words`] hands out: integers, valid as all-zero bytes.
trait Word {}
impl Word for AtomicU32 {}
impl Word for AtomicU64 {}

impl SharedPage {
    fn new() -> Result<SharedPage> {
        // SAFETY: a fresh anonymous shared mapping, 4 KiB, owned by the returned value.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mmap failed");
        }
        Ok(SharedPage(p))
    }

    /// Two atomics on separate cache lines (offsets 0 and 128), zero at first.
    fn words<T: Word>(&self) -> (&T, &T) {
        // SAFETY: page-aligned zeroed memory of 4 KiB holds two small atomic integers at
        // offsets 0 and 128; they live as long as this mapping, which `&self` borrows.
        unsafe {
            (
                &*(self.0 as *const T),
                &*((self.0 as *const u8).add(128) as *const T),
            )
        }
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped; nothing borrows it any more (in this process).
        unsafe { libc::munmap(self.0, 4096) };
    }
}

/// Shared-memory spin ping-pong: the floor. `yield_` on the same core.
fn spin_floor(host_cpu: usize, peer_cpu: usize, iters: usize, yield_: bool) -> Result<Vec<f64>> {
    let page = SharedPage::new()?;
    let (ping, pong) = page.words::<AtomicU64>();
    let child = fork_on(peer_cpu, || {
        for i in 1..=iters as u64 {
            while ping.load(Ordering::Acquire) != i {
                if yield_ {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            pong.store(i, Ordering::Release);
        }
        0
    });
    pin(host_cpu);
    let mut ns = Vec::with_capacity(iters);
    for i in 1..=iters as u64 {
        let t = Instant::now();
        ping.store(i, Ordering::Release);
        while pong.load(Ordering::Acquire) != i {
            if yield_ {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        ns.push(t.elapsed().as_nanos() as f64);
    }
    child.wait()?;
    Ok(ns)
}

/// `futex(2)` on a word of a shared mapping (never `FUTEX_PRIVATE_FLAG`: two processes).
/// No timeout: the child is killed with the bench (`PR_SET_PDEATHSIG`).
fn futex(word: &AtomicU32, op: i32, val: u32) {
    let null = std::ptr::null::<libc::timespec>();
    // SAFETY: word is a live aligned u32 in a mapping that outlives the call.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), op, val, null, 0usize, 0u32) };
}

/// The futex floor: two processes take turns on two futex words of a shared page,
/// each always sleeping (`FUTEX_WAIT`) and always waking
/// the other (`FUTEX_WAKE`); no spinning, no frames, no timeouts. What any futex
/// doorbell pays: the floor of `ring_futex_rtt`.
fn futex_floor(host_cpu: usize, peer_cpu: usize, iters: usize) -> Result<Vec<f64>> {
    let page = SharedPage::new()?;
    let (ping, pong) = page.words::<AtomicU32>();
    let child = fork_on(peer_cpu, || {
        for i in 1..=iters as u32 {
            loop {
                let v = ping.load(Ordering::Acquire);
                if v == i {
                    break;
                }
                futex(ping, libc::FUTEX_WAIT, v);
            }
            pong.store(i, Ordering::Release);
            futex(pong, libc::FUTEX_WAKE, 1);
        }
        0
    });
    pin(host_cpu);
    let mut ns = Vec::with_capacity(iters);
    for i in 1..=iters as u32 {
        let t = Instant::now();
        ping.store(i, Ordering::Release);
        futex(ping, libc::FUTEX_WAKE, 1);
        loop {
            let v = pong.load(Ordering::Acquire);
            if v == i {
                break;
            }
            futex(pong, libc::FUTEX_WAIT, v);
        }
        ns.push(t.elapsed().as_nanos() as f64);
    }
    child.wait()?;
    Ok(ns)
}

fn uds(host_cpu: usize, peer_cpu: usize, iters: usize) -> Result<Vec<f64>> {
    let (a, b) = UnixStream::pair()?;
    let braw = b.as_raw_fd();
    let child = fork_on(peer_cpu, move || {
        // SAFETY: the child owns its copy of b's descriptor.
        let mut b = unsafe { UnixStream::from_raw_fd(braw) };
        let mut buf = [0u8; 64];
        for _ in 0..iters {
            if b.read_exact(&mut buf).is_err() || b.write_all(&buf).is_err() {
                return 1;
            }
        }
        std::mem::forget(b);
        0
    });
    drop(b);
    pin(host_cpu);
    let mut a = a;
    let mut buf = [7u8; 64];
    let mut ns = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        a.write_all(&buf)?;
        a.read_exact(&mut buf)?;
        ns.push(t.elapsed().as_nanos() as f64);
    }
    child.wait()?;
    Ok(ns)
}

/// Writes one length-prefixed frame to a socket.
fn write_frame(s: &mut UnixStream, buf: &mut Vec<u8>, f: &Frame, lim: &Limits) -> Result<()> {
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    f.encode(buf, lim)?;
    let n = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&n.to_le_bytes());
    s.write_all(buf)?;
    Ok(())
}

/// Reads one length-prefixed frame from a socket (one `read` when it all came at
/// once, as a small frame does) and decodes it.
fn read_frame(s: &mut UnixStream, buf: &mut Vec<u8>, lim: &Limits) -> Result<Frame> {
    buf.resize(4096, 0);
    let mut have = 0;
    loop {
        if have >= 4 {
            let n = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize + 4;
            if buf.len() < n {
                buf.resize(n, 0);
            }
            if have >= n {
                return Ok(Frame::decode(&buf[4..n], lim)?.frame);
            }
        }
        let got = s.read(&mut buf[have..])?;
        if got == 0 {
            bail!("peer closed the socket");
        }
        have += got;
    }
}

/// `uds_rtt` carrying what `ring_futex_rtt` carries: the same call frame encoded,
/// length-prefixed, decoded by the peer, answered with an encoded reply frame and
/// decoded again (no channel bookkeeping). Beside the raw-bytes `uds_rtt`, it shows
/// how much of the ring's round trip is the frame work any transport would do.
fn uds_frame(host_cpu: usize, peer_cpu: usize, iters: usize) -> Result<Vec<f64>> {
    let (a, b) = UnixStream::pair()?;
    let braw = b.as_raw_fd();
    let lim = Limits::default();
    let child = fork_on(peer_cpu, move || {
        // SAFETY: the child owns its copy of b's descriptor.
        let mut b = unsafe { UnixStream::from_raw_fd(braw) };
        let (mut rb, mut wb) = (Vec::new(), Vec::new());
        for _ in 0..iters {
            let Ok(Frame::Call(c)) = read_frame(&mut b, &mut rb, &lim) else {
                return 1;
            };
            let value = c.args.into_iter().next().unwrap_or(Value::None);
            if write_frame(&mut b, &mut wb, &Frame::Reply { id: c.id, value }, &lim).is_err() {
                return 1;
            }
        }
        std::mem::forget(b);
        0
    });
    drop(b);
    pin(host_cpu);
    let mut a = a;
    let (mut rb, mut wb) = (Vec::new(), Vec::new());
    let mut ns = Vec::with_capacity(iters);
    for i in 0..iters {
        let f = Frame::Call(Call {
            id: i as u64 + 1,
            parent: None,
            target: 0,
            method: "f".into(),
            args: vec![Value::Int(i as i64)],
            kwargs: vec![],
            deadline_ns: 0,
        });
        let t = Instant::now();
        write_frame(&mut a, &mut wb, &f, &lim)?;
        let r = read_frame(&mut a, &mut rb, &lim)?;
        ns.push(t.elapsed().as_nanos() as f64);
        if !matches!(r, Frame::Reply { value: Value::Int(v), .. } if v == i as i64) {
            bail!("wrong reply {r:?}");
        }
    }
    child.wait()?;
    Ok(ns)
}

/// Starts a channel with a forked worker running `f`.
fn channel_pair(
    cfg: ChannelConfig,
    peer_cpu: usize,
    f: impl FnOnce(Channel) -> i32,
) -> Result<(Channel, Child)> {
    let (host, fds) = Channel::create(cfg.clone()).context("create channel")?;
    let (r, s) = fds.raw();
    let child = fork_on(peer_cpu, move || {
        let Ok(fds) = WorkerFds::from_raw(r, s) else {
            return 2;
        };
        match Channel::open(fds, cfg) {
            Ok(ch) => f(ch),
            Err(_) => 3,
        }
    });
    drop(fds);
    host.set_peer_pid(child.0)?;
    Ok((host, child))
}

fn cfg(spin: SpinPolicy) -> ChannelConfig {
    ChannelConfig {
        spin,
        ..ChannelConfig::default()
    }
}

/// Worker: answers every call with its first argument; "stop" ends.
fn echo(ch: Channel) -> i32 {
    loop {
        let Ok(f) = ch.recv(None) else { return 4 };
        if let Frame::Call(c) = f {
            if c.method == "stop" {
                let _ = ch.reply(c.id, Value::None);
                return 0;
            }
            let v = c.args.into_iter().next().unwrap_or(Value::None);
            if ch.reply(c.id, v).is_err() {
                return 5;
            }
        }
    }
}

fn small_call(ch: &Channel, i: i64) -> Frame {
    Frame::Call(Call {
        id: ch.next_call_id(),
        parent: None,
        target: 0,
        method: "f".into(),
        args: vec![Value::Int(i)],
        kwargs: vec![],
        deadline_ns: 0,
    })
}

fn stop(ch: &Channel, child: Child) -> Result<()> {
    let id = ch.send_call(0, "stop", vec![], vec![])?;
    let _ = ch.wait_reply(id, Some(Duration::from_secs(10)), &mut |_, _| Ok(()))?;
    child.wait()
}

/// Ring round trip with full frame encode/decode on both sides. `spin_wait`: the
/// host spins for the reply (recv_spin) instead of the channel's policy.
fn ring_rtt(
    host_cpu: usize,
    peer_cpu: usize,
    iters: usize,
    policy: SpinPolicy,
    spin_wait: bool,
) -> Result<Vec<f64>> {
    let (ch, child) = channel_pair(cfg(policy), peer_cpu, echo)?;
    pin(host_cpu);
    let mut ns = Vec::with_capacity(iters);
    for i in 0..iters + iters / 10 {
        let f = small_call(&ch, i as i64);
        let t = Instant::now();
        ch.send(&f)?;
        let r = if spin_wait {
            loop {
                if let Some(r) = ch.recv_spin(Duration::from_secs(1))? {
                    break r;
                }
            }
        } else {
            ch.recv(Some(Duration::from_secs(10)))?
        };
        let el = t.elapsed().as_nanos() as f64;
        if !matches!(r, Frame::Reply { value: Value::Int(v), .. } if v == i as i64) {
            bail!("wrong reply {r:?}");
        }
        if i >= iters / 10 {
            ns.push(el); // the first 10% warm up
        }
    }
    stop(&ch, child)?;
    Ok(ns)
}

/// Pipelined frames/s: the worker sends `n` small reply frames back to back (as for
/// `n` pipelined calls); ns per frame, each fully encoded and decoded.
fn throughput(host_cpu: usize, peer_cpu: usize, n: u64, runs: usize) -> Result<Vec<f64>> {
    let (ch, child) = channel_pair(
        cfg(SpinPolicy::Fixed(Duration::from_millis(100))),
        peer_cpu,
        move |ch| loop {
            let Ok(f) = ch.recv(None) else { return 4 };
            let Frame::Call(c) = f else { continue };
            if c.method == "stop" {
                let _ = ch.reply(c.id, Value::None);
                return 0;
            }
            for i in 0..n {
                let f = Frame::Reply {
                    id: i + 1,
                    value: Value::Int(i as i64),
                };
                if ch.send(&f).is_err() {
                    return 5;
                }
            }
        },
    )?;
    pin(host_cpu);
    let mut ns = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        ch.send(&small_call(&ch, 0))?;
        let mut got = 0u64;
        while got < n {
            match ch.recv_spin(Duration::from_millis(100))? {
                Some(Frame::Reply { id, .. }) if id == got + 1 => got += 1,
                Some(f) => bail!("out of order: {f:?} after {got}"),
                None => {}
            }
        }
        ns.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    stop(&ch, child)?;
    Ok(ns)
}

/// Tensor hand-off: share a descriptor, the worker maps it, touches the first and
/// last byte, releases it and replies; spin mode.
fn tensor_rtt(host_cpu: usize, peer_cpu: usize, len: usize, iters: usize) -> Result<Vec<f64>> {
    let arena = Arena::create(len).context("create arena")?;
    arena.write(0, &[1])?;
    arena.write(len - 1, &[2])?;
    arena.seal_read_only()?;
    let (ch, child) = channel_pair(
        cfg(SpinPolicy::Fixed(Duration::from_secs(1))),
        peer_cpu,
        |ch| loop {
            let Ok(f) = ch.recv(None) else { return 4 };
            let Frame::Call(c) = f else { continue };
            if c.method == "stop" {
                let _ = ch.reply(c.id, Value::None);
                return 0;
            }
            let Some(Value::Tensor(d)) = c.args.first() else {
                return 6;
            };
            let Ok(view) = ch.import(d) else { return 7 };
            let (mut a, mut b) = ([0u8], [0u8]);
            view.read(0, &mut a);
            view.read(view.len() - 1, &mut b);
            drop(view);
            if ch.release(d).is_err()
                || ch
                    .reply(c.id, Value::Int(i64::from(a[0]) + i64::from(b[0])))
                    .is_err()
            {
                return 8;
            }
        },
    )?;
    pin(host_cpu);
    let arena = Arc::clone(&arena);
    let mut ns = Vec::with_capacity(iters);
    for i in 0..iters + 5 {
        let t = Instant::now();
        let d = ch.share_tensor(&arena, 0, DType::U8, &[len as u64], None)?;
        ch.send(&Frame::Call(Call {
            id: ch.next_call_id(),
            parent: None,
            target: 0,
            method: "t".into(),
            args: vec![Value::Tensor(Box::new(d))],
            kwargs: vec![],
            deadline_ns: 0,
        }))?;
        let r = loop {
            if let Some(r) = ch.recv_spin(Duration::from_secs(1))? {
                break r;
            }
        };
        let el = t.elapsed().as_nanos() as f64;
        if !matches!(
            r,
            Frame::Reply {
                value: Value::Int(3),
                ..
            }
        ) {
            bail!("wrong tensor reply {r:?}");
        }
        if i >= 5 {
            ns.push(el);
        }
    }
    stop(&ch, child)?;
    Ok(ns)
}

fn memcpy(len: usize, runs: usize) -> Vec<f64> {
    let src: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let mut dst = vec![1u8; len];
    let mut ns = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        ns.push(t.elapsed().as_nanos() as f64);
    }
    ns
}

/// Entry point.
pub fn main(args: Args) -> Result<()> {
    if cfg!(debug_assertions) && !args.allow_debug {
        // Timing a debug build is meaningless: re-run this command from a release build.
        eprintln!("bench ipc: re-running as a release build (cargo run --release -p xtask)");
        let mut cmd =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "xtask",
            "--",
            "bench",
            "ipc",
        ]);
        if args.quick {
            cmd.arg("--quick");
        }
        if args.no_1gib {
            cmd.arg("--no-1gib");
        }
        if let Some(o) = &args.out {
            cmd.arg("--out").arg(o);
        }
        if args.plot {
            cmd.arg("--plot");
        }
        if !args.only.is_empty() {
            cmd.arg("--only").arg(args.only.join(","));
        }
        cmd.arg("--rounds").arg(args.rounds.to_string());
        let st = cmd.status().context("running the release build")?;
        if !st.success() {
            bail!("release bench failed: {st}");
        }
        return Ok(());
    }
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (a, b) = (0, if ncpu > 1 { 1 } else { 0 });
    if a == b {
        eprintln!("only one CPU: the cross-core rows run on one core");
    }
    let plan = if args.quick {
        Plan {
            rtt_iters: 20_000,
            futex_iters: 2_000,
            tput_frames: 1_000_000,
            tput_runs: 3,
            tensor_iters: 200,
        }
    } else {
        Plan {
            rtt_iters: 200_000,
            futex_iters: 20_000,
            tput_frames: 5_000_000,
            tput_runs: 7,
            tensor_iters: 2_000,
        }
    };
    eprintln!("bench ipc: host on cpu {a}, peer on cpu {b} (and both on cpu {a} for *_same_core)");
    let rtt = plan.rtt_iters;
    let fut = plan.futex_iters;
    let never = SpinPolicy::Never;
    type Bench<'p> = Box<dyn Fn() -> Result<Vec<f64>> + 'p>;
    let mut table: Vec<(&str, Bench)> = vec![
        ("spin_floor_rtt", Box::new(|| spin_floor(a, b, rtt, false))),
        (
            "ring_spin_rtt",
            Box::new(|| ring_rtt(a, b, rtt, SpinPolicy::Fixed(Duration::from_secs(1)), true)),
        ),
        ("futex_floor_rtt", Box::new(|| futex_floor(a, b, fut))),
        (
            "ring_futex_rtt",
            Box::new(|| ring_rtt(a, b, fut, never, false)),
        ),
        (
            "ring_adaptive_rtt",
            Box::new(|| ring_rtt(a, b, fut, SpinPolicy::default(), false)),
        ),
        ("uds_rtt", Box::new(|| uds(a, b, fut))),
        ("uds_frame_rtt", Box::new(|| uds_frame(a, b, fut))),
        (
            "ring_throughput",
            Box::new(|| throughput(a, b, plan.tput_frames, plan.tput_runs)),
        ),
        (
            "tensor_1MiB_rtt",
            Box::new(|| tensor_rtt(a, b, 1 << 20, plan.tensor_iters)),
        ),
        (
            "tensor_64MiB_rtt",
            Box::new(|| tensor_rtt(a, b, 64 << 20, plan.tensor_iters)),
        ),
    ];
    if !args.no_1gib {
        table.push((
            "tensor_1GiB_rtt",
            Box::new(|| tensor_rtt(a, b, 1 << 30, plan.tensor_iters)),
        ));
    }
    table.extend::<Vec<(&str, Bench)>>(vec![
        ("memcpy_64MiB", Box::new(|| Ok(memcpy(64 << 20, 30)))),
        (
            "spin_floor_rtt_same_core",
            Box::new(|| spin_floor(a, a, fut, true)),
        ),
        (
            "ring_adaptive_rtt_same_core",
            Box::new(|| ring_rtt(a, a, fut, SpinPolicy::default(), false)),
        ),
        (
            "ring_futex_rtt_same_core",
            Box::new(|| ring_rtt(a, a, fut, never, false)),
        ),
        ("uds_rtt_same_core", Box::new(|| uds(a, a, fut))),
        (
            "ring_throughput_same_core",
            Box::new(|| throughput(a, a, plan.tput_frames / 5, plan.tput_runs)),
        ),
    ]);
    for o in &args.only {
        if !table.iter().any(|(n, _)| n == o) {
            bail!("--only: no row named {o:?}");
        }
    }
    table.retain(|(n, _)| args.only.is_empty() || args.only.iter().any(|o| o == n));
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); table.len()];
    for round in 0..args.rounds.max(1) {
        for ((name, f), acc) in table.iter().zip(samples.iter_mut()) {
            let ns = f()?;
            let r = row(name, ns.clone());
            eprintln!(
                "  {:<28} median {:>12.0} ns{}",
                r.name,
                r.median_ns,
                if args.rounds > 1 {
                    format!("  (round {})", round + 1)
                } else {
                    String::new()
                }
            );
            acc.extend(ns);
        }
    }
    let rows: Vec<Row> = table
        .iter()
        .zip(samples)
        .map(|((name, _), ns)| row(name, ns))
        .collect();
    drop(table);

    println!(
        "\n{:<28} {:>12} {:>12} {:>12}",
        "row", "median_ns", "p90_ns", "min_ns"
    );
    for r in &rows {
        println!(
            "{:<28} {:>12.0} {:>12.0} {:>12.0}",
            r.name, r.median_ns, r.p90_ns, r.min_ns
        );
    }
    let get = |n: &str| rows.iter().find(|r| r.name == n).map(|r| r.median_ns);
    println!("\ngoals (issue 3), medians:");
    let goal = |what: &str, ok: Option<bool>, detail: String| {
        let mark = match ok {
            Some(true) => "MET ",
            Some(false) => "MISS",
            None => "SKIP",
        };
        println!("  [{mark}] {what}: {detail}");
    };
    if let (Some(r), Some(f)) = (get("ring_spin_rtt"), get("spin_floor_rtt")) {
        goal(
            "ring_spin_rtt <= 3x spin_floor_rtt",
            Some(r <= 3.0 * f),
            format!("{:.2}x ({r:.0} vs {f:.0} ns)", r / f),
        );
    }
    if let (Some(r), Some(u)) = (get("ring_futex_rtt"), get("uds_rtt")) {
        goal(
            "ring_futex_rtt <= uds_rtt",
            Some(r <= u),
            format!("{r:.0} vs {u:.0} ns ({:.2}x)", r / u),
        );
    }
    if let (Some(f), Some(u)) = (get("futex_floor_rtt"), get("uds_rtt")) {
        println!(
            "  [info] futex_floor_rtt vs uds_rtt: {:.2}x (the two wake-ups alone, no frames: the least any futex doorbell pays)",
            f / u
        );
    }
    if let (Some(r), Some(f)) = (get("ring_futex_rtt"), get("futex_floor_rtt")) {
        println!(
            "  [info] ring_futex_rtt - futex_floor_rtt: {:+.0} ns (frames and channel work between the wake-ups)",
            r - f
        );
    }
    if let (Some(r), Some(u)) = (get("ring_futex_rtt"), get("uds_frame_rtt")) {
        println!(
            "  [info] ring_futex_rtt vs uds_frame_rtt (a socket carrying the same frames): {:.2}x",
            r / u
        );
    }
    match (get("tensor_1GiB_rtt"), get("tensor_1MiB_rtt")) {
        (Some(g), Some(m)) => goal(
            "tensor_1GiB_rtt <= 2x tensor_1MiB_rtt",
            Some(g <= 2.0 * m),
            format!("{:.2}x ({g:.0} vs {m:.0} ns)", g / m),
        ),
        _ => goal(
            "tensor_1GiB_rtt <= 2x tensor_1MiB_rtt",
            None,
            "1 GiB row skipped".into(),
        ),
    }
    if let (Some(c), Some(t)) = (get("memcpy_64MiB"), get("tensor_64MiB_rtt")) {
        goal(
            "tensor_64MiB_rtt >= 100x faster than memcpy_64MiB",
            Some(c / t >= 100.0),
            format!("{:.0}x ({t:.0} vs {c:.0} ns)", c / t),
        );
    }
    if let Some(t) = get("ring_throughput") {
        let fps = 1e9 / t;
        goal(
            "ring_throughput >= 5M frames/s",
            Some(fps >= 5e6),
            format!("{:.2}M frames/s ({t:.0} ns/frame)", fps / 1e6),
        );
    }
    let out = args.out.unwrap_or_else(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default();
        root.join("target/bench/ipc.json")
    });
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&serde_json::json!({ "rows": rows }))?,
    )?;
    println!("\nwrote {}", out.display());
    if args.plot {
        crate::bench_plot::plot_file("ipc", &out, &out.with_file_name("ipc.svg"))?;
    }
    Ok(())
}
