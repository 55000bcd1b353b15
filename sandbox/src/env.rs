//! The environment wall: the sandboxed command gets a small allow-list
//! (`PATH`, `HOME`, `TMPDIR`, locale and terminal variables) plus the
//! caller's `--env K=V`. Nothing else of the launcher's environment leaks in.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;

use crate::policy::Policy;

/// `PATH` inside the sandbox unless `--env PATH=...` is given.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Host variables passed through when set (locale, time zone, terminal).
pub fn passes_through(name: &str) -> bool {
    matches!(
        name,
        "LANG" | "LANGUAGE" | "TZ" | "TERM" | "NO_COLOR" | "COLORTERM"
    ) || name.starts_with("LC_")
}

/// The environment of the sandboxed command, from the launcher's own
/// environment `host` and the policy.
pub fn build(
    policy: &Policy,
    host: impl IntoIterator<Item = (OsString, OsString)>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), DEFAULT_PATH.to_string());
    env.insert("HOME".to_string(), "/tmp".to_string());
    env.insert("TMPDIR".to_string(), "/tmp".to_string());
    for (k, v) in host {
        if let (Some(k), Some(v)) = (k.to_str(), v.to_str()) {
            if passes_through(k) {
                env.insert(k.to_string(), v.to_string());
            }
        }
    }
    for (k, v) in &policy.env {
        env.insert(k.clone(), v.clone());
    }
    env
}

/// `KEY=VALUE` C strings for `execve` (entries with a NUL are dropped;
/// [`Policy::validate`] refuses them earlier).
pub fn to_cstrings(env: &BTreeMap<String, String>) -> Vec<CString> {
    env.iter()
        .filter_map(|(k, v)| {
            let mut s = OsString::from(k);
            s.push("=");
            s.push(v);
            CString::new(s.as_bytes()).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn only_the_allow_list_passes() {
        let env = build(
            &Policy::new(),
            host(&[
                ("AWS_SECRET_ACCESS_KEY", "x"),
                ("LANG", "C.UTF-8"),
                ("LC_ALL", "C"),
                ("PATH", "/root/.pyenv/shims"),
                ("HOME", "/root"),
            ]),
        );
        assert!(!env.contains_key("AWS_SECRET_ACCESS_KEY"));
        assert_eq!(env["LANG"], "C.UTF-8");
        assert_eq!(env["LC_ALL"], "C");
        assert_eq!(env["PATH"], DEFAULT_PATH, "the host PATH does not leak");
        assert_eq!(env["HOME"], "/tmp");
    }

    #[test]
    fn flags_override_defaults() {
        let env = build(
            &Policy::new()
                .env("PATH", "/venv/bin:/usr/bin")
                .env("FOO", "bar"),
            host(&[]),
        );
        assert_eq!(env["PATH"], "/venv/bin:/usr/bin");
        assert_eq!(env["FOO"], "bar");
        let c = to_cstrings(&env);
        assert!(c.iter().any(|s| s.as_bytes() == b"FOO=bar"));
    }
}
