//! Sharing the host's packages into pack venvs: `share_torch: true` shares
//! torch, the manifest's `shared:` list and the host app's own requirements
//! (passed by the host, e.g. ComfyUI's `requirements.txt`) share those. The
//! venv sees exactly the shared distributions and their dependency closure
//! (read from the host's `*.dist-info` metadata with markers evaluated for
//! the host interpreter), and nothing else of the host's site-packages.
//!
//! How, inside the venv:
//!
//! * `nodecell-shared/` holds symlinks to the closure's files in the host's
//!   site-packages (a whole folder when only closure distributions own files
//!   in it, otherwise per entry: `nvidia/` can be shared by packages that are
//!   not torch's). A `.pth` file appends that folder to `sys.path` *after*
//!   the venv's own site-packages, so anything the pack installs itself wins.
//! * For each shared distribution, a *shim* `*.dist-info` (its metadata,
//!   a RECORD that lists only the shim itself) sits in the venv's
//!   site-packages. uv and `importlib.metadata` see it as installed at the
//!   host's version, so installing a package that depends on it does not
//!   pull a second copy; if the pack pins another version of a shared
//!   distribution (`sympy==1.13.3`, `pillow<10`), uv removes just the shim
//!   and installs the pin, which then shadows the host's copy.
//! * With `share_torch`, provisioning adds the constraint
//!   `torch==<host version>`: a pack that asks for another torch fails to
//!   resolve instead of getting one. Other shared distributions get no
//!   constraint: the pack's pins win.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::interpreter::Interpreter;
use crate::requirement::{normalize_name, Requirement};

/// Name of the folder inside the venv that holds the links to the host.
pub const SHARED_DIR: &str = "nodecell-shared";
/// Name of the `.pth` file that puts [`SHARED_DIR`] on `sys.path`.
pub const SHARED_PTH: &str = "zz_nodecell_shared.pth";
/// File added to each shim dist-info, naming the host dist-info it copies.
pub const SHIM_MARKER: &str = "NODECELL_SHARED";

/// One host distribution shared into venvs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedDist {
    /// Normalized name.
    pub name: String,
    /// Version from its METADATA.
    pub version: String,
    /// Its `*.dist-info` folder on the host.
    pub dist_info: PathBuf,
}

/// Host distributions shared into a venv: the roots asked for (torch, the
/// app's requirements, the manifest's `shared:`) and their dependency closure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostShare {
    /// The host interpreter it belongs to.
    pub python: PathBuf,
    /// The site-packages folder of the first root found (torch's, when shared).
    pub site_packages: PathBuf,
    /// torch's version (`2.15.0`; `+local` kept if present), when torch is shared.
    pub torch_version: Option<String>,
    /// The roots asked for (normalized names), in order.
    pub roots: Vec<String>,
    /// Every shared distribution, sorted by name.
    pub dists: Vec<SharedDist>,
    /// Distributions of the closure (roots included) that the host does not
    /// have installed: not shared (a pack that needs one installs it).
    pub missing: Vec<String>,
}

struct DistInfo {
    dir: PathBuf,
    site: PathBuf,
    name: String,
    version: String,
    requires: Vec<String>,
}

fn read_metadata(dist_info: &Path) -> Option<(String, String, Vec<String>)> {
    let text = std::fs::read(dist_info.join("METADATA")).ok()?;
    let text = String::from_utf8_lossy(&text);
    let (mut name, mut version, mut requires) = (None, None, Vec::new());
    for line in text.lines() {
        if line.is_empty() || line == "\r" {
            // End of headers; the description follows. A folded header's continuation line
            // may hold only whitespace (matplotlib's `License:`): not the end.
            break;
        }
        if let Some(v) = line.strip_prefix("Name:") {
            name = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("Version:") {
            version = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("Requires-Dist:") {
            requires.push(v.trim().to_string());
        }
    }
    Some((name?, version?, requires))
}

fn scan_site(site: &Path) -> Vec<DistInfo> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(site) else {
        return out;
    };
    let mut names: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "dist-info"))
        .collect();
    names.sort();
    for dir in names {
        if let Some((name, version, requires)) = read_metadata(&dir) {
            out.push(DistInfo {
                dir,
                site: site.to_path_buf(),
                name,
                version,
                requires,
            });
        }
    }
    out
}

/// Every distribution installed in the host interpreter's site-packages:
/// normalized name -> version (the first found in `sys.path` order wins, as
/// Python's import would).
pub fn installed(host: &Interpreter) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for site in &host.site_packages {
        for d in scan_site(site) {
            out.entry(normalize_name(&d.name)).or_insert(d.version);
        }
    }
    out
}

