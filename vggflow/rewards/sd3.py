"""The SD3 suite's rewards: Aesthetic score, HPSv2.1 and PickScore, as differentiable functions.

Each takes images of shape (B, 3, H, W) in [0, 1] and B prompts and returns (B,) float32 scores,
computed in fp32 with frozen parameters and no ``no_grad`` on the image path, so gradients reach
the images. Text embeddings are computed once per distinct prompt, without gradients, and cached.

* ``aesthetic``: LAION aesthetic predictor v2 (about 4-7 on real images, higher is better):
  transformers ``CLIPModel`` (openai/clip-vit-large-patch14) image embedding, L2-normalised, then
  the linear MLP ``sac+logos+ava1-l14-linearMSE.pth``. Prompts are ignored.
* ``hpsv2``: HPS v2.1, the cosine between the normalised open_clip ViT-H-14 image and text
  features, no logit scale (about 0.2-0.35; the paper's tables report it x10).
* ``pickscore``: PickScore_v1, ``logit_scale.exp()`` (100) x the cosine between the normalised
  transformers ``CLIPModel`` image and text embeddings (about 18-23).

Preprocessing is done in torch on the [0, 1] tensor, as in the official VGG-Flow code, with these
differences from the official (non-differentiable) scorers, which start from 8-bit PIL images:

* All: no rounding to 8-bit pixels; fp32 throughout (the official HPSv2 scorer runs under amp).
* Aesthetic (like VGG-Flow, bit for bit): ``F.interpolate(bicubic, antialias=False)`` straight to
  the CLIP image size (224). ``CLIPProcessor`` (DDPO) resizes the shorter side with PIL bicubic,
  which antialiases, then centre-crops: non-square images are squashed here, cropped there.
* HPSv2 and PickScore (like VGG-Flow): open_clip's ``ResizeMaxSize`` done on the tensor - bicubic
  with antialias to make the longer side the model's image size (224), zero padding (black, before
  normalisation) to a square - then OpenAI mean/std. The official HPSv2 scorer does the same with
  PIL's bicubic; for square images both are a plain resize. PickScore's official processor
  (laion/CLIP-ViT-H-14) resizes the shorter side and centre-crops instead: non-square images are
  padded here, cropped there. We pad even when the longer side already has the right size, where
  ``ResizeMaxSize`` leaves the image non-square.
* PickScore text: the processor directory's ``CLIPTokenizer`` (77 tokens, max-length padding,
  truncation) with its attention mask, as the official scorer; VGG-Flow feeds open_clip's tokenizer
  instead. The ids agree up to the end token, where the text embedding is pooled under a causal
  mask, so the padding id does not matter - except that a tokenizer whose pad token is "!" (id 0)
  splits every "!" out of the prompt as a pad token, where open_clip merges e.g. "!!" into one.

The builders read ``resources["rewards"][name]``: ``aesthetic`` -> ``{"clip", "mlp"}``, ``hpsv2``
-> ``{"checkpoint", "model"}`` (+ optional ``"model_config"``, an open_clip model-config JSON whose
file stem is the model name, for tiny test models), ``pickscore`` -> ``{"model", "processor"}``.
:func:`reward_paths` gives the standard layout of the real files; :func:`write_random_reward_files`
writes random-weight stand-ins (tiny, or of the real shapes) in the same formats.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vggflow.rewards.base import REWARDS

REWARD_NAMES = ("aesthetic", "hpsv2", "pickscore")
FETCH_HINT = "the SD3 reward files are fetched by `snakemake fetch_sd3_resources`"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEXT_CONTEXT = 77

# open_clip config of the tiny HPS stand-in; registered under its file stem.
TINY_OPEN_CLIP_MODEL = "vggflow-tiny-ViT"
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": TEXT_CONTEXT, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 2},
}


def reward_paths(root: str | Path) -> dict[str, dict[str, str]]:
    """The ``resources["rewards"]`` mapping for the standard layout of the files under ``root``."""
    root = Path(root)
    return {
        "aesthetic": {"clip": str(root / "clip-vit-large-patch14"),
                      "mlp": str(root / "sac+logos+ava1-l14-linearMSE.pth")},
        "hpsv2": {"checkpoint": str(root / "HPS_v2.1_compressed.pt"), "model": "ViT-H-14"},
        "pickscore": {"model": str(root / "PickScore_v1"),
                      "processor": str(root / "CLIP-ViT-H-14-laion2B-s32B-b79K")},
    }


# ---------------------------------------------------------------------------------------------
# Checks with errors that name the path, what was expected and where the files come from.


def _check_exists(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path}; {FETCH_HINT}")


def _check_kind(path: str | Path, what: str, directory: bool) -> Path:
    path = Path(path)
    _check_exists(path, what)
    if path.is_dir() != directory:
        kind = "a directory" if directory else "a file"
        raise ValueError(f"{path} is not {kind}; expected {what}; {FETCH_HINT}")
    return path


def _check_file(path: str | Path, what: str) -> Path:
    return _check_kind(path, what, directory=False)


def _check_dir(path: str | Path, what: str) -> Path:
    return _check_kind(path, what, directory=True)


def _check_clip_dir(path: str | Path, what: str) -> Path:
    """A transformers checkpoint directory whose config.json has model_type "clip"."""
    path = _check_dir(path, what)
    config = path / "config.json"
    try:
        model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    except (json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"{config} is not a model config JSON; expected {what}") from error
    if model_type != "clip":
        found = f"model_type {model_type!r}" if config.is_file() else "no config.json"
        raise ValueError(f"{path} has {found}; expected {what}, a transformers CLIPModel "
                         f"checkpoint directory (model_type 'clip'); {FETCH_HINT}")
    return path


def _check_tokenizer_dir(path: str | Path, what: str) -> Path:
    path = _check_dir(path, what)
    if not ((path / "tokenizer.json").is_file()
            or ((path / "vocab.json").is_file() and (path / "merges.txt").is_file())):
        raise ValueError(f"{path} has neither tokenizer.json nor vocab.json + merges.txt; "
                         f"expected {what}; {FETCH_HINT}")
    return path


def _paths_for(resources: dict, name: str, required: Sequence[str]) -> dict:
    rewards = resources.get("rewards", {})
    if name not in rewards:
        raise KeyError(f"reward {name!r} has no entry in resources.rewards "
                       f"(present: {', '.join(rewards) or 'none'})")
    paths = rewards[name]
    missing = [key for key in required if key not in paths]
    if missing:
        raise KeyError(f"resources.rewards.{name} lacks {', '.join(missing)} "
                       f"(it needs {', '.join(required)})")
    return paths


# ---------------------------------------------------------------------------------------------
# Shared pieces.


def _normalize(images: Tensor) -> Tensor:
    mean = images.new_tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def resize_max_size(images: Tensor, size: int) -> Tensor:
    """open_clip's ``ResizeMaxSize(size, bicubic, fill=0)`` on a (B, C, H, W) batch.

    The longer side becomes ``size`` (bicubic, antialiased), then zero padding centres the image
    in a ``size`` x ``size`` square.
    """
    height, width = images.shape[-2:]
    scale = size / max(height, width)
    if scale != 1.0:
        new_size = (round(height * scale), round(width * scale))
        images = F.interpolate(images, size=new_size, mode="bicubic", align_corners=False,
                               antialias=True)
    pad_h, pad_w = size - images.shape[-2], size - images.shape[-1]
    if pad_h or pad_w:
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    return images


def _embeds(output) -> Tensor:
    """transformers 5 returns a ``BaseModelOutputWithPooling`` from ``get_*_features``."""
    return output if torch.is_tensor(output) else output.pooler_output


def clip_image_embeds(clip: nn.Module, images: Tensor) -> Tensor:
    """Projected CLIP image embeddings (not normalised) of [0, 1] images: bicubic resize to the
    model's image size (no antialias, as VGG-Flow), OpenAI mean/std."""
    size = clip.config.vision_config.image_size
    x = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False)
    return _embeds(clip.get_image_features(pixel_values=_normalize(x)))


