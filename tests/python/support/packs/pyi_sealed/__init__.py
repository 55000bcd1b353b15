"""A V1-style node pack for pyisolate's SealedNodeExtension (tests/python/test_compat_pyisolate.py)."""


class Opaque:
    """Not a plain value: crosses back as a RemoteObjectHandle."""

    def __init__(self, n):
        self.n = n


class MakeOpaque:
    RETURN_TYPES = ("OPAQUE", "INT")
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"n": ("INT", {"default": 1})}}

    def run(self, n):
        return (Opaque(n), n + 1)


class ReadOpaque:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"o": ("OPAQUE",)}}

    async def run(self, o):
        return (o.n * 10,)


NODE_CLASS_MAPPINGS = {"MakeOpaque": MakeOpaque, "ReadOpaque": ReadOpaque}
NODE_DISPLAY_NAME_MAPPINGS = {"MakeOpaque": "Make Opaque"}
