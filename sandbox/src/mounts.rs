//! The mount wall: a fresh tmpfs root holding read-only binds of the system
//! directories, a few generated or bound `/etc` files, the caller's `--ro`
//! and `--rw` binds, a private size-capped `/tmp`, a new `/proc`, a minimal
//! `/dev` (no host `/dev/shm`), then `pivot_root` and detach the host root.
//! Every mount is `nosuid` and `nodev` except the device node binds of
//! `/dev` (and the GPU nodes with `--gpu`), which keep device access.
//!
//! [`MountPlan::new`] decides everything from the policy (pure, run by the
//! launcher before `clone`); [`MountPlan::apply`] performs it inside the new
//! mount namespace, after the credentials changed, so every host path is
//! opened with the worker's own permissions.

use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use crate::policy::Policy;
use crate::sys::{self, mount_attr};

/// Where the new root's tmpfs is mounted before `pivot_root`. Bind sources
/// are opened (`O_PATH`) before this mount hides anything under it.
const SCRATCH: &str = "/tmp";

/// System directories bound read-only (or recreated as symlinks when they
/// are symlinks on the host, as on merged-/usr systems).
const SYSTEM_DIRS: [&str; 7] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// Host `/etc` entries every sandbox sees (when they exist): the dynamic
/// loader's cache, the alternatives symlinks some `/usr/bin` entries point
/// through, and the time zone. (`passwd`, `group`, `hosts` and
/// `nsswitch.conf` are generated instead of bound and the hostname is set in
/// the UTS namespace: no host account or host name leaks in.) Each bind costs
/// a few tens of microseconds of launch time, so the list stays short.
const ETC_ALWAYS: [&str; 4] = ["ld.so.cache", "alternatives", "localtime", "os-release"];

/// Host `/etc` entries only bound with `--net`: name resolution and TLS
/// trust stores.
const ETC_NET: [&str; 9] = [
    "resolv.conf",
    "hosts",
    "host.conf",
    "gai.conf",
    "services",
    "protocols",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
];

/// Device nodes of every sandbox.
const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];

/// `/proc` entries covered with read-only binds of themselves (the worker
/// cannot write them anyway: they belong to host root; this is depth).
const PROC_READ_ONLY: [&str; 2] = ["sys", "sysrq-trigger"];

/// How a path may be used inside; also drives the Landlock rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and execute.
    ReadExec,
    /// Read only (no exec).
    Read,
    /// Read and write, no exec.
    ReadWrite,
    /// Device nodes: read, write, ioctl.
    Device,
    /// List directories only (the root: `ls /` works, nothing else).
    List,
}

/// One entry of the new root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Bind host `src` at `dst`.
    Bind {
        /// Host path.
        src: PathBuf,
        /// Path inside.
        dst: PathBuf,
        /// Directory (true) or file-like (false).
        dir: bool,
        /// How it may be used.
        access: Access,
        /// Came from `--ro`/`--rw` (errors name the flag).
        flag: Option<&'static str>,
    },
    /// A symlink inside (e.g. `/bin -> usr/bin`).
    Symlink {
        /// Path inside.
        path: PathBuf,
        /// Link text.
        target: PathBuf,
    },
    /// An `--overlay`: its lower folder seen at `dst`, writes in its state.
    Overlay(crate::overlay::Overlay),
    /// A small generated file (`/etc/passwd`, `/etc/hosts`, ...).
    File {
        /// Path inside.
        path: PathBuf,
        /// Its text.
        text: String,
    },
}

/// Everything the mount wall will do, decided before `clone`.
#[derive(Debug, Clone)]
pub struct MountPlan {
    /// Entries in mount order (parents before children).
    pub entries: Vec<Entry>,
    /// Size of the private `/tmp` and `/dev/shm` tmpfs.
    pub tmp_size: u64,
    /// Bind `/sys` read-only (GPU).
    pub sys: bool,
}

