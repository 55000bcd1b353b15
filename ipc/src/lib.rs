//! nodecell's host/worker channel. (Being built: see issue 3.)
#![deny(missing_docs)]

pub mod probe {
    //! What this kernel offers the channel (shown by `nodecell check`).

    /// One kernel feature the channel may use.
    #[derive(Debug, Clone)]
    pub struct Feature {
        /// Short name, e.g. `io_uring`, `io_uring futex ops`, `memfd seals`, `pidfd`.
        pub name: String,
        /// Whether it works here.
        pub available: bool,
        /// What was found (version, errno, fallback in use).
        pub detail: String,
    }

    /// Probes the running kernel. Never panics; each failure is a `Feature` with `available: false`.
    pub fn probe() -> Vec<Feature> {
        Vec::new()
    }
}
