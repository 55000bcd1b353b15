//! Integration tests of `nodecell run` and `nodecell check` (issue 2).