impl MountPlan {
    /// Builds the plan for `policy`. `uid`/`gid` are the worker's ids (for
    /// the generated `/etc/passwd`). Host paths are only `lstat`ed here.
    pub fn new(policy: &Policy, uid: u32, gid: u32) -> MountPlan {
        let mut entries = Vec::new();
        for dir in SYSTEM_DIRS {
            let p = Path::new(dir);
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(p) {
                        entries.push(Entry::Symlink {
                            path: p.to_path_buf(),
                            target,
                        });
                    }
                }
                Ok(m) if m.is_dir() => entries.push(Entry::Bind {
                    src: p.to_path_buf(),
                    dst: p.to_path_buf(),
                    dir: true,
                    access: Access::ReadExec,
                    flag: None,
                }),
                _ => {}
            }
        }

        let etc = Path::new("/etc");
        let mut etc_names: Vec<String> = ETC_ALWAYS.iter().map(|s| s.to_string()).collect();
        if policy.net {
            etc_names.extend(ETC_NET.iter().map(|s| s.to_string()));
        }
        for name in etc_names {
            let host = etc.join(&name);
            let Ok(meta) = std::fs::symlink_metadata(&host) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let (Ok(text), Ok(real)) =
                    (std::fs::read_link(&host), std::fs::canonicalize(&host))
                else {
                    continue;
                };
                if real.starts_with("/usr/") {
                    // Resolves inside the sandbox too.
                    entries.push(Entry::Symlink {
                        path: host,
                        target: text,
                    });
                    continue;
                }
                let dir = real.is_dir();
                entries.push(Entry::Bind {
                    src: real,
                    dst: host,
                    dir,
                    access: Access::Read,
                    flag: None,
                });
            } else {
                entries.push(Entry::Bind {
                    src: host.clone(),
                    dst: host,
                    dir: meta.is_dir(),
                    access: Access::Read,
                    flag: None,
                });
            }
        }
        for (path, text) in generated_etc(policy.net, uid, gid) {
            entries.push(Entry::File {
                path: PathBuf::from(path),
                text,
            });
        }

        // The caller's binds, parents first so nested binds land on top.
        let mut user: Vec<(usize, Entry)> = Vec::new();
        for (flag, binds, access) in [
            ("--ro", &policy.ro, Access::ReadExec),
            ("--rw", &policy.rw, Access::ReadWrite),
        ] {
            for b in binds {
                let dir = std::fs::metadata(&b.src)
                    .map(|m| m.is_dir())
                    .unwrap_or(true);
                let depth = b.dst.components().count();
                user.push((
                    depth,
                    Entry::Bind {
                        src: b.src.clone(),
                        dst: b.dst.clone(),
                        dir,
                        access,
                        flag: Some(flag),
                    },
                ));
            }
        }
        for o in &policy.overlay {
            user.push((o.dst.components().count(), Entry::Overlay(o.clone())));
        }
        user.sort_by_key(|(depth, _)| *depth);
        entries.extend(user.into_iter().map(|(_, e)| e));

        if policy.gpu {
            for dev in gpu_devices() {
                entries.push(Entry::Bind {
                    src: dev.clone(),
                    dst: dev,
                    dir: false,
                    access: Access::Device,
                    flag: None,
                });
            }
        }

        MountPlan {
            entries,
            tmp_size: policy.tmp_size,
            sys: policy.gpu,
        }
    }

    /// The paths (inside) and how they may be used, for Landlock.
    pub fn access_rules(&self) -> Vec<(PathBuf, Access, bool)> {
        let mut rules = vec![
            (PathBuf::from("/"), Access::List, true),
            (PathBuf::from("/etc"), Access::Read, true),
            (PathBuf::from("/proc"), Access::Read, true),
            (PathBuf::from("/tmp"), Access::ReadWrite, true),
            (PathBuf::from("/dev/shm"), Access::ReadWrite, true),
        ];
        // One rule for the device nodes: /dev is a read-only tmpfs holding
        // only them (and the symlinks and /dev/shm), so nothing else can
        // appear beneath it.
        rules.push((PathBuf::from("/dev"), Access::Device, true));
        if self.sys {
            rules.push((PathBuf::from("/sys"), Access::Read, true));
        }
        for e in &self.entries {
            if let Entry::Bind {
                dst,
                dir,
                access,
                flag,
                ..
            } = e
            {
                // System /etc entries are already covered by the /etc rule.
                if flag.is_some() || !dst.starts_with("/etc") {
                    rules.push((dst.clone(), *access, *dir));
                }
            }
            // Read and write, never execve (mmap of the pack's own native
            // libraries stays possible: the mount is not noexec).
            if let Entry::Overlay(o) = e {
                rules.push((o.dst.clone(), Access::ReadWrite, true));
            }
        }
        rules
    }

    /// Number of `--overlay` mounts.
    pub fn overlays(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e, Entry::Overlay(_)))
            .count()
    }

    /// Number of `--ro`/`--rw` binds.
    pub fn user_binds(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e, Entry::Bind { flag: Some(_), .. }))
            .count()
    }

    /// Builds the new root and pivots into it. Runs inside the new mount
    /// namespace with the worker's credentials and the namespace's
    /// capabilities. Returns, per `--overlay`, what was mounted or (when not
    /// `required`) why the lower folder was bound read-only instead; in
    /// `required` mode an overlay that cannot be mounted is
    /// [`MountError::Overlay`].
    pub fn apply(&self, required: bool) -> Result<Vec<Result<String, String>>, MountError> {
        // Nothing we do here may propagate back to the host.
        sys::mount(
            None,
            Path::new("/"),
            None,
            libc::MS_SLAVE | libc::MS_REC,
            None,
        )
        .map_err(|e| MountError::step("make / a slave mount", e))?;

        // Open every bind source now, before the scratch tmpfs hides paths
        // under /tmp, and with the worker's permissions.
        let mut sources: Vec<Option<RawFd>> = Vec::with_capacity(self.entries.len());
        let guard = FdGuard(&mut sources);
        for e in &self.entries {
            match e {
                Entry::Bind { src, flag, dst, .. } => match sys::open_path(src) {
                    Ok(fd) => guard.0.push(Some(fd)),
                    Err(source) => {
                        return Err(MountError::Source {
                            what: describe(*flag, src, dst),
                            source,
                        });
                    }
                },
                _ => guard.0.push(None),
            }
        }
        // Overlays: lower, upper, work.
        let mut ovfds = Vec::new();
        for e in &self.entries {
            if let Entry::Overlay(o) = e {
                for p in [o.lower.clone(), o.upper(), o.work()] {
                    let fd = sys::open_path(&p).map_err(|source| MountError::Source {
                        what: format!("--overlay {}", p.display()),
                        source,
                    })?;
                    ovfds.push(fd);
                }
            }
        }
        let ovfds = FdList(ovfds);
        let mut devices = Vec::new();
        for d in DEVICES {
            let host = Path::new("/dev").join(d);
            let fd = sys::open_path(&host).map_err(|source| MountError::Source {
                what: host.display().to_string(),
                source,
            })?;
            devices.push(fd);
        }
        let devices = FdList(devices);
        let sys_fd = if self.sys {
            Some(FdList(vec![sys::open_path(Path::new("/sys")).map_err(
                |source| MountError::Source {
                    what: "/sys".into(),
                    source,
                },
            )?]))
        } else {
            None
        };

        let root = Path::new(SCRATCH);
        tmpfs(root, "mode=0755,size=4m", libc::MS_NOSUID | libc::MS_NODEV)?;

        // Phase 1, while the root tmpfs is writable: the skeleton, /dev,
        // the system binds and generated files, and every mount point the
        // caller's binds will need in the root. Mount points are only ever
        // created in the sandbox's own tmpfs: inside any bind they must
        // already exist (we never create files on the host).
        let mut binds_so_far: Vec<PathBuf> = Vec::new();
        for d in ["etc", "tmp", "proc", "dev", "dev/shm"] {
            mkdir(&root.join(d))?;
        }
        if self.sys {
            mkdir(&root.join("sys"))?;
        }
        self.build_dev(root, &devices)?;
        drop(devices);
        for (e, fd) in self.entries.iter().zip(guard.0.iter()) {
            match e {
                Entry::Symlink { path, target } => {
                    let at = inside(root, path);
                    make_parents(root, &at, &binds_so_far)?;
                    sys::symlink(target, &at).map_err(|source| MountError::Create {
                        path: path.clone(),
                        source,
                    })?;
                }
                Entry::File { path, text } => {
                    let at = inside(root, path);
                    make_parents(root, &at, &binds_so_far)?;
                    std::fs::write(&at, text).map_err(|source| MountError::Create {
                        path: path.clone(),
                        source,
                    })?;
                }
                Entry::Bind {
                    src,
                    dst,
                    dir,
                    flag: None,
                    ..
                } => {
                    let at = inside(root, dst);
                    make_mount_point(root, &at, *dir, &binds_so_far)
                        .map_err(|err| err.for_bind(describe(None, src, dst)))?;
                    let fd = fd.expect("every bind entry has an open source");
                    bind(&fd_path(fd), &at)
                        .map_err(|err| err.for_bind(describe(None, src, dst)))?;
                    binds_so_far.push(at);
                }
                Entry::Bind { .. } | Entry::Overlay(_) => {}
            }
        }
        for e in &self.entries {
            if let Entry::Bind {
                dst,
                dir,
                flag: Some(_),
                ..
            } = e
            {
                // Errors are reported by the real attempt below.
                let _ = make_mount_point(root, &inside(root, dst), *dir, &binds_so_far);
            }
            if let Entry::Overlay(o) = e {
                let _ = make_mount_point(root, &inside(root, &o.dst), true, &binds_so_far);
            }
        }

        // Phase 2: one call makes the root, /usr, the /etc files and the
        // device binds read-only, set-uid-free and device-free; then the
        // device node binds alone get device access back. (Writing a device
        // node through a read-only mount still works.)
        set_attrs(
            root,
            mount_attr::RDONLY | mount_attr::NOSUID | mount_attr::NODEV,
            true,
        )?;
        for name in DEVICES {
            allow_devices(&root.join("dev").join(name))?;
        }
        for e in &self.entries {
            if let Entry::Bind {
                dst,
                access: Access::Device,
                flag: None,
                ..
            } = e
            {
                allow_devices(&inside(root, dst))?;
            }
        }

        // Phase 3: the writable and special mounts on top.
        tmpfs(
            &root.join("tmp"),
            &format!("mode=1777,size={}", self.tmp_size),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        )?;
        tmpfs(
            &root.join("dev/shm"),
            &format!("mode=1777,size={}", self.tmp_size),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        )?;
        let proc_dir = root.join("proc");
        sys::mount(
            Some(c"proc"),
            &proc_dir,
            Some(c"proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )
        .map_err(|e| MountError::step("mount a new /proc", e))?;
        for name in PROC_READ_ONLY {
            let p = proc_dir.join(name);
            if std::fs::symlink_metadata(&p).is_ok() {
                bind(&p, &p)?;
                set_attrs(
                    &p,
                    mount_attr::RDONLY
                        | mount_attr::NOSUID
                        | mount_attr::NODEV
                        | mount_attr::NOEXEC,
                    true,
                )?;
            }
        }
        if let Some(fds) = &sys_fd {
            let target = root.join("sys");
            bind(&fd_path(fds.0[0]), &target)?;
            set_attrs(
                &target,
                mount_attr::RDONLY | mount_attr::NOSUID | mount_attr::NODEV | mount_attr::NOEXEC,
                true,
            )?;
        }
        drop(sys_fd);
        let mut overlays = Vec::new();
        let mut next_overlay = ovfds.0.chunks(3);
        for (e, fd) in self.entries.iter().zip(guard.0.iter()) {
            if let Entry::Overlay(o) = e {
                let fds = next_overlay.next().expect("three fds per overlay");
                let at = inside(root, &o.dst);
                overlays.push(mount_overlay(root, &at, o, fds, required, &binds_so_far)?);
                binds_so_far.push(at);
                continue;
            }
            let Entry::Bind {
                src,
                dst,
                dir,
                access,
                flag: flag @ Some(_),
            } = e
            else {
                continue;
            };
            let at = inside(root, dst);
            make_mount_point(root, &at, *dir, &binds_so_far)
                .map_err(|err| err.for_bind(describe(*flag, src, dst)))?;
            let fd = fd.expect("every bind entry has an open source");
            bind(&fd_path(fd), &at).map_err(|err| err.for_bind(describe(*flag, src, dst)))?;
            let attrs = match access {
                Access::ReadWrite => mount_attr::NOSUID | mount_attr::NODEV | mount_attr::NOEXEC,
                Access::Device => mount_attr::NOSUID | mount_attr::NOEXEC,
                Access::ReadExec => mount_attr::RDONLY | mount_attr::NOSUID | mount_attr::NODEV,
                Access::Read | Access::List => {
                    mount_attr::RDONLY | mount_attr::NOSUID | mount_attr::NODEV | mount_attr::NOEXEC
                }
            };
            set_attrs(&at, attrs, true).map_err(|err| err.for_bind(describe(*flag, src, dst)))?;
            binds_so_far.push(at);
        }
        drop(guard);
        drop(ovfds);

        // pivot_root(".", ".") stacks the old root under the new one;
        // detaching it leaves no path back to the host's tree.
        sys::chdir(root).map_err(|e| MountError::step("chdir to the new root", e))?;
        sys::pivot_root(Path::new("."), Path::new("."))
            .map_err(|e| MountError::step("pivot_root", e))?;
        sys::umount2(Path::new("."), libc::MNT_DETACH)
            .map_err(|e| MountError::step("detach the old root", e))?;
        sys::chdir(Path::new("/")).map_err(|e| MountError::step("chdir /", e))?;
        Ok(overlays)
    }

    /// `/dev` (a directory of the read-only root): bound device nodes and the
    /// usual symlinks; `/dev/shm` gets its own tmpfs later.
    fn build_dev(&self, root: &Path, devices: &FdList) -> Result<(), MountError> {
        let dev = root.join("dev");
        for (name, fd) in DEVICES.iter().zip(devices.0.iter()) {
            let at = dev.join(name);
            touch(&at)?;
            bind(&fd_path(*fd), &at)?;
        }
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            sys::symlink(Path::new(target), &dev.join(name)).map_err(|source| {
                MountError::Create {
                    path: PathBuf::from("/dev").join(name),
                    source,
                }
            })?;
        }
        Ok(())
    }
}