def load_clip(path: str | Path, what: str, device: str | torch.device = "cpu") -> nn.Module:
    """A frozen fp32 transformers CLIPModel from a local checkpoint directory."""
    from transformers import CLIPModel

    path = _check_clip_dir(path, what)
    return _freeze(CLIPModel.from_pretrained(path, dtype=torch.float32, local_files_only=True),
                   device)


class _TextCache:
    """L2-normalised text embeddings per prompt, computed once without gradients."""

    def __init__(self, encode: Callable[[list[str]], Tensor]) -> None:
        self.encode = encode
        self.cache: dict[str, Tensor] = {}

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, one per image, not a string")
        missing = list(dict.fromkeys(p for p in prompts if p not in self.cache))
        if missing:
            with torch.no_grad():
                embeds = self.encode(missing).float()
            self.cache.update(zip(missing, F.normalize(embeds, dim=-1)))
        return torch.stack([self.cache[p] for p in prompts])


def _check_batch(images: Tensor, prompts: Sequence[str] | None) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if prompts is not None and len(prompts) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts")


def _freeze(module: nn.Module, device: str | torch.device) -> nn.Module:
    return module.to(device=device, dtype=torch.float32).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Aesthetic.


class AestheticMLP(nn.Module):
    """The LAION improved-aesthetic-predictor head: five linears, dropout, no nonlinearity."""

    def __init__(self, in_features: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: Tensor) -> Tensor:
        return self.layers(embeds)

    @classmethod
    def load(cls, path: str | Path) -> AestheticMLP:
        """Load the .pth state dict; the input width follows ``layers.0.weight``."""
        what = "the aesthetic MLP state dict (sac+logos+ava1-l14-linearMSE.pth)"
        path = _check_file(path, what)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            mlp = cls(state["layers.0.weight"].shape[1])
            mlp.load_state_dict(state)
        except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, TypeError,
                AttributeError) as error:
            raise ValueError(f"{path} is not {what}: {error}") from error
        return mlp


