"""The ``pyisolate._internal`` names applications import (upstream ComfyUI's isolation
layer, pyisolate's own test host), mirrored on nodecell. Modules named ``_nc_*`` are
nodecell's plumbing behind them and have no pyisolate counterpart."""
