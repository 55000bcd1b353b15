"""Real torch work on IMAGE tensors ([batch, height, width, channels], float 0..1)."""
import torch
import torch.nn.functional as F


class GradientImage:
    """Makes a test image: a smooth colour gradient."""

    CATEGORY = "examples/torch"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 512, "min": 8, "max": 8192}),
                             "height": ("INT", {"default": 512, "min": 8, "max": 8192})}}

    def make(self, width, height):
        y = torch.linspace(0, 1, height).view(height, 1).expand(height, width)
        x = torch.linspace(0, 1, width).view(1, width).expand(height, width)
        img = torch.stack([x, y, (x + y) / 2], dim=-1).unsqueeze(0).contiguous()
        return (img,)


class GaussianBlur:
    """Blurs an IMAGE with a separable Gaussian kernel (torch conv2d)."""

    CATEGORY = "examples/torch"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "blur"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",),
                             "sigma": ("FLOAT", {"default": 2.0, "min": 0.1, "max": 50.0})}}

    def blur(self, image, sigma):
        radius = max(1, int(3 * sigma))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-(t * t) / (2 * sigma * sigma))
        k = k / k.sum()
        x = image.permute(0, 3, 1, 2)  # B C H W
        c = x.shape[1]
        kx = k.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
        ky = k.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
        x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kx, groups=c)
        x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), ky, groups=c)
        return (x.permute(0, 2, 3, 1).contiguous(),)


class TorchInfo:
    """Reports the torch version this pack sees."""

    CATEGORY = "examples/torch"
    RETURN_TYPES = ("STRING",)
    FUNCTION = "info"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def info(self, image):
        return {"ui": {"text": [f"torch {torch.__version__}, image {tuple(image.shape)}"]},
                "result": (torch.__version__,)}


NODE_CLASS_MAPPINGS = {"GradientImage": GradientImage, "GaussianBlur": GaussianBlur, "TorchInfo": TorchInfo}