class AestheticReward:
    """LAION aesthetic score of CLIP ViT-L/14 image embeddings; prompts are ignored."""

    name = "aesthetic"

    def __init__(self, clip: str | Path, mlp: str | Path, device: str | torch.device = "cpu"
                 ) -> None:
        self.mlp = _freeze(AestheticMLP.load(mlp), device)
        self.clip = load_clip(clip, "the aesthetic CLIP model (openai/clip-vit-large-patch14)",
                              device)
        embed_dim = self.clip.config.projection_dim
        if self.mlp.layers[0].in_features != embed_dim:
            raise ValueError(f"{mlp} takes {self.mlp.layers[0].in_features}-d embeddings but the "
                             f"CLIP model at {clip} gives {embed_dim}-d ones")
        self.device = torch.device(device)

    def __call__(self, images: Tensor, prompts: Sequence[str] | None = None) -> Tensor:
        _check_batch(images, prompts)
        embeds = clip_image_embeds(self.clip, images.to(self.device))
        return self.mlp(F.normalize(embeds, dim=-1))[:, 0]


# ---------------------------------------------------------------------------------------------
# HPSv2.1.


class HPSv2Reward:
    """HPS v2.1: cosine of open_clip image and text features (no logit scale)."""

    name = "hpsv2"

    def __init__(self, checkpoint: str | Path, model: str = "ViT-H-14",
                 model_config: str | Path | None = None, device: str | torch.device = "cpu"
                 ) -> None:
        import open_clip

        what = f"the HPS v2.1 checkpoint for open_clip {model} (HPS_v2.1_compressed.pt)"
        checkpoint = _check_file(checkpoint, what)
        if model_config is not None:
            model_config = _check_file(model_config, f"the open_clip model config of {model}")
            if model_config.stem != model:
                raise ValueError(f"open_clip names the config {model_config} "
                                 f"{model_config.stem!r}, not {model!r}")
            open_clip.add_model_config(model_config)
        config = open_clip.get_model_config(model)
        if config is None:
            raise ValueError(f"open_clip knows no model {model!r}; give its config JSON as "
                             f"resources.rewards.hpsv2.model_config")
        text_cfg = config.get("text_cfg", {})
        if text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name"):
            raise ValueError(f"open_clip model {model!r} has a Hugging Face text tower or "
                             "tokenizer, which would be fetched from the hub")
        try:
            clip = open_clip.create_model(model, pretrained=str(checkpoint), precision="fp32",
                                          device="cpu")
        except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError) as error:
            raise ValueError(f"{checkpoint} is not {what}: {error}") from error
        self.model = _freeze(clip, device)
        self.tokenizer = open_clip.get_tokenizer(model, context_length=TEXT_CONTEXT)
        self.image_size = self.model.visual.image_size[0]
        self.device = torch.device(device)
        self.text = _TextCache(self._encode_text)

    def _encode_text(self, prompts: list[str]) -> Tensor:
        return self.model.encode_text(self.tokenizer(prompts).to(self.device))

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        _check_batch(images, prompts)
        x = resize_max_size(images.to(device=self.device, dtype=torch.float32), self.image_size)
        image_features = self.model.encode_image(_normalize(x), normalize=True)
        return (image_features * self.text(prompts)).sum(dim=-1)


