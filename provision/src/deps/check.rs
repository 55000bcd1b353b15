//! The checks that need no resolver: requirements of two packs that no
//! version satisfies together, requirements the host's installed versions
//! do not satisfy, numpy-ABI hazards, and what needs the network.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::migrate::{abi, conflict::unsatisfiable};
use crate::pep440::{Op, Version};
use crate::requirement::{MarkerEnv, Source};

use super::gather::{PackReqs, Req};
use super::resolve::Resolution;

/// One side of a conflict: a pack's requirement.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// The pack.
    pub pack: String,
    /// The requirement as written.
    pub requirement: String,
    /// Where it was written.
    pub from: String,
}

/// Why two packs cannot share one venv.
#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    /// The two packs.
    pub packs: [String; 2],
    /// The distribution their requirements disagree on (None: found by the resolver).
    pub dist: Option<String>,
    /// The requirements, when the conflict is direct.
    pub sides: Vec<Side>,
    /// The explanation (the resolver's for transitive conflicts).
    pub why: String,
}

/// A pack requirement the host environment's installed version does not satisfy.
#[derive(Debug, Clone, Serialize)]
pub struct HostConflict {
    /// The pack.
    pub pack: String,
    /// Its requirement.
    pub requirement: String,
    /// Where it was written.
    pub from: String,
    /// The distribution.
    pub dist: String,
    /// The host's version.
    pub host_version: String,
    /// Whether the pack shares it from the host (then its venv installs its own copy).
    pub shared: bool,
}

/// A binary built against numpy 1.x beside a numpy 2 (or a numpy that may be 2).
#[derive(Debug, Clone, Serialize)]
pub struct Hazard {
    /// The pack.
    pub pack: String,
    /// The binary distribution's requirement (or resolved pin).
    pub requirement: String,
    /// Where it was written (`resolved` for a dependency's dependency).
    pub from: String,
    /// The first release built against numpy 2.
    pub first_numpy2_build: String,
    /// The numpy version the resolution picked, when it resolved.
    pub numpy: Option<String>,
    /// Whether the pack keeps numpy below 2 itself (then it is safe).
    pub kept_below_2: bool,
}

/// Something provisioning a pack fetches over the network.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkNeed {
    /// The pack.
    pub pack: String,
    /// What is fetched.
    pub what: String,
    /// Why: `vcs`, `url`, `index`, `not_cached`.
    pub kind: String,
    /// Where it was written.
    pub from: String,
}

fn applies(r: &Req, env: Option<&MarkerEnv>) -> bool {
    match (&r.req.marker, env) {
        (Some(m), Some(env)) => m.evaluate(env, &[]),
        _ => true,
    }
}

fn specs(r: &Req) -> Option<&[(Op, String)]> {
    match &r.req.source {
        Source::Index(s) => Some(s),
        _ => None,
    }
}

fn show_specs(s: &[(Op, String)]) -> String {
    if s.is_empty() {
        return "any version".into();
    }
    s.iter()
        .map(|(op, v)| format!("{}{}", op.as_str(), v))
        .collect::<Vec<_>>()
        .join(",")
}

/// Requirements of `a` and `b` on the same distribution that no version satisfies together.
pub fn direct_conflicts(a: &PackReqs, b: &PackReqs, env: Option<&MarkerEnv>) -> Vec<Conflict> {
    let mut out = Vec::new();
    for ra in a.requirements.iter().filter(|r| applies(r, env)) {
        let (Some(name), Some(sa)) = (&ra.name, specs(ra)) else {
            continue;
        };
        for rb in b.requirements.iter().filter(|r| applies(r, env)) {
            if rb.name.as_ref() != Some(name) {
                continue;
            }
            let Some(sb) = specs(rb) else { continue };
            let both: Vec<(Op, String)> = sa.iter().chain(sb).cloned().collect();
            if unsatisfiable(&both) {
                out.push(Conflict {
                    packs: [a.name.clone(), b.name.clone()],
                    dist: Some(name.clone()),
                    sides: vec![
                        Side {
                            pack: a.name.clone(),
                            requirement: ra.text.clone(),
                            from: ra.from.clone(),
                        },
                        Side {
                            pack: b.name.clone(),
                            requirement: rb.text.clone(),
                            from: rb.from.clone(),
                        },
                    ],
                    why: format!(
                        "{name}: {} wants {} and {} wants {}: no version is both",
                        a.name,
                        show_specs(sa),
                        b.name,
                        show_specs(sb)
                    ),
                });
            }
        }
    }
    out
}

