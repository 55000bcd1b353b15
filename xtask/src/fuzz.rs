//! `cargo xtask fuzz ipc --runs N`: the cargo-fuzz targets in `ipc/fuzz/`.
//!
//! * `frame_decode`: arbitrary bytes into `Frame::decode` and `Value::decode`
//!   (never a panic; whatever decodes re-encodes to the same bytes).
//! * `tensor_desc`: arbitrary bytes into `TensorDesc::decode` + `validate_in`
//!   (whatever validates addresses only bytes inside the arena, checked in u128).
//!
//! Only the stable toolchain exists here: `RUSTC_BOOTSTRAP=1` lets cargo-fuzz's
//! nightly flags (`-Zsanitizer=address`) work. cargo-fuzz is installed with
//! `cargo install cargo-fuzz --locked` when missing. Seeds (valid frames) are
//! written to `ipc/fuzz/corpus/<target>/` first. Not run in CI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use nodecell_ipc::{
    Call, DType, ErrorValue, Frame, HandleKind, Limits, Record, Release, RemoteHandle, Side,
    TensorDesc, Value,
};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// What to fuzz (only `ipc` exists).
    what: String,
    /// Runs per target.
    #[arg(long, default_value_t = 10_000_000)]
    runs: u64,
    /// Only this target (`frame_decode` or `tensor_desc`); default both.
    #[arg(long)]
    target: Option<String>,
    /// Largest input in bytes.
    #[arg(long, default_value_t = 4096)]
    max_len: usize,
}

const TARGETS: [&str; 2] = ["frame_decode", "tensor_desc"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn ensure_cargo_fuzz() -> Result<()> {
    let ok = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Ok(());
    }
    eprintln!("fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    let st = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()?;
    if !st.success() {
        bail!("cargo install cargo-fuzz failed");
    }
    Ok(())
}

fn seeds() -> Vec<Vec<u8>> {
    let t = TensorDesc::contiguous(3, 128, DType::F32, &[2, 3, 4]).expect("valid");
    let value = Value::Dict(vec![
        (
            Value::Str("k".into()),
            Value::List(vec![
                Value::Int(-1),
                Value::Float(0.5),
                Value::None,
                Value::Bool(true),
            ]),
        ),
        (
            Value::Tuple(vec![]),
            Value::Set(vec![
                Value::Bytes(vec![1, 2, 3]),
                Value::BigInt("-98765432109876543210".into()),
            ]),
        ),
        (Value::Int(1), Value::Tensor(Box::new(t))),
        (
            Value::Handle(RemoteHandle {
                id: 5,
                owner: Side::Worker,
                kind: HandleKind::Callable,
            }),
            Value::Record(Box::new(Record {
                name: "pkg.Point".into(),
                fields: vec![("x".into(), Value::Int(1))],
            })),
        ),
        (
            Value::None,
            Value::Error(Box::new(ErrorValue {
                type_name: "E".into(),
                message: "m".into(),
                traceback: "t".into(),
            })),
        ),
    ]);
    let frames = [
        Frame::Call(Call {
            id: 1,
            parent: None,
            target: 0,
            method: "run".into(),
            args: vec![value.clone()],
            kwargs: vec![("x".into(), Value::Int(2))],
            deadline_ns: 5,
        }),
        Frame::Call(Call {
            id: 2,
            parent: Some(1),
            target: 9,
            method: "cb".into(),
            args: vec![],
            kwargs: vec![],
            deadline_ns: 0,
        }),
        Frame::Reply { id: 1, value },
        Frame::Error {
            id: 1,
            error: ErrorValue {
                type_name: "ValueError".into(),
                message: "bad".into(),
                traceback: "tb".into(),
            },
        },
        Frame::Cancel { id: 3 },
        Frame::Release(Release {
            handles: vec![1],
            tensors: vec![(2, 3)],
            retired: vec![4],
        }),
        Frame::Log {
            level: nodecell_ipc::LogLevel::Info,
            logger: "l".into(),
            message: "m".into(),
        },
        Frame::Heartbeat {
            seq: 1,
            monotonic_ns: 2,
        },
    ];
    frames
        .iter()
        .map(|f| {
            let mut b = Vec::new();
            f.encode(&mut b, &Limits::default()).expect("seed encodes");
            b
        })
        .collect()
}

fn tensor_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (size, d) in [
        (
            1u64 << 20,
            TensorDesc::contiguous(1, 0, DType::U8, &[1024]).expect("valid"),
        ),
        (
            1 << 30,
            TensorDesc::contiguous(2, 4096, DType::BF16, &[8, 16, 32]).expect("valid"),
        ),
        (
            4096,
            TensorDesc::contiguous(3, 0, DType::F64, &[0, 7]).expect("valid"),
        ),
    ] {
        let mut b = size.to_le_bytes().to_vec();
        d.encode(&mut b);
        out.push(b);
    }
    out
}

/// Entry point.
pub fn main(args: Args) -> Result<()> {
    if args.what != "ipc" {
        bail!("unknown fuzz target set {:?} (only `ipc`)", args.what);
    }
    ensure_cargo_fuzz()?;
    let ipc = repo_root().join("ipc");
    let targets: Vec<&str> = match &args.target {
        Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => bail!("unknown target {t:?}; have {TARGETS:?}"),
        None => TARGETS.to_vec(),
    };
    let mut summary = Vec::new();
    for t in targets {
        let corpus = ipc.join("fuzz/corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        let s = if t == "frame_decode" {
            seeds()
        } else {
            tensor_seeds()
        };
        for (i, b) in s.iter().enumerate() {
            std::fs::write(corpus.join(format!("seed-{i}")), b)?;
        }
        eprintln!("fuzz: {t}: {} runs", args.runs);
        let t0 = Instant::now();
        let st = Command::new("cargo")
            .current_dir(&ipc)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", t, "--release", "--"])
            .arg(format!("-runs={}", args.runs))
            .arg(format!("-max_len={}", args.max_len))
            .arg("-print_final_stats=1")
            .status()
            .with_context(|| format!("running cargo fuzz run {t}"))?;
        let secs = t0.elapsed().as_secs_f64();
        if !st.success() {
            bail!(
                "fuzz target {t} found a failure (see ipc/fuzz/artifacts/{t}/), after {secs:.0} s"
            );
        }
        summary.push(format!("{t}: {} runs clean in {secs:.0} s", args.runs));
    }
    println!("\nfuzz ipc:");
    for s in summary {
        println!("  {s}");
    }
    Ok(())
}