# ---------------------------------------------------------------------------------------------
# PickScore.


class PickScoreReward:
    """PickScore_v1: ``logit_scale.exp()`` x cosine of CLIP image and text embeddings."""

    name = "pickscore"

    def __init__(self, model: str | Path, processor: str | Path,
                 device: str | torch.device = "cpu") -> None:
        from transformers import CLIPTokenizer

        processor = _check_tokenizer_dir(
            processor, "the PickScore processor's CLIP tokenizer "
                       "(laion/CLIP-ViT-H-14-laion2B-s32B-b79K)")
        self.model = load_clip(model, "the PickScore model (yuvalkirstain/PickScore_v1)", device)
        self.tokenizer = CLIPTokenizer.from_pretrained(processor, model_max_length=TEXT_CONTEXT,
                                                       local_files_only=True)
        self.image_size = self.model.config.vision_config.image_size
        self.device = torch.device(device)
        self.text = _TextCache(self._encode_text)

    def _encode_text(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True,
                                max_length=TEXT_CONTEXT, return_tensors="pt").to(self.device)
        return _embeds(self.model.get_text_features(input_ids=tokens.input_ids,
                                                    attention_mask=tokens.attention_mask))

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        _check_batch(images, prompts)
        x = resize_max_size(images.to(device=self.device, dtype=torch.float32), self.image_size)
        embeds = _embeds(self.model.get_image_features(pixel_values=_normalize(x)))
        cosine = (F.normalize(embeds, dim=-1) * self.text(prompts)).sum(dim=-1)
        return self.model.logit_scale.exp() * cosine


# ---------------------------------------------------------------------------------------------
# Registry and tiny stand-ins.


@REWARDS.register("aesthetic")
def build_aesthetic(resources: dict, device: str) -> AestheticReward:
    paths = _paths_for(resources, "aesthetic", ("clip", "mlp"))
    return AestheticReward(paths["clip"], paths["mlp"], device=device)


@REWARDS.register("hpsv2")
def build_hpsv2(resources: dict, device: str) -> HPSv2Reward:
    paths = _paths_for(resources, "hpsv2", ("checkpoint",))
    return HPSv2Reward(paths["checkpoint"], paths.get("model", "ViT-H-14"),
                       paths.get("model_config"), device=device)


@REWARDS.register("pickscore")
def build_pickscore(resources: dict, device: str) -> PickScoreReward:
    paths = _paths_for(resources, "pickscore", ("model", "processor"))
    return PickScoreReward(paths["model"], paths["processor"], device=device)


