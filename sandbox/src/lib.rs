//! nodecell's sandbox launcher. (Being built: see issue 2.)
#![deny(missing_docs)]