/// Mounts one overlay at `at` (`fds`: lower, upper, work, opened `O_PATH`
/// before the host tree was hidden). On failure: an error in `required`
/// mode, otherwise the lower folder bound read-only and the reason.
fn mount_overlay(
    root: &Path,
    at: &Path,
    o: &crate::overlay::Overlay,
    fds: &[RawFd],
    required: bool,
    binds: &[PathBuf],
) -> Result<Result<String, String>, MountError> {
    let shown = format!(
        "{}:{}:{}",
        o.lower.display(),
        o.state.display(),
        o.dst.display()
    );
    make_mount_point(root, at, true, binds)
        .map_err(|err| err.for_bind(format!("--overlay {shown}")))?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        fd_path(fds[0]).display(),
        fd_path(fds[1]).display(),
        fd_path(fds[2]).display()
    );
    let data = std::ffi::CString::new(opts).expect("no NUL in fd paths");
    let mounted = sys::mount(
        Some(c"overlay"),
        at,
        Some(c"overlay"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(data.as_c_str()),
    );
    match mounted {
        Ok(()) => Ok(Ok(format!(
            "{} at {} (writes in {})",
            o.lower.display(),
            o.dst.display(),
            o.upper().display()
        ))),
        Err(e) if required => Err(MountError::Overlay {
            what: shown,
            source: e,
        }),
        Err(e) => {
            bind(&fd_path(fds[0]), at).map_err(|err| err.for_bind(format!("--overlay {shown}")))?;
            set_attrs(
                at,
                mount_attr::RDONLY | mount_attr::NOSUID | mount_attr::NODEV,
                true,
            )
            .map_err(|err| err.for_bind(format!("--overlay {shown}")))?;
            Ok(Err(format!(
                "overlay of {} at {}: {e}; bound read-only instead",
                o.lower.display(),
                o.dst.display()
            )))
        }
    }
}

