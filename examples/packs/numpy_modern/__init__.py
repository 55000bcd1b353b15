"""A pack that needs numpy 2.x: reports the numpy it sees and image statistics."""
import numpy as np


class ImageStatsModern:
    """Mean and standard deviation of an IMAGE, computed with this pack's numpy (2.x)."""

    CATEGORY = "examples/numpy"
    RETURN_TYPES = ("STRING", "FLOAT")
    RETURN_NAMES = ("numpy_version", "mean")
    FUNCTION = "stats"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def stats(self, image):
        arr = np.asarray(image)
        # np.astype is new in numpy 2.1: this node really needs 2.x.
        return (np.__version__, float(np.astype(arr, np.float64).mean()))


NODE_CLASS_MAPPINGS = {"ImageStatsModern": ImageStatsModern}
NODE_DISPLAY_NAME_MAPPINGS = {"ImageStatsModern": "Image stats (numpy 2)"}