impl HostShare {
    /// Finds the `roots` (distribution names) in the host interpreter's
    /// site-packages and walks their dependencies. With `require_torch`,
    /// a host without torch is an error that says where it looked; other
    /// roots the host lacks are listed in [`HostShare::missing`].
    pub fn find(
        host: &Interpreter,
        roots: &[String],
        require_torch: bool,
    ) -> Result<HostShare, String> {
        let mut by_name: HashMap<String, DistInfo> = HashMap::new();
        for site in &host.site_packages {
            for d in scan_site(site) {
                by_name.entry(normalize_name(&d.name)).or_insert(d);
            }
        }
        let roots: Vec<String> = {
            let mut seen = BTreeSet::new();
            roots
                .iter()
                .map(|r| normalize_name(r))
                .filter(|r| seen.insert(r.clone()))
                .collect()
        };
        let torch = by_name.get("torch");
        if require_torch && torch.is_none() {
            return Err(format!(
                "the host interpreter {} has no torch (looked in {}); install torch there or set share_torch: false",
                host.path.display(),
                host.site_packages.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ));
        }
        let torch_version = if roots.iter().any(|r| r == "torch") {
            torch.map(|t| t.version.clone())
        } else {
            None
        };
        let site_packages = roots
            .iter()
            .find_map(|r| by_name.get(r))
            .map(|d| d.site.clone())
            .or_else(|| host.site_packages.first().cloned())
            .unwrap_or_default();

        // Breadth-first over (distribution, extras requested of it).
        let mut extras_seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut queue: VecDeque<(String, BTreeSet<String>)> =
            roots.iter().map(|r| (r.clone(), BTreeSet::new())).collect();
        let mut missing = BTreeSet::new();
        while let Some((name, extras)) = queue.pop_front() {
            if extras_seen
                .get(&name)
                .is_some_and(|seen| extras.is_subset(seen))
            {
                continue;
            }
            let seen = extras_seen.entry(name.clone()).or_default();
            seen.extend(extras);
            let all_extras: Vec<String> = seen.iter().cloned().collect();
            let Some(dist) = by_name.get(&name) else {
                missing.insert(name);
                continue;
            };
            for req in &dist.requires {
                let Ok(r) = Requirement::parse(req) else {
                    continue;
                };
                let Some(dep) = r.name.clone() else { continue };
                let applies = match &r.marker {
                    None => true,
                    Some(m) => {
                        m.evaluate(&host.markers, &[])
                            || all_extras
                                .iter()
                                .any(|e| m.evaluate(&host.markers, std::slice::from_ref(e)))
                    }
                };
                if applies {
                    queue.push_back((dep, r.extras.iter().cloned().collect()));
                }
            }
        }
        let mut dists: Vec<SharedDist> = extras_seen
            .keys()
            .filter_map(|n| by_name.get(n))
            .map(|d| SharedDist {
                name: normalize_name(&d.name),
                version: d.version.clone(),
                dist_info: d.dir.clone(),
            })
            .collect();
        dists.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(HostShare {
            python: host.path.clone(),
            site_packages,
            torch_version,
            roots,
            dists,
            missing: missing.into_iter().collect(),
        })
    }

    /// The host's version of a shared distribution.
    pub fn version_of(&self, name: &str) -> Option<&str> {
        let n = normalize_name(name);
        self.dists
            .iter()
            .find(|d| d.name == n)
            .map(|d| d.version.as_str())
    }

    /// `name==version` for every shared distribution (part of the cache key).
    pub fn pins(&self) -> Vec<String> {
        self.dists
            .iter()
            .map(|d| format!("{}=={}", d.name, d.version))
            .collect()
    }

    /// Lays out the links and shims in a venv (see the module docs). Returns
    /// the host paths the links point at: a sandbox must bind them read-only.
    pub fn install_into(&self, venv: &Path, site_packages: &Path) -> io::Result<Vec<PathBuf>> {
        let closure: BTreeSet<PathBuf> = self.dists.iter().map(|d| d.dist_info.clone()).collect();
        let shared = venv.join(SHARED_DIR);
        std::fs::create_dir_all(&shared)?;
        let mut targets = Vec::new();

        // Group closure distributions by the site folder they live in.
        let mut sites: BTreeMap<PathBuf, ()> = BTreeMap::new();
        for d in &self.dists {
            if let Some(site) = d.dist_info.parent() {
                sites.insert(site.to_path_buf(), ());
            }
        }
        for site in sites.keys() {
            // Ownership tree of every distribution in this site folder.
            let mut root = Node::default();
            for (idx, dist) in scan_site(site).iter().enumerate() {
                let in_closure = closure.contains(&dist.dir);
                let Ok(record) = std::fs::read_to_string(dist.dir.join("RECORD")) else {
                    continue;
                };
                for line in record.lines() {
                    let path = record_path(line);
                    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
                    let Some(first) = parts.first() else { continue };
                    if first.starts_with("..")
                        || first.ends_with(".dist-info")
                        || first.ends_with(".egg-info")
                        || first.ends_with(".data")
                        || *first == "__pycache__"
                        || (parts.len() == 1 && first.ends_with(".pth"))
                    {
                        continue;
                    }
                    root.insert(&parts, idx, in_closure);
                }
            }
            root.link(site, &shared, &mut targets)?;
        }

        // Shim dist-infos.
        for d in &self.dists {
            let Some(dir_name) = d.dist_info.file_name() else {
                continue;
            };
            let dst = site_packages.join(dir_name);
            std::fs::create_dir_all(&dst)?;
            let mut record = Vec::new();
            let dn = dir_name.to_string_lossy();
            for entry in std::fs::read_dir(&d.dist_info)?.flatten() {
                let name = entry.file_name();
                let n = name.to_string_lossy();
                if n == "RECORD" || !entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                    continue;
                }
                std::fs::copy(entry.path(), dst.join(&name))?;
                record.push(format!("{dn}/{n},,"));
            }
            std::fs::write(
                dst.join(SHIM_MARKER),
                format!("{}\n", d.dist_info.display()),
            )?;
            record.push(format!("{dn}/{SHIM_MARKER},,"));
            record.push(format!("{dn}/RECORD,,"));
            record.sort();
            std::fs::write(dst.join("RECORD"), record.join("\n") + "\n")?;
        }

