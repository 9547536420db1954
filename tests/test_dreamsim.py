"""The DreamSim feature backend, on a DreamSim folder of random weights in the real file layout:
the release zip's files (three ViT-B/16 state dicts, the ensemble LoRA) and a stand-in for torch
hub's DINO repository whose ``dino_vitb16`` builds DINO's ViT-B/16 as the real hubconf does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from vggflow.config import DREAMSIM_FILES
from vggflow.metrics.diversity import diversity
from vggflow.metrics.features import DreamSimFeatures, torch_hub_dir_kept

REAL_ROOT = os.environ.get("VGGFLOW_SD3_RESOURCES")  # real files: <root>/dreamsim

HUBCONF = '''"""Stand-in for facebookresearch/dino's hubconf (tests): DINO's ViT-B/16 from
the cached checkpoint, as the real one loads it after downloading."""
import os

import torch
from dreamsim.feature_extraction.vision_transformer import vit_base


def dino_vitb16(pretrained=True, **kwargs):
    model = vit_base(patch_size=16, num_classes=0, **kwargs)
    if pretrained:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", "dino_vitbase16_pretrain.pth")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model
'''


def write_random_dreamsim(folder) -> None:
    """DreamSim's ensemble folder with random weights (about 1 GB)."""
    from dreamsim.config import dreamsim_args
    from dreamsim.feature_extraction.vision_transformer import DINOHead, vit_base
    from dreamsim.model import PerceptualModel
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    hub = folder / "facebookresearch_dino_main"
    hub.mkdir(parents=True)
    (hub / "hubconf.py").write_text(HUBCONF)
    (folder / "checkpoints").mkdir()
    torch.save(vit_base(patch_size=16, num_classes=0).state_dict(),
               folder / "checkpoints" / "dino_vitbase16_pretrain.pth")
    head = DINOHead(768, 2048).state_dict()
    head["last_layer.weight"] = torch.randn(2048, 256)
    torch.save({"student": {f"module.head.{k}": v for k, v in head.items()}},
               folder / "dino_vitb16_pretrain.pth")
    for name in ("open_clip_vitb16_pretrain.pth.tar", "clip_vitb16_pretrain.pth.tar"):
        vit = vit_base(patch_size=16)
        vit.pos_drop = torch.nn.LayerNorm(vit.embed_dim)
        torch.save({"state_dict": {**vit.state_dict(), "proj": torch.randn(768, 512) / 28}},
                   folder / name)
    model = PerceptualModel(**dreamsim_args["model_config"]["ensemble"], device="cpu",
                            load_dir=str(folder), normalize_embeds=True)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=4, lora_dropout=0.0, bias="none",
                                            target_modules=["qkv"]))
    for name, param in lora.named_parameters():
        if "lora_B" in name:
            param.data.normal_(std=0.05)
    lora.save_pretrained(folder / "ensemble_lora")


@pytest.fixture(scope="module")
def dreamsim_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dreamsim")
    with torch_hub_dir_kept():  # dreamsim's model points torch hub at the folder
        write_random_dreamsim(folder)
    assert all((folder / name).exists() for name in DREAMSIM_FILES)
    return folder


def test_dreamsim_diversity_is_the_mean_pairwise_dreamsim_distance(dreamsim_folder):
    """diversity() of the embeddings equals the mean of DreamSim's own distance over every pair
    (unit vectors: the total variance is half the mean squared distance, 1 - cosine); identical
    images give 0; the LoRA was loaded (the embedding changes without it)."""
    features = DreamSimFeatures(str(dreamsim_folder))
    torch.manual_seed(1)
    images = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        embeds = features(images)
        x = features.resize(images)
        pairs = [(i, j) for i in range(4) for j in range(4) if i != j]
        distances = features.model(x[[i for i, _ in pairs]], x[[j for _, j in pairs]])
        with features.model.disable_adapter():
            without_lora = features.model.embed(x)
    assert embeds.shape == (4, 1792)
    assert torch.allclose(embeds.norm(dim=1), torch.ones(4), atol=1e-5)
    assert distances.min() > 1e-3  # random images are apart
    assert diversity(embeds.numpy()) == pytest.approx(distances.mean().item(), rel=1e-4)
    assert not torch.allclose(without_lora, embeds, atol=1e-4)
    same = features(images[:1].expand(3, -1, -1, -1))
    assert diversity(same.numpy()) == pytest.approx(0.0, abs=1e-10)
    assert torch.hub.get_dir() != str(dreamsim_folder)  # torch hub's directory restored


def test_dreamsim_folder_with_a_missing_file_names_it(dreamsim_folder, tmp_path):
    partial = tmp_path / "dreamsim"
    partial.mkdir()
    (partial / "ensemble_lora").symlink_to(dreamsim_folder / "ensemble_lora")
    with pytest.raises(FileNotFoundError, match="lack .*/dino_vitb16_pretrain.pth.*"
                                                "fetch_sd3_resources"):
        DreamSimFeatures(str(partial))


@pytest.mark.skipif(not REAL_ROOT or not (Path(REAL_ROOT) / "dreamsim").is_dir(),
                    reason="VGGFLOW_SD3_RESOURCES/dreamsim is absent (real DreamSim weights)")
def test_real_dreamsim_matches_its_own_preprocessing_and_tells_images_apart():
    """Real weights: our tensor resize gives DreamSim's PIL-preprocessed embedding (cosine
    distance under 0.02); an image is at distance 0 from itself and far from noise."""
    from PIL import Image

    folder = Path(REAL_ROOT) / "dreamsim"
    features = DreamSimFeatures(str(folder))
    ramp = torch.linspace(0, 1, 256)
    image = torch.stack([ramp[None, :].expand(256, 256), ramp[:, None].expand(256, 256),
                         torch.full((256, 256), 0.3)])
    noise = torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(0))
    ours = features(torch.stack([image, image, noise]))
    pil = Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy())
    import dreamsim

    with torch_hub_dir_kept():
        _, preprocess = dreamsim.dreamsim(pretrained=True, device="cpu", cache_dir=str(folder))
    with torch.no_grad():
        theirs = features.model.embed(preprocess(pil))
    cosine = torch.nn.functional.cosine_similarity
    assert 1 - cosine(ours[:1], theirs).item() < 0.02
    assert 1 - cosine(ours[:1], ours[1:2]).item() < 1e-6
    assert 1 - cosine(ours[:1], ours[2:]).item() > 0.1
