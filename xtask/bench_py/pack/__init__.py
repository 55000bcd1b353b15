"""The benchmark's node pack: nothing to import, so load time is the isolation layer's own."""
NODE_CLASS_MAPPINGS = {}