# CLIP towers of the random reward models: tiny (32-d, 2 layers, 32 x 32 images) and the real
# models' shapes (``medium``, as the SD3-medium pipeline shape): CLIP ViT-L/14 for the Aesthetic
# score, CLIP ViT-H/14 for PickScore and (open_clip's ``ViT-H-14``) HPSv2.
_TINY_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4}
RANDOM_CLIP_CONFIGS = {
    "tiny": {"projection_dim": 32, "text": _TINY_TOWER,
             "vision": {**_TINY_TOWER, "image_size": 32, "patch_size": 8}},
    "vit-l-14": {"projection_dim": 768,
                 "text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "hidden_act": "quick_gelu"},
                 "vision": {"hidden_size": 1024, "intermediate_size": 4096,
                            "num_hidden_layers": 24, "num_attention_heads": 16,
                            "image_size": 224, "patch_size": 14, "hidden_act": "quick_gelu"}},
    "vit-h-14": {"projection_dim": 1024,
                 "text": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                          "num_attention_heads": 16, "hidden_act": "gelu"},
                 "vision": {"hidden_size": 1280, "intermediate_size": 5120,
                            "num_hidden_layers": 32, "num_attention_heads": 16,
                            "image_size": 224, "patch_size": 14, "hidden_act": "gelu"}},
}
REWARD_SHAPES = ("tiny", "medium")


def random_clip_model(kind: str = "tiny"):
    """A CLIPModel with random weights, the real 49408-token vocabulary and the towers of
    :data:`RANDOM_CLIP_CONFIGS` ``[kind]``."""
    from transformers import CLIPConfig, CLIPModel

    spec = RANDOM_CLIP_CONFIGS[kind]
    config = CLIPConfig(
        projection_dim=spec["projection_dim"],
        text_config={**spec["text"], "vocab_size": 49408, "max_position_embeddings": TEXT_CONTEXT,
                     "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407},
        vision_config=spec["vision"],
    )
    return CLIPModel(config)


def write_random_reward_files(name: str, directory: str | Path, seed: int = 0,
                              shape: str = "tiny", device: str = "cpu") -> dict:
    """Write random-weight versions of reward ``name``'s files into ``directory``: ``tiny``
    (32-d towers) or ``medium`` (the real models' shapes), drawn on ``device``.

    The files have the real files' names and formats (see :func:`reward_paths`), so the random
    reward loads through the same builder. Returns the ``resources["rewards"][name]`` mapping.
    """
    if name not in REWARD_NAMES:
        raise ValueError(f"unknown SD3 reward {name!r}; known: {', '.join(REWARD_NAMES)}")
    if shape not in REWARD_SHAPES:
        raise ValueError(f"unknown reward shape {shape!r}; known: {', '.join(REWARD_SHAPES)}")
    from vggflow.utils.clip_tokenizer import write_clip_tokenizer

    tiny = shape == "tiny"
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = reward_paths(directory)[name]
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        if name == "aesthetic":
            clip = random_clip_model("tiny" if tiny else "vit-l-14")
            clip.save_pretrained(paths["clip"])
            write_clip_tokenizer(paths["clip"])
            torch.save({k: v.cpu() for k, v in AestheticMLP(clip.config.projection_dim)
                        .state_dict().items()}, paths["mlp"])
        elif name == "hpsv2":
            import open_clip

            if tiny:
                config_path = directory / f"{TINY_OPEN_CLIP_MODEL}.json"
                config_path.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG, indent=2))
                model = open_clip.CLIP(**TINY_OPEN_CLIP_CONFIG)
                paths = {**paths, "model": TINY_OPEN_CLIP_MODEL, "model_config": str(config_path)}
            else:
                model = open_clip.create_model(paths["model"], pretrained=None)
            torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}},
                       paths["checkpoint"])
        else:
            random_clip_model("tiny" if tiny else "vit-h-14").save_pretrained(paths["model"])
            write_clip_tokenizer(paths["processor"])
    return paths
