//! Typed errors. Each carries what a person needs to fix the problem: the
//! manifest file, line and field; the interpreter; uv's own error text.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A manifest that could not be found, read or understood.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The pack folder has none of the manifest files.
    #[error("no manifest in {}: looked for {}", dir.display(), list(tried))]
    NotFound {
        /// The pack folder.
        dir: PathBuf,
        /// Every file that was tried, in order.
        tried: Vec<PathBuf>,
    },
    /// The file exists but could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The manifest file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file's content is wrong: syntax, unknown key, wrong type, bad
    /// requirement, bad size, missing field.
    #[error("{}", InvalidDisplay { path, line: *line, column: *column, field, message })]
    Invalid {
        /// The manifest file.
        path: PathBuf,
        /// 1-based line, where the parser gives one.
        line: Option<usize>,
        /// 1-based column, where the parser gives one.
        column: Option<usize>,
        /// The field, as a path: `dependencies[3]`, `sandbox.max_memory`,
        /// `tool.nodecell.share_torch`; empty for a syntax error.
        field: String,
        /// What is wrong and what was expected.
        message: String,
    },
}

struct InvalidDisplay<'a> {
    path: &'a Path,
    line: Option<usize>,
    column: Option<usize>,
    field: &'a str,
    message: &'a str,
}

impl fmt::Display for InvalidDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ManifestError {
    /// The manifest file (or pack folder, for [`ManifestError::NotFound`]).
    pub fn path(&self) -> &Path {
        match self {
            ManifestError::NotFound { dir, .. } => dir,
            ManifestError::Read { path, .. } | ManifestError::Invalid { path, .. } => path,
        }
    }

    /// The offending field (`dependencies[1]`), if the error is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ManifestError::Invalid { field, .. } if !field.is_empty() => Some(field),
            _ => None,
        }
    }

    /// The 1-based line, if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ManifestError::Invalid { line, .. } => *line,
            _ => None,
        }
    }

    /// What was expected (the part of the message from "expected" on).
    pub fn expected(&self) -> Option<&str> {
        match self {
            ManifestError::Invalid { message, .. } => {
                message.find("expected").map(|i| &message[i..])
            }
            _ => None,
        }
    }
}

/// Anything that can go wrong while provisioning a pack.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The pack's manifest is missing or wrong.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// No usable interpreter for the spec.
    #[error("python interpreter {spec:?}: {reason}")]
    Interpreter {
        /// The path or version asked for.
        spec: String,
        /// Why it cannot be used (lists what was tried).
        reason: String,
    },
    /// uv was not found.
    #[error("uv not found; looked at:\n  {}\n(install it with `pip install uv`, put it on PATH, or set NODECELL_UV)", tried.join("\n  "))]
    UvNotFound {
        /// Every place searched, in order: paths, and what the host Python's
        /// `uv` package answered.
        tried: Vec<String>,
    },
    /// uv ran and failed; `stderr` is uv's own error text.
    #[error("{pack}: `{command}` failed ({status}):\n{stderr}")]
    Uv {
        /// The pack's name.
        pack: String,
        /// The command line, for reproducing it by hand.
        command: String,
        /// Exit status as text.
        status: String,
        /// Everything uv wrote on stderr.
        stderr: String,
    },
    /// `share_torch: true` but the host's torch cannot be shared.
    #[error("{pack}: share_torch: {reason}")]
    SharedTorch {
        /// The pack's name.
        pack: String,
        /// Why not.
        reason: String,
    },
    /// The venv cache root cannot be used.
    #[error("venv root {}: {reason}", path.display())]
    Root {
        /// The root folder.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A file-system operation failed.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The path operated on.
        path: PathBuf,
        /// What was being done (`create`, `rename`, `lock`, ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        op: &'static str,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, op, source }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
