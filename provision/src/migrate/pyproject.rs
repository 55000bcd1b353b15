//! `pyproject.toml`: `[project]` name, version and dependencies, and
//! upstream ComfyUI's `[tool.comfy.isolation]` section.

use super::collect::{Collector, IndexKind, PyprojectInfo};
use super::{Finding, FindingKind, Inferred};

impl Collector {
    pub(super) fn read_pyproject(&mut self) -> PyprojectInfo {
        let mut info = PyprojectInfo::default();
        let path = self.dir.join("pyproject.toml");
        let Some(text) = self.read_text(&path) else {
            return info;
        };
        let table = match text.parse::<toml::Table>() {
            Ok(t) => t,
            Err(e) => {
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
                let from = match line {
                    Some(l) => format!("pyproject.toml:{l}"),
                    None => "pyproject.toml".into(),
                };
                self.not(
                    FindingKind::Unreadable,
                    &from,
                    "",
                    format!(
                        "not valid TOML ({}): nothing read from it",
                        e.message().trim()
                    ),
                );
                return info;
            }
        };
        let bad_type = |c: &mut Collector, field: &str, v: &toml::Value, want: &str| {
            c.not(
                FindingKind::Unparseable,
                &format!("pyproject.toml: {field}"),
                &v.to_string(),
                format!("expected {want}; not used"),
            );
        };
        if let Some(project) = table.get("project").and_then(|p| p.as_table()) {
            match project.get("name") {
                Some(toml::Value::String(s)) if !s.trim().is_empty() => {
                    info.name = Some(Inferred::new(s.clone(), "pyproject.toml: project.name"));
                }
                Some(v) => bad_type(self, "project.name", v, "a non-empty string"),
                None => {}
            }
            match project.get("version") {
                Some(toml::Value::String(s)) if !s.trim().is_empty() => {
                    info.version = Some(Inferred::new(
                        s.trim().to_string(),
                        "pyproject.toml: project.version",
                    ));
                }
                Some(v) => bad_type(self, "project.version", v, "a version string"),
                None => {}
            }
            match project.get("dependencies") {
                Some(toml::Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        let from = format!("pyproject.toml: project.dependencies[{i}]");
                        match item {
                            toml::Value::String(s) => self.add(s, &from, None),
                            v => bad_type(
                                self,
                                &format!("project.dependencies[{i}]"),
                                v,
                                "a requirement string",
                            ),
                        }
                    }
                }
                Some(v) => bad_type(
                    self,
                    "project.dependencies",
                    v,
                    "an array of requirement strings",
                ),
                None => {}
            }
        }
        let tool = table.get("tool").and_then(|t| t.as_table());
        if let Some(iso) = tool
            .and_then(|t| t.get("comfy"))
            .and_then(|c| c.as_table())
            .and_then(|c| c.get("isolation"))
        {
            let Some(iso) = iso.as_table() else {
                bad_type(self, "tool.comfy.isolation", iso, "a table");
                return info;
            };
            for (k, v) in iso {
                let field = format!("tool.comfy.isolation.{k}");
                let from = format!("pyproject.toml: {field}");
                match (k.as_str(), v) {
                    ("can_isolate", toml::Value::Boolean(b)) => {
                        info.can_isolate = Some(Inferred::new(*b, from));
                    }
                    ("share_torch", toml::Value::Boolean(b)) => {
                        info.share_torch = Some(Inferred::new(*b, from));
                    }
                    ("can_isolate" | "share_torch", v) => bad_type(self, &field, v, "true or false"),
                    ("extra_index_urls", toml::Value::Array(urls)) => {
                        for (i, u) in urls.iter().enumerate() {
                            match u {
                                toml::Value::String(s) => {
                                    self.index(IndexKind::Extra, s, &format!("{from}[{i}]"), None)
                                }
                                v => bad_type(self, &format!("{field}[{i}]"), v, "a URL string"),
                            }
                        }
                    }
                    ("extra_index_urls", v) => bad_type(self, &field, v, "an array of URL strings"),
                    (k, v) => self.check.push(Finding {
                        kind: FindingKind::Ignored,
                        from,
                        text: format!("{k} = {v}"),
                        message: "not used by nodecell (the manifest's sandbox and venv settings replace it)".into(),
                    }),
                }
            }
        }
        if tool.is_some_and(|t| t.contains_key("nodecell")) {
            self.check.push(Finding {
                kind: FindingKind::Ignored,
                from: "pyproject.toml: tool.nodecell".into(),
                text: String::new(),
                message: "manifest.yaml takes precedence over [tool.nodecell]; its settings were not read, merge them by hand".into(),
            });
        }
        info
    }
}
