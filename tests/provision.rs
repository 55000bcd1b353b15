//! Integration tests of `nodecell provision`, `venv`, `run --pack` (issue 4).