/// The generated `/etc` files: accounts for root, the worker and nobody,
/// a name-service config, and (without `--net`) a loopback-only hosts file.
fn generated_etc(net: bool, uid: u32, gid: u32) -> Vec<(&'static str, String)> {
    let mut passwd = String::from("root:x:0:0:root:/root:/usr/sbin/nologin\n");
    let mut group = String::from("root:x:0:\n");
    if uid != 0 && uid != 65534 {
        let worker_name = host_user_name(uid).unwrap_or_else(|| "worker".to_string());
        passwd.push_str(&format!(
            "{worker_name}:x:{uid}:{gid}:nodecell worker:/tmp:/usr/sbin/nologin\n"
        ));
        group.push_str(&format!("{worker_name}:x:{gid}:\n"));
    }
    passwd.push_str("nobody:x:65534:65534:nobody:/tmp:/usr/sbin/nologin\n");
    group.push_str("nogroup:x:65534:\n");
    let mut files = vec![("/etc/passwd", passwd), ("/etc/group", group)];
    if net {
        files.push((
            "/etc/nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files dns\n".into(),
        ));
    } else {
        files.push((
            "/etc/nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files\n".into(),
        ));
        files.push((
            "/etc/hosts",
            "127.0.0.1 localhost nodecell\n::1 localhost nodecell\n".into(),
        ));
    }
    files
}

