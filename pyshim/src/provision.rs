//! `read_manifest` and `provision`: the provision crate, for the Python layer.

use std::path::{Path, PathBuf};

use nodecell_provision::{
    Event, IndexOptions, LaunchSettings, Manifest, ManifestFormat, Options, Pack, Provisioner,
    Requirement, SandboxSettings,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::pyjson::json_to_py;

/// Reads a pack's manifest (`manifest.yaml`, `pyisolate.yaml` or `[tool.nodecell]`
/// in `pyproject.toml`) from a folder or file path; returns it as a dict.
/// Raises ValueError naming the file, line and field of any mistake.
#[pyfunction]
pub fn read_manifest(py: Python<'_>, path: PathBuf) -> PyResult<Py<PyAny>> {
    let dir = if path.is_file() {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        path
    };
    let pack = Pack::load(&dir).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let v =
        serde_json::to_value(&pack.manifest).map_err(|e| PyValueError::new_err(e.to_string()))?;
    json_to_py(py, &v)
}

fn opt_str(d: &Bound<'_, PyDict>, key: &str) -> PyResult<Option<String>> {
    match d.get_item(key)? {
        Some(v) if !v.is_none() => Ok(Some(v.extract()?)),
        _ => Ok(None),
    }
}

/// Builds (or finds) the venv for an extension described by `spec` (a dict with
/// `name`, `module_path`, `dependencies`, `share_torch`, and optionally `shared`
/// (requirements taken from the host when its copy satisfies them), `share` (names
/// of host distributions shared with their closure, never installed), `python`,
/// `host_python`, `extra_index_urls`, `venv_root`, `compile_bytecode`, `offline`).
/// `on_event(dict)` receives progress events. Returns `{path, python, key,
/// cache_hit, ro_paths, versions}`. Raises ValueError with uv's own text on failure.
#[pyfunction]
#[pyo3(signature = (spec, on_event = None))]
pub fn provision(
    py: Python<'_>,
    spec: &Bound<'_, PyDict>,
    on_event: Option<Py<PyAny>>,
) -> PyResult<Py<PyAny>> {
    let name: String = spec
        .get_item("name")?
        .ok_or_else(|| PyValueError::new_err("spec.name is required"))?
        .extract()?;
    let module_path: PathBuf = spec
        .get_item("module_path")?
        .ok_or_else(|| PyValueError::new_err("spec.module_path is required"))?
        .extract()?;
    let deps: Vec<String> = match spec.get_item("dependencies")? {
        Some(v) => v.extract()?,
        None => Vec::new(),
    };
    let mut dependencies = Vec::with_capacity(deps.len());
    for (i, d) in deps.iter().enumerate() {
        dependencies.push(
            Requirement::parse(d)
                .map_err(|e| PyValueError::new_err(format!("dependencies[{i}]: {d:?}: {e}")))?,
        );
    }
    let shared_raw: Vec<String> = match spec.get_item("shared")? {
        Some(v) if !v.is_none() => v.extract()?,
        _ => Vec::new(),
    };
    let mut shared = Vec::with_capacity(shared_raw.len());
    for (i, d) in shared_raw.iter().enumerate() {
        shared.push(
            Requirement::parse(d)
                .map_err(|e| PyValueError::new_err(format!("shared[{i}]: {d:?}: {e}")))?,
        );
    }
    let share: Vec<String> = match spec.get_item("share")? {
        Some(v) if !v.is_none() => v.extract()?,
        _ => Vec::new(),
    };
    let share_torch: bool = match spec.get_item("share_torch")? {
        Some(v) => v.extract()?,
        None => false,
    };
    let extra: Vec<String> = match spec.get_item("extra_index_urls")? {
        Some(v) if !v.is_none() => v.extract()?,
        _ => Vec::new(),
    };
    let manifest = Manifest {
        name: name.clone(),
        version: None,
        dependencies,
        isolated: true,
        share_torch,
        shared,
        python: opt_str(spec, "python")?,
        index: IndexOptions {
            extra_index_urls: extra,
            ..IndexOptions::default()
        },
        sandbox: SandboxSettings::default(),
    };
    let pack = Pack {
        dir: module_path.clone(),
        manifest_path: module_path.join("<ExtensionConfig>"),
        format: ManifestFormat::Manifest,
        manifest,
    };
    let opts = Options {
        root: opt_str(spec, "venv_root")?.map(PathBuf::from),
        host_python: opt_str(spec, "host_python")?.map(PathBuf::from),
        uv: opt_str(spec, "uv")?.map(PathBuf::from),
        uv_cache_dir: None,
        offline: spec
            .get_item("offline")?
            .map(|v| v.is_truthy())
            .transpose()?
            .unwrap_or(false),
        compile_bytecode: spec
            .get_item("compile_bytecode")?
            .map(|v| v.is_truthy())
            .transpose()?
            .unwrap_or(false),
        share,
    };
    let result = py.detach(|| {
        let sink = |e: &Event| {
            if let Some(cb) = &on_event {
                Python::attach(|py| {
                    let v = serde_json::to_value(e).unwrap_or(serde_json::Value::Null);
                    if let Ok(obj) = json_to_py(py, &v) {
                        if let Err(err) = cb.call1(py, (obj,)) {
                            err.print(py);
                        }
                    }
                });
            }
        };
        let p = Provisioner::new(opts)?;
        let venv = p.provision(&pack, &sink)?;
        Ok::<_, nodecell_provision::Error>(LaunchSettings::new(&pack, &venv))
    });
    let ls = result.map_err(|e| PyValueError::new_err(e.to_string()))?;
    let ro: Vec<String> = ls
        .readonly_paths
        .iter()
        .filter(|p| **p != module_path)
        .map(|p| p.display().to_string())
        .collect();
    let out = PyDict::new(py);
    out.set_item("path", ls.venv.path.display().to_string())?;
    out.set_item("python", ls.python.display().to_string())?;
    out.set_item("key", &ls.venv.key)?;
    out.set_item("cache_hit", ls.venv.cache_hit)?;
    out.set_item("ro_paths", ro)?;
    let pk = PyDict::new(py);
    for p in &ls.venv.info.packages {
        pk.set_item(&p.name, &p.version)?;
    }
    out.set_item("packages", pk)?;
    out.set_item("python_version", &ls.venv.info.python_version)?;
    Ok(out.into_any().unbind())
}

/// The distribution names a requirements file asks for (a host app's own
/// `requirements.txt`), normalized, in order; none when it cannot be read.
#[pyfunction]
pub fn requirement_names(path: PathBuf) -> Vec<String> {
    nodecell_provision::migrate::app::requirement_names(&path)
}

/// A distribution name normalized as PEP 503 says (lower case, runs of `-`, `_`, `.` one `-`):
/// `nodecell_provision::requirement::normalize_name`, the one definition.
#[pyfunction]
pub fn normalize_name(name: &str) -> String {
    nodecell_provision::requirement::normalize_name(name)
}

/// The normalized distribution name a dependency string asks for, as provisioning parses it;
/// `None` for a string that does not parse or names no distribution (a bare URL or path).
#[pyfunction]
pub fn requirement_name(spec: &str) -> Option<String> {
    let name = nodecell_provision::Requirement::parse(spec).ok()?.name?;
    Some(nodecell_provision::requirement::normalize_name(&name))
}

/// nodecell's state folder (pack layers): see `nodecell_provision::state::default_root`.
#[pyfunction]
pub fn state_root() -> PathBuf {
    nodecell_provision::state::default_root()
}