fn satisfied(version: &str, specs: &[(Op, String)]) -> Option<bool> {
    let v = Version::parse(version)?;
    Some(specs.iter().all(|(op, s)| v.matches(*op, s)))
}

/// The pack's requirements that the host's installed versions do not satisfy.
pub fn host_conflicts(
    p: &PackReqs,
    host: &BTreeMap<String, String>,
    env: Option<&MarkerEnv>,
) -> Vec<HostConflict> {
    let mut out = Vec::new();
    let all = p
        .requirements
        .iter()
        .map(|r| (r, false))
        .chain(p.shared.iter().map(|r| (r, true)));
    for (r, shared) in all {
        if !applies(r, env) {
            continue;
        }
        let (Some(name), Some(s)) = (&r.name, specs(r)) else {
            continue;
        };
        let Some(hv) = host.get(name) else { continue };
        if satisfied(hv, s) == Some(false) {
            out.push(HostConflict {
                pack: p.name.clone(),
                requirement: r.text.clone(),
                from: r.from.clone(),
                dist: name.clone(),
                host_version: hv.clone(),
                shared,
            });
        }
    }
    out
}

/// Binaries built against numpy 1.x that the pack asks for (directly or
/// through its resolution) beside a numpy that is, or may be, 2.x.
pub fn numpy_hazards(p: &PackReqs, res: Option<&Resolution>) -> Vec<Hazard> {
    let kept = p.requirements.iter().any(|r| abi::keeps_numpy1(&r.req));
    let numpy = res
        .filter(|r| r.ok)
        .and_then(|r| r.pins.get("numpy"))
        .cloned();
    let numpy2 = numpy
        .as_deref()
        .and_then(Version::parse)
        .map(|v| !v.matches(Op::Lt, "2"));
    let mut out = Vec::new();
    for r in &p.requirements {
        if let Some(first) = abi::numpy1_only(&r.req) {
            out.push(Hazard {
                pack: p.name.clone(),
                requirement: r.text.clone(),
                from: r.from.clone(),
                first_numpy2_build: first.to_string(),
                numpy: numpy.clone(),
                kept_below_2: kept,
            });
        }
    }
    // A dependency's dependency pinned below its numpy-2 build.
    if let (Some(res), Some(true)) = (res.filter(|r| r.ok), numpy2) {
        for (name, first) in abi::NUMPY1_WHEELS {
            let Some(v) = res.pins.get(name) else {
                continue;
            };
            if out.iter().any(|h| h.requirement.contains(name)) {
                continue;
            }
            if Version::parse(v).is_some_and(|v| v.matches(Op::Lt, first)) {
                out.push(Hazard {
                    pack: p.name.clone(),
                    requirement: format!("{name}=={v}"),
                    from: "resolved (a dependency's requirement)".into(),
                    first_numpy2_build: first.to_string(),
                    numpy: numpy.clone(),
                    kept_below_2: kept,
                });
            }
        }
    }
    out
}

