//! The launcher's error type.

use crate::policy::PolicyError;

/// Why a sandbox could not run the command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A policy field or command argument is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The launcher has other threads; user namespaces need a
    /// single-threaded caller (start `nodecell run` as a subprocess).
    #[error("the launcher has {threads} threads; creating a user namespace needs a single-threaded process")]
    NotSingleThreaded {
        /// Threads found.
        threads: usize,
    },
    /// A wall could not be set up (or is missing in required mode).
    #[error("{wall}: {why}")]
    Setup {
        /// The wall's name (see [`crate::Wall::as_str`]).
        wall: String,
        /// Why.
        why: String,
    },
    /// The command could not be executed inside the sandbox.
    #[error("exec: {why}")]
    Exec {
        /// Why (names the program).
        why: String,
        /// 127 not found, 126 not executable.
        code: i32,
    },
}

impl Error {
    /// The exit status `nodecell run` uses for this error: 2 for a bad
    /// flag or policy field, 125 for setup failures, 126/127 for a command
    /// that cannot be executed.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Policy(_) => 2,
            Error::Exec { code, .. } => *code,
            _ => 125,
        }
    }

    /// The wall at fault, when there is one.
    pub fn wall(&self) -> Option<&str> {
        match self {
            Error::Setup { wall, .. } => Some(wall),
            Error::Exec { .. } => Some("exec"),
            _ => None,
        }
    }
}