        // Appended to sys.path after site-packages; relative to site-packages
        // so the venv can be renamed into place.
        let rel = relative_to(&shared, site_packages);
        std::fs::write(
            site_packages.join(SHARED_PTH),
            format!("{}\n", rel.display()),
        )?;
        targets.sort();
        targets.dedup();
        Ok(targets)
    }
}

/// The path of a RECORD line (`path,hash,size`; the path may be quoted).
fn record_path(line: &str) -> String {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix('"') {
        if let Some(end) = rest.find("\",") {
            return rest[..end].replace("\"\"", "\"");
        }
    }
    let mut parts = line.rsplitn(3, ',');
    let _size = parts.next();
    let _hash = parts.next();
    parts.next().unwrap_or("").to_string()
}

/// `target` relative to `base` (both absolute, `base` under a common root).
fn relative_to(target: &Path, base: &Path) -> PathBuf {
    let t: Vec<_> = target.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

#[derive(Default)]
struct Node {
    children: BTreeMap<String, Node>,
    owners: BTreeSet<usize>,
    closure_owner: bool,
    foreign_owner: bool,
}

impl Node {
    fn insert(&mut self, parts: &[&str], owner: usize, in_closure: bool) {
        let mut n = self;
        for p in parts {
            n = n.children.entry((*p).to_string()).or_default();
            n.owners.insert(owner);
            n.closure_owner |= in_closure;
            n.foreign_owner |= !in_closure;
        }
    }

    /// Links every child owned by the closure: whole when no foreign
    /// distribution owns anything under it, else per grandchild.
    fn link(&self, src: &Path, dst: &Path, targets: &mut Vec<PathBuf>) -> io::Result<()> {
        for (name, child) in &self.children {
            if !child.closure_owner {
                continue;
            }
            let from = src.join(name);
            let to = dst.join(name);
            let meta = match std::fs::symlink_metadata(&from) {
                Ok(m) => m,
                Err(_) => continue, // listed in RECORD but gone
            };
            if child.foreign_owner && meta.is_dir() && !child.children.is_empty() {
                std::fs::create_dir_all(&to)?;
                child.link(&from, &to, targets)?;
            } else {
                if std::fs::symlink_metadata(&to).is_ok() {
                    continue;
                }
                std::os::unix::fs::symlink(&from, &to)?;
                targets.push(from);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_paths() {
        assert_eq!(
            record_path("torch/__init__.py,sha256=abc,123"),
            "torch/__init__.py"
        );
        assert_eq!(record_path("\"we,ird/x.py\",sha256=abc,1"), "we,ird/x.py");
        assert_eq!(record_path("x.dist-info/RECORD,,"), "x.dist-info/RECORD");
    }

    #[test]
    fn metadata_headers_go_on_past_a_folded_header_with_blank_continuation_lines() {
        // As matplotlib 3.11's METADATA: `License:` folded over lines, one of them only spaces.
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("METADATA"),
            "Metadata-Version: 2.1\nName: matplotlib\nVersion: 3.11.2\nLicense: License agreement\n         ====\n         \n         1. This LICENSE\nRequires-Dist: pyparsing>=3\nRequires-Dist: cycler>=0.10\n\nDescription, with Requires-Dist: nothing\n",
        )
        .unwrap();
        let (name, version, requires) = read_metadata(t.path()).unwrap();
        assert_eq!((name.as_str(), version.as_str()), ("matplotlib", "3.11.2"));
        assert_eq!(requires, ["pyparsing>=3", "cycler>=0.10"]);
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_to(
                Path::new("/v/nodecell-shared"),
                Path::new("/v/lib/python3.11/site-packages")
            ),
            PathBuf::from("../../../nodecell-shared")
        );
    }
}