/// The host's name for `uid`, from `/etc/passwd`.
fn host_user_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _ = f.next();
        (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

/// NVIDIA device nodes on the host.
fn gpu_devices() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/dev") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("nvidia") && !e.path().is_dir() {
                out.push(e.path());
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/dev/nvidia-caps") {
        out.extend(rd.flatten().map(|e| e.path()));
    }
    out.sort();
    out
}

/// Whether `--gpu` would find device nodes here.
pub fn gpu_device_count() -> usize {
    gpu_devices().len()
}

fn describe(flag: Option<&str>, src: &Path, dst: &Path) -> String {
    let pair = if src == dst {
        src.display().to_string()
    } else {
        format!("{}:{}", src.display(), dst.display())
    };
    match flag {
        Some(f) => format!("{f} {pair}"),
        None => pair,
    }
}

fn inside(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

fn fd_path(fd: RawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

fn tmpfs(target: &Path, options: &str, flags: libc::c_ulong) -> Result<(), MountError> {
    let data = std::ffi::CString::new(options).expect("no NUL in tmpfs options");
    sys::mount(
        Some(c"tmpfs"),
        target,
        Some(c"tmpfs"),
        flags,
        Some(data.as_c_str()),
    )
    .map_err(|source| MountError::Tmpfs {
        target: target.to_path_buf(),
        source,
    })
}

fn bind(src: &Path, target: &Path) -> Result<(), MountError> {
    let src_c = sys::cpath(src).map_err(|source| MountError::Bind {
        target: target.to_path_buf(),
        source,
    })?;
    sys::mount(
        Some(src_c.as_c_str()),
        target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(|source| MountError::Bind {
        target: target.to_path_buf(),
        source,
    })
}

/// Clears `nodev` on the one mount at `target` (a device node bind).
fn allow_devices(target: &Path) -> Result<(), MountError> {
    match sys::mount_setattr(target, 0, mount_attr::NODEV, false) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            // A bind remount without MS_NODEV clears it (it was ours, not
            // locked); keep the flags it has.
            let have = sys::mount_flags(target).unwrap_or(0);
            let mut flags = libc::MS_REMOUNT | libc::MS_BIND;
            for (st, ms) in [
                (libc::ST_NOSUID, libc::MS_NOSUID),
                (libc::ST_NOEXEC, libc::MS_NOEXEC),
                (libc::ST_RDONLY, libc::MS_RDONLY),
            ] {
                if have & st != 0 {
                    flags |= ms;
                }
            }
            sys::mount(None, target, None, flags, None).map_err(|source| MountError::Attrs {
                target: target.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(MountError::Attrs {
            target: target.to_path_buf(),
            source,
        }),
    }
}

/// Sets mount attributes with `mount_setattr`, falling back to a bind
/// remount (which must repeat the flags the kernel locked) before 5.12.
fn set_attrs(target: &Path, attrs: u64, recursive: bool) -> Result<(), MountError> {
    match sys::mount_setattr(target, attrs, 0, recursive) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            let locked = sys::mount_flags(target).unwrap_or(0);
            let mut flags = libc::MS_REMOUNT | libc::MS_BIND;
            for (st, ms) in [
                (libc::ST_NOSUID, libc::MS_NOSUID),
                (libc::ST_NODEV, libc::MS_NODEV),
                (libc::ST_NOEXEC, libc::MS_NOEXEC),
                (libc::ST_NOATIME, libc::MS_NOATIME),
                (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
                (libc::ST_RELATIME, libc::MS_RELATIME),
                (libc::ST_RDONLY, libc::MS_RDONLY),
            ] {
                if locked & st != 0 {
                    flags |= ms;
                }
            }
            for (a, ms) in [
                (mount_attr::RDONLY, libc::MS_RDONLY),
                (mount_attr::NOSUID, libc::MS_NOSUID),
                (mount_attr::NODEV, libc::MS_NODEV),
                (mount_attr::NOEXEC, libc::MS_NOEXEC),
            ] {
                if attrs & a != 0 {
                    flags |= ms;
                }
            }
            sys::mount(None, target, None, flags, None).map_err(|source| MountError::Attrs {
                target: target.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(MountError::Attrs {
            target: target.to_path_buf(),
            source,
        }),
    }
}

fn mkdir(p: &Path) -> Result<(), MountError> {
    match std::fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => Ok(()),
        Err(source) => Err(MountError::Create {
            path: p.to_path_buf(),
            source,
        }),
    }
}

fn touch(p: &Path) -> Result<(), MountError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .map(drop)
        .map_err(|source| MountError::Create {
            path: p.to_path_buf(),
            source,
        })
}

/// Creates the missing parents of `at` (inside the new root), refusing to
/// create anything inside a bind (which would create it on the host) and
/// refusing to pass through symlinks.
fn make_parents(root: &Path, at: &Path, binds: &[PathBuf]) -> Result<(), MountError> {
    let rel = at.strip_prefix(root).unwrap_or(at);
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(MountError::NotADirectory {
                    path: strip(root, &cur),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(b) = binds.iter().find(|b| cur.starts_with(b)) {
                    return Err(MountError::NoMountPoint {
                        path: strip(root, &cur),
                        bind: strip(root, b),
                    });
                }
                mkdir(&cur)?;
            }
            Err(source) => {
                return Err(MountError::Create {
                    path: strip(root, &cur),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Makes sure `at` exists as a directory (`dir`) or a file to mount on.
fn make_mount_point(
    root: &Path,
    at: &Path,
    dir: bool,
    binds: &[PathBuf],
) -> Result<(), MountError> {
    make_parents(root, at, binds)?;
    match std::fs::symlink_metadata(at) {
        Ok(m) if m.file_type().is_symlink() => Err(MountError::NotADirectory {
            path: strip(root, at),
        }),
        Ok(m) if m.is_dir() == dir => Ok(()),
        Ok(_) => Err(MountError::TypeMismatch {
            path: strip(root, at),
            want_dir: dir,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(b) = binds.iter().find(|b| at.starts_with(b)) {
                return Err(MountError::NoMountPoint {
                    path: strip(root, at),
                    bind: strip(root, b),
                });
            }
            if dir {
                mkdir(at)
            } else {
                touch(at)
            }
        }
        Err(source) => Err(MountError::Create {
            path: strip(root, at),
            source,
        }),
    }
}

fn strip(root: &Path, p: &Path) -> PathBuf {
    Path::new("/").join(p.strip_prefix(root).unwrap_or(p))
}

/// Closes the fds of a list when dropped.
struct FdList(Vec<RawFd>);
impl Drop for FdList {
    fn drop(&mut self) {
        for fd in &self.0 {
            sys::close(*fd);
        }
    }
}

/// Closes optional fds when dropped.
struct FdGuard<'a>(&'a mut Vec<Option<RawFd>>);
impl Drop for FdGuard<'_> {
    fn drop(&mut self) {
        for fd in self.0.iter().flatten() {
            sys::close(*fd);
        }
    }
}

/// Errors of the mount wall; each names the path and the step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// A bind source could not be opened by the worker's uid.
    #[error("{what}: {source} (opened as the worker's uid)")]
    Source {
        /// The flag and path.
        what: String,
        /// The errno.
        source: io::Error,
    },
    /// A step of building the root failed.
    #[error("{step}: {source}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// The errno.
        source: io::Error,
    },
    /// Mounting a tmpfs failed.
    #[error("mount tmpfs on {target}: {source}")]
    Tmpfs {
        /// Where.
        target: PathBuf,
        /// The errno.
        source: io::Error,
    },
    /// A bind mount failed.
    #[error("bind on {target}: {source}")]
    Bind {
        /// Where.
        target: PathBuf,
        /// The errno.
        source: io::Error,
    },
    /// Setting read-only/nosuid/noexec failed.
    #[error("set mount attributes of {target}: {source}")]
    Attrs {
        /// Where.
        target: PathBuf,
        /// The errno.
        source: io::Error,
    },
    /// Creating a mount point or generated file failed.
    #[error("create {path}: {source}")]
    Create {
        /// Path inside.
        path: PathBuf,
        /// The errno.
        source: io::Error,
    },
    /// A mount point would have to be created inside a bind (on the host).
    #[error("mount point {path} does not exist inside the bind at {bind} (nodecell never creates files on the host)")]
    NoMountPoint {
        /// Path inside.
        path: PathBuf,
        /// The bind that holds it.
        bind: PathBuf,
    },
    /// A path component is a symlink or a file.
    #[error("{path} is a symlink or not a directory; refusing to mount through it")]
    NotADirectory {
        /// Path inside.
        path: PathBuf,
    },
    /// The mount point has the wrong type.
    #[error("{path} exists but is not a {}", if *want_dir { "directory" } else { "file" })]
    TypeMismatch {
        /// Path inside.
        path: PathBuf,
        /// Whether a directory was needed.
        want_dir: bool,
    },
    /// An `--overlay` could not be mounted (required mode).
    #[error("--overlay {what}: mounting overlayfs in the sandbox's user namespace: {source} (needs Linux 5.11+)")]
    Overlay {
        /// The flag's value.
        what: String,
        /// The errno.
        source: io::Error,
    },
    /// Any of the above, for a named bind.
    #[error("{what}: {source}")]
    ForBind {
        /// The flag and path.
        what: String,
        /// What went wrong.
        source: Box<MountError>,
    },
}

impl MountError {
    fn step(step: &'static str, source: io::Error) -> MountError {
        MountError::Step { step, source }
    }
    fn for_bind(self, what: String) -> MountError {
        MountError::ForBind {
            what,
            source: Box::new(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn binds(plan: &MountPlan) -> Vec<(PathBuf, Access)> {
        plan.entries
            .iter()
            .filter_map(|e| match e {
                Entry::Bind { dst, access, .. } => Some((dst.clone(), *access)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn system_dirs_are_read_only_binds_or_symlinks() {
        let plan = MountPlan::new(&Policy::new(), 65534, 65534);
        let usr = binds(&plan)
            .into_iter()
            .find(|(d, _)| d == Path::new("/usr"));
        assert_eq!(usr.map(|(_, a)| a), Some(Access::ReadExec));
        // On a merged-/usr host /bin is a symlink and stays one.
        if std::fs::symlink_metadata("/bin")
            .unwrap()
            .file_type()
            .is_symlink()
        {
            assert!(plan
                .entries
                .iter()
                .any(|e| matches!(e, Entry::Symlink { path, .. } if path == Path::new("/bin"))));
        }
        // Nothing from /etc is writable, and no shadow file.
        for (dst, access) in binds(&plan) {
            if dst.starts_with("/etc") {
                assert_eq!(access, Access::Read, "{dst:?}");
            }
            assert_ne!(dst, Path::new("/etc/shadow"));
        }
    }

    #[test]
    fn etc_without_net_has_no_resolver_and_a_private_hosts_file() {
        let plan = MountPlan::new(&Policy::new(), 65534, 65534);
        assert!(!binds(&plan)
            .iter()
            .any(|(d, _)| d == Path::new("/etc/resolv.conf")));
        let hosts = plan.entries.iter().find_map(|e| match e {
            Entry::File { path, text } if path == Path::new("/etc/hosts") => Some(text.clone()),
            _ => None,
        });
        assert!(hosts.unwrap().starts_with("127.0.0.1 localhost"));
        let net = MountPlan::new(&Policy::new().net(true), 65534, 65534);
        if Path::new("/etc/resolv.conf").exists() {
            assert!(net.entries.iter().any(|e| matches!(e, Entry::Bind { dst, .. } if dst == Path::new("/etc/resolv.conf"))
                || matches!(e, Entry::Symlink { path, .. } if path == Path::new("/etc/resolv.conf"))));
        }
    }

    #[test]
    fn generated_passwd_names_the_worker() {
        let files = generated_etc(false, 4321, 4322);
        let passwd = &files.iter().find(|(p, _)| *p == "/etc/passwd").unwrap().1;
        assert!(passwd.contains(":4321:4322:"), "{passwd}");
        assert!(passwd.contains("nobody:x:65534"));
        let files = generated_etc(false, 65534, 65534);
        let passwd = &files.iter().find(|(p, _)| *p == "/etc/passwd").unwrap().1;
        assert_eq!(passwd.matches(":65534:").count(), 1, "{passwd}");
    }

    #[test]
    fn user_binds_come_parents_first_with_their_access() {
        let p = Policy::new()
            .ro_at("/usr/share", "/a/b/c")
            .rw_at("/tmp", "/a")
            .ro_at("/usr/lib", "/a/b");
        let plan = MountPlan::new(&p, 65534, 65534);
        let user: Vec<_> = plan
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Bind {
                    dst,
                    access,
                    flag: Some(f),
                    ..
                } => Some((dst.clone(), *access, *f)),
                _ => None,
            })
            .collect();
        assert_eq!(
            user,
            vec![
                (PathBuf::from("/a"), Access::ReadWrite, "--rw"),
                (PathBuf::from("/a/b"), Access::ReadExec, "--ro"),
                (PathBuf::from("/a/b/c"), Access::ReadExec, "--ro"),
            ]
        );
        assert_eq!(plan.user_binds(), 3);
    }

    #[test]
    fn landlock_rules_cover_tmp_proc_and_binds() {
        let plan = MountPlan::new(&Policy::new().rw("/tmp").ro("/etc/hostname"), 65534, 65534);
        let rules = plan.access_rules();
        let find = |p: &str| {
            rules
                .iter()
                .find(|(q, _, _)| q == Path::new(p))
                .map(|(_, a, d)| (*a, *d))
        };
        assert_eq!(find("/tmp"), Some((Access::ReadWrite, true)));
        assert_eq!(find("/proc"), Some((Access::Read, true)));
        assert_eq!(find("/dev"), Some((Access::Device, true)));
        assert_eq!(find("/usr"), Some((Access::ReadExec, true)));
        assert!(find("/sys").is_none());
        let gpu = MountPlan::new(&Policy::new().gpu(true), 65534, 65534);
        assert!(gpu
            .access_rules()
            .iter()
            .any(|(p, a, _)| p == Path::new("/sys") && *a == Access::Read));
    }

    #[test]
    fn mount_points_are_never_created_inside_binds() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("data")).unwrap();
        let binds = vec![root.join("data")];
        let err = make_mount_point(root, &root.join("data/sub/x"), true, &binds).unwrap_err();
        assert!(matches!(err, MountError::NoMountPoint { .. }), "{err}");
        assert!(err.to_string().contains("never creates files on the host"));
        // Outside binds, parents and the point itself are created.
        make_mount_point(root, &root.join("opt/venv"), true, &binds).unwrap();
        assert!(root.join("opt/venv").is_dir());
        make_mount_point(root, &root.join("opt/file"), false, &binds).unwrap();
        assert!(root.join("opt/file").is_file());
        // A file where a directory is wanted is refused.
        let err = make_mount_point(root, &root.join("opt/file"), true, &binds).unwrap_err();
        assert!(matches!(err, MountError::TypeMismatch { .. }));
        // Symlinks are never followed.
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        let err = make_mount_point(root, &root.join("link/x"), true, &binds).unwrap_err();
        assert!(matches!(err, MountError::NotADirectory { .. }), "{err}");
    }
}
