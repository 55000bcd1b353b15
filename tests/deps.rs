//! `nodecell deps` on packs with known conflicts (tests/fixtures/deps), with
//! real uv and the repo's .venv as the host environment.

use std::path::PathBuf;

use serde_json::Value;

use crate::util::{dev_venv, nodecell, repo};

fn fixtures() -> Vec<PathBuf> {
    let dir = repo().join("tests/fixtures/deps");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

fn deps(packs: &[PathBuf], extra: &[&str]) -> (i32, Value, String) {
    let py = dev_venv().join("bin/python");
    let mut c = nodecell(&["deps", "--json", "--python"]);
    c.arg(&py).args(extra).args(packs);
    // uv from the dev venv, its shared cache when the caller set one.
    let path = format!(
        "{}:{}",
        dev_venv().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    c.env("PATH", path);
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v, stderr)
}

fn pair(c: &Value) -> (String, String) {
    (
        c["packs"][0].as_str().unwrap().to_string(),
        c["packs"][1].as_str().unwrap().to_string(),
    )
}

fn group_of(v: &Value, pack: &str) -> Vec<String> {
    v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["packs"].as_array().unwrap().iter().any(|p| p == pack))
        .map(|g| {
            g["packs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap()
}

#[test]
fn deps_reports_conflicts_hazards_network_and_shared_venvs() {
    let (code, v, stderr) = deps(&fixtures(), &[]);
    assert_eq!(code, 0, "{stderr}");
    let packs: Vec<&str> = v["packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        packs,
        [
            "cv_old",
            "cv_pinned",
            "np126",
            "np2",
            "schema_new",
            "schema_old",
            "vcs_pack"
        ]
    );
    // Every pack resolves on its own.
    for p in v["packs"].as_array().unwrap() {
        assert_eq!(p["resolution"]["ok"], true, "{p}");
    }
    // Direct conflicts name both requirements; the transitive one comes from the resolver.
    let conflicts = v["conflicts"].as_array().unwrap();
    let direct = conflicts
        .iter()
        .find(|c| pair(c) == ("np126".into(), "np2".into()))
        .expect("np126 vs np2");
    assert_eq!(direct["dist"], "numpy");
    assert_eq!(direct["sides"][0]["requirement"], "numpy==1.26.4");
    assert_eq!(direct["sides"][1]["from"], "manifest.yaml: dependencies[0]");
    let transitive = conflicts
        .iter()
        .find(|c| pair(c) == ("schema_new".into(), "schema_old".into()))
        .expect("schema_new vs schema_old");
    assert!(transitive["dist"].is_null());
    assert!(
        transitive["why"].as_str().unwrap().contains("attrs"),
        "{transitive}"
    );
    // cv_old has no manifest: inferred as `nodecell migrate` would write it (numpy<2 added).
    let cv_old = &v["packs"][0];
    assert_eq!(cv_old["has_manifest"], false);
    assert!(cv_old["requirements"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["text"] == "numpy<2"));
    assert!(conflicts
        .iter()
        .any(|c| pair(c) == ("cv_old".into(), "np2".into())));
    // Hazards: cv_pinned resolves numpy 2 beside an opencv built for numpy 1; cv_old is safe.
    let hazards = v["hazards"].as_array().unwrap();
    let pinned = hazards.iter().find(|h| h["pack"] == "cv_pinned").unwrap();
    assert_eq!(pinned["first_numpy2_build"], "4.10.0.82");
    assert_eq!(pinned["kept_below_2"], false);
    assert!(pinned["numpy"].as_str().unwrap().starts_with("2."));
    let old = hazards.iter().find(|h| h["pack"] == "cv_old").unwrap();
    assert_eq!(old["kept_below_2"], true);
    // The host (.venv, numpy 2) does not satisfy numpy==1.26.4.
    let hc = v["host_conflicts"].as_array().unwrap();
    assert!(hc.iter().any(|c| c["pack"] == "np126"
        && c["dist"] == "numpy"
        && c["host_version"].as_str().unwrap().starts_with("2.")));
    // The VCS requirement needs the network and stays out of resolution.
    let vcs = v["network"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["pack"] == "vcs_pack" && n["kind"] == "vcs")
        .unwrap();
    assert_eq!(
        vcs["what"],
        "git+https://github.com/example/img-tool.git@v1.0"
    );
    assert_eq!(
        v["packs"][6]["left_out"][0],
        "git+https://github.com/example/img-tool.git@v1.0"
    );
    // Groups: conflicting packs never share.
    assert!(!group_of(&v, "np126").contains(&"np2".to_string()));
    assert!(!group_of(&v, "schema_new").contains(&"schema_old".to_string()));
    assert!(!group_of(&v, "cv_old").contains(&"np2".to_string()));
    let total: usize = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["packs"].as_array().unwrap().len())
        .sum();
    assert_eq!(total, 7);
    // --strict fails on the hazard.
    let (code, _, _) = deps(&fixtures(), &["--strict"]);
    assert_eq!(code, 1);
}

#[test]
fn deps_without_the_resolver_and_offline() {
    let (code, v, stderr) = deps(&fixtures(), &["--no-resolve"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(v["resolver"].is_null());
    let pairs: Vec<(String, String)> = v["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(pair)
        .collect();
    assert!(pairs.contains(&("np126".into(), "np2".into())));
    assert!(
        !pairs.contains(&("schema_new".into(), "schema_old".into())),
        "needs the resolver"
    );
    // Offline, a package uv's cache does not have: the pack does not resolve and says why.
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("ghost");
    std::fs::create_dir(&p).unwrap();
    std::fs::write(
        p.join("manifest.yaml"),
        "name: ghost\ndependencies: [nodecell-deps-test-no-such-package==1.0]\n",
    )
    .unwrap();
    let (code, v, stderr) = deps(std::slice::from_ref(&p), &["--offline"]);
    assert_eq!(code, 0, "{stderr}");
    let r = &v["packs"][0]["resolution"];
    assert_eq!(r["ok"], false);
    assert_eq!(r["online"], false);
    assert_eq!(r["not_cached"][0], "nodecell-deps-test-no-such-package");
    assert!(v["network"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["kind"] == "not_cached"));
    let (code, _, _) = deps(&[p], &["--offline", "--strict"]);
    assert_eq!(code, 1);
}

#[test]
fn deps_errors_name_the_path() {
    let (code, _, stderr) = deps(&[PathBuf::from("/nonexistent/pack")], &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("/nonexistent/pack: not a folder"),
        "{stderr}"
    );
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("bad");
    std::fs::create_dir(&p).unwrap();
    std::fs::write(
        p.join("manifest.yaml"),
        "name: bad\ndependencies: [\"numpy>=\"]\n",
    )
    .unwrap();
    let (code, _, stderr) = deps(&[p], &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("manifest.yaml") && stderr.contains("dependencies"),
        "{stderr}"
    );
}
