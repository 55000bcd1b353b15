"""A pack pinned to numpy 1.26.4: reports the numpy it sees and image statistics."""
import numpy as np


class ImageStatsLegacy:
    """Mean and standard deviation of an IMAGE, computed with this pack's numpy."""

    CATEGORY = "examples/numpy"
    RETURN_TYPES = ("STRING", "FLOAT")
    RETURN_NAMES = ("numpy_version", "mean")
    FUNCTION = "stats"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def stats(self, image):
        arr = np.asarray(image)
        return (np.__version__, float(arr.mean()))


NODE_CLASS_MAPPINGS = {"ImageStatsLegacy": ImageStatsLegacy}
NODE_DISPLAY_NAME_MAPPINGS = {"ImageStatsLegacy": "Image stats (numpy 1.26)"}
