//! With the `launcher` feature (maturin turns it on, see `pyproject.toml`),
//! builds the `nodecell` launcher binary — the workspace's root package — and
//! leaves it at `$OUT_DIR/bin/nodecell`, where the wheel's `from = "out-dir"`
//! include picks it up. Without the feature this script does nothing, so
//! `cargo build`/`cargo test`/`cargo clippy` of the workspace never pay for it.
//!
//! The launcher starts one sandbox per pack. It is linked statically
//! (`-C target-feature=+crt-static`): a dynamically linked Rust binary spends a
//! large part of each launch in the loader and libgcc_s's start-up (`cargo xtask
//! bench launch --static`), and a static one runs on any glibc. Where the
//! static C library is missing (no `libc6-dev`), it falls back to a dynamic
//! build and says so with a cargo warning.
//!
//! A release launcher is built without debug info and stripped (48 MB -> 5 MB
//! here), in its own target directory (`<target>/launcher`): the nested cargo
//! cannot share the outer build's, whose lock the outer build holds.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NODECELL_LAUNCHER_DYNAMIC");
    if env::var_os("CARGO_FEATURE_LAUNCHER").is_none() {
        return;
    }
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("pyshim/ has a parent folder")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target = env::var("TARGET").expect("TARGET");
    let release = env::var("PROFILE").as_deref() == Ok("release");

    // Everything the launcher is built from: rebuild it when any of it changes
    // (the root package and every workspace crate: each folder with a Cargo.toml).
    for p in ["Cargo.toml", "Cargo.lock", "src"] {
        println!("cargo:rerun-if-changed={}", workspace.join(p).display());
    }
    let crates = std::fs::read_dir(&workspace)
        .unwrap_or_else(|e| panic!("reading {}: {e}", workspace.display()));
    for entry in crates.flatten() {
        let dir = entry.path();
        if dir != manifest_dir && dir.join("Cargo.toml").is_file() {
            println!("cargo:rerun-if-changed={}", dir.display());
        }
    }

    let target_dir = launcher_target_dir(&out_dir, &target);
    let want_static = env::var_os("NODECELL_LAUNCHER_DYNAMIC").is_none();
    let built = if want_static {
        match cargo_build(&workspace, &target_dir, &target, release, true) {
            Ok(p) => p,
            Err(e) => {
                println!(
                    "cargo:warning=the statically linked launcher did not build ({e}); \
                     shipping a dynamically linked one (install the static C library, \
                     e.g. Debian's libc6-dev, for the faster launcher)"
                );
                cargo_build(&workspace, &target_dir, &target, release, false)
                    .unwrap_or_else(|e| panic!("building the nodecell launcher failed: {e}"))
            }
        }
    } else {
        cargo_build(&workspace, &target_dir, &target, release, false)
            .unwrap_or_else(|e| panic!("building the nodecell launcher failed: {e}"))
    };

    let bin_dir = out_dir.join("bin");
    std::fs::create_dir_all(&bin_dir)
        .unwrap_or_else(|e| panic!("creating {}: {e}", bin_dir.display()));
    let dest = bin_dir.join("nodecell");
    let _ = std::fs::remove_file(&dest);
    std::fs::copy(&built, &dest)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", built.display(), dest.display()));
}

/// `<target>/launcher` next to the outer build's profile folder, found from
/// `OUT_DIR` (`<target>[/<triple>]/<profile>/build/<pkg>-<hash>/out`); a folder
/// inside `OUT_DIR` when that layout is not recognised.
fn launcher_target_dir(out_dir: &Path, triple: &str) -> PathBuf {
    let profile_dir = out_dir
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(Path::parent);
    let root = profile_dir.and_then(Path::parent).map(|p| {
        if p.file_name().is_some_and(|n| n == triple) {
            p.parent().unwrap_or(p)
        } else {
            p
        }
    });
    match root {
        Some(r) => r.join("launcher"),
        None => out_dir.join("launcher-target"),
    }
}

/// Runs `cargo build -p nodecell --bin nodecell` for `triple`; returns the binary's path.
fn cargo_build(
    workspace: &Path,
    target_dir: &Path,
    triple: &str,
    release: bool,
    static_crt: bool,
) -> Result<PathBuf, String> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "build", "-p", "nodecell", "--bin", "nodecell", "--target", triple,
        ])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    if release {
        cmd.arg("--release")
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_RELEASE_STRIP", "symbols");
    }
    // The outer build's flags are for a cdylib; the launcher gets its own.
    for v in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(v);
    }
    if static_crt {
        cmd.env("RUSTFLAGS", "-C target-feature=+crt-static");
    }
    // stdout carries this script's `cargo:` directives: the nested build's goes to stderr.
    let status = cmd
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build exited with {status}"));
    }
    let profile = if release { "release" } else { "debug" };
    let bin = target_dir.join(triple).join(profile).join("nodecell");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "cargo reported success but {} is missing",
            bin.display()
        ))
    }
}
