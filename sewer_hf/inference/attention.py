"""Where the model looks: the DINO-style attention map of the last layer's CLS token.

The exported classifier is a plain transformers ViT. Its default attention kernel (sdpa)
returns no attention weights, so a second copy is loaded with `attn_implementation="eager"`
and run with `output_attentions=True`. The map is the last layer's CLS -> patch attention,
averaged over heads, on the patch grid; `overlay` upsamples it to the image and blends a
colour map over it.
"""
from __future__ import annotations

import numpy as np

from sewer_hf.data import decode_rgb

OVERLAY_ALPHA = 0.5
OVERLAY_CMAP = "inferno"


class AttentionExplainer:
    """Scores and the CLS attention map of one image, from the same weights as `classifier`
    (a `sewer_hf.inference.predict.SewerClassifier`) and its preprocessing."""

    def __init__(self, classifier) -> None:
        from transformers import AutoModelForImageClassification

        self.classifier = classifier
        self.model = AutoModelForImageClassification.from_pretrained(
            classifier.model_dir, attn_implementation="eager").to(classifier.device).eval()
        self.patch = int(self.model.config.patch_size)

    def explain(self, image) -> tuple[np.ndarray, np.ndarray]:
        """(17 sigmoid scores, attention map on the patch grid (rows, cols), summing to 1)."""
        import torch

        clf = self.classifier
        array = clf.preprocess(image)
        pixels = torch.from_numpy(array[None]).permute(0, 3, 1, 2)
        with torch.inference_mode():
            out = self.model(pixel_values=clf.pixel_values(pixels), output_attentions=True)
        if not out.attentions:
            raise RuntimeError("the model returned no attention weights (needs attn_implementation='eager')")
        last = out.attentions[-1][0]  # (heads, tokens, tokens)
        cls_to_patches = last[:, 0, 1:].mean(dim=0)  # average over heads
        rows, cols = array.shape[0] // self.patch, array.shape[1] // self.patch
        grid = cls_to_patches.reshape(rows, cols).float().cpu().numpy()
        return torch.sigmoid(out.logits[0].float()).cpu().numpy(), grid / max(float(grid.sum()), 1e-12)


def overlay(image, attention: np.ndarray, alpha: float = OVERLAY_ALPHA, cmap: str = OVERLAY_CMAP):
    """The image with the attention map (any grid) upsampled, normalised to 0..1 and blended."""
    import matplotlib
    from PIL import Image

    base = decode_rgb(image, strict=True)  # the pixels the scores were computed from
    span = float(attention.max() - attention.min())
    norm = (attention - attention.min()) / span if span > 0 else np.zeros_like(attention)
    small = Image.fromarray((norm * 255).astype(np.uint8), mode="L")
    heat = np.asarray(small.resize(base.size, Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    colours = (matplotlib.colormaps[cmap](heat)[..., :3] * 255).astype(np.uint8)
    return Image.blend(base, Image.fromarray(colours), alpha)
