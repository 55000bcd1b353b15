"""An empty node pack: the benchmark measures the call path, not the pack."""
