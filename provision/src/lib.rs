//! nodecell's pack environments. (Being built: see issue 4.)
#![deny(missing_docs)]