/// What provisioning the pack fetches over the network: VCS and URL
/// requirements, indexes other than PyPI, and what uv's cache lacked.
pub fn network_needs(p: &PackReqs, res: Option<&Resolution>) -> Vec<NetworkNeed> {
    let mut out = Vec::new();
    for r in p.requirements.iter().chain(&p.shared) {
        let kind = if r.is_vcs() {
            "vcs"
        } else if r.is_url() {
            "url"
        } else {
            continue;
        };
        out.push(NetworkNeed {
            pack: p.name.clone(),
            what: r.text.clone(),
            kind: kind.into(),
            from: r.from.clone(),
        });
    }
    let idx = &p.index;
    for (what, field) in idx
        .index_url
        .iter()
        .map(|u| (u, "index_url"))
        .chain(idx.extra_index_urls.iter().map(|u| (u, "extra_index_urls")))
        .chain(idx.find_links.iter().map(|u| (u, "find_links")))
    {
        out.push(NetworkNeed {
            pack: p.name.clone(),
            what: what.clone(),
            kind: "index".into(),
            from: format!("{}: {field}", p.source),
        });
    }
    if let Some(res) = res {
        for n in &res.not_cached {
            out.push(NetworkNeed {
                pack: p.name.clone(),
                what: n.clone(),
                kind: "not_cached".into(),
                from: "uv's cache".into(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deps::gather::gather;

    fn pack(files: &[(&str, &str)]) -> (tempfile::TempDir, PackReqs) {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("p");
        std::fs::create_dir(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let p = gather(&dir, None).unwrap();
        (t, p)
    }

    #[test]
    fn direct_conflicts_name_both_requirements() {
        let (_a, a) = pack(&[(
            "manifest.yaml",
            "name: a\ndependencies: [numpy==1.26.4, pillow]\n",
        )]);
        let (_b, b) = pack(&[(
            "manifest.yaml",
            "name: b\ndependencies: ['numpy>=2', 'pillow<12']\n",
        )]);
        let c = direct_conflicts(&a, &b, None);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].dist.as_deref(), Some("numpy"));
        assert_eq!(c[0].sides[0].from, "manifest.yaml: dependencies[0]");
        assert!(
            c[0].why.contains("a wants ==1.26.4 and b wants >=2"),
            "{}",
            c[0].why
        );
        // A marker that does not apply on this host removes the conflict.
        let (_c, c2) = pack(&[(
            "manifest.yaml",
            "name: c\ndependencies: [\"numpy>=2; sys_platform == 'win32'\"]\n",
        )]);
        let env = crate::requirement::MarkerEnv {
            sys_platform: "linux".into(),
            ..Default::default()
        };
        assert!(direct_conflicts(&a, &c2, Some(&env)).is_empty());
        assert_eq!(direct_conflicts(&a, &c2, None).len(), 1);
    }

    #[test]
    fn host_versions_and_hazards() {
        let (_a, a) = pack(&[(
            "manifest.yaml",
            "name: a\ndependencies: ['opencv-python==4.7.0.72', numpy, 'pillow>=9']\nshared: ['aiohttp>=4']\n",
        )]);
        let host: BTreeMap<String, String> = [
            ("numpy", "2.1.0"),
            ("pillow", "8.4.0"),
            ("aiohttp", "3.9.1"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let hc = host_conflicts(&a, &host, None);
        assert_eq!(hc.len(), 2, "{hc:?}");
        assert_eq!((hc[0].dist.as_str(), hc[0].shared), ("pillow", false));
        assert_eq!((hc[1].dist.as_str(), hc[1].shared), ("aiohttp", true));
        let res = Resolution {
            ok: true,
            pins: [("numpy", "2.1.0"), ("opencv-python", "4.7.0.72")]
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            ..Resolution::default()
        };
        let h = numpy_hazards(&a, Some(&res));
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].first_numpy2_build, "4.10.0.82");
        assert_eq!(h[0].numpy.as_deref(), Some("2.1.0"));
        assert!(!h[0].kept_below_2);
        // A dependency's dependency pinned below its numpy-2 build.
        let (_b, b) = pack(&[("manifest.yaml", "name: b\ndependencies: [some-lib]\n")]);
        let res = Resolution {
            ok: true,
            pins: [("numpy", "2.0.1"), ("numba", "0.58.1"), ("some-lib", "1.0")]
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            ..Resolution::default()
        };
        let h = numpy_hazards(&b, Some(&res));
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[0].requirement, "numba==0.58.1");
    }

    #[test]
    fn network_needs_of_a_pack_without_manifest() {
        let (_a, a) = pack(&[(
            "requirements.txt",
            "--extra-index-url https://download.example.org/simple\npillow\ngit+https://github.com/o/r.git@v1\nfoo @ https://h/foo-1.0-py3-none-any.whl\n",
        )]);
        assert!(!a.has_manifest && a.source.starts_with("inferred"));
        let n = network_needs(&a, None);
        let kinds: Vec<&str> = n.iter().map(|x| x.kind.as_str()).collect();
        assert_eq!(kinds, ["vcs", "url", "index"], "{n:?}");
        assert_eq!(n[0].from, "requirements.txt:3");
    }
}
