"""The SD3 adapter on tiny-sd3 (random weights, real classes and loading code) against diffusers'
own pipeline, sampler and LoRA loader."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile

import pytest
import torch
import yaml
from conftest import REPO

from vggflow.models.sd3 import SD3FlowModel, check_pipeline_dir
from vggflow.models.sd3_random import TINY_RESOLUTION, write_random_sd3_suite
from vggflow.sampling import Guidance, euler_rollout

SETTINGS = {"resolution": TINY_RESOLUTION, "dtype": "float32", "text_encoder_3": False}
PROMPTS = ["a photo of a cat", "a painting of a dog"]


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> dict:
    """Every tiny-sd3 file (pipeline, taesd3, the three rewards, prompts): the resources block."""
    return write_random_sd3_suite(tmp_path_factory.mktemp("tiny_sd3"))


@pytest.fixture
def model(tiny_sd3) -> SD3FlowModel:
    torch.manual_seed(0)
    return SD3FlowModel(tiny_sd3["pipeline"], SETTINGS, 4, 4, "cpu", tiny_sd3["tiny_vae"])


def tiny_sd3_experiment_config(tiny_sd3) -> dict:
    """The .test tiny-sd3 experiment config with this session's tiny-sd3 files."""
    config = yaml.safe_load((REPO / ".test/config_tiny_sd3/config.yaml").read_text())
    config["resources"]["tiny-sd3"] = {**tiny_sd3, "prompts": {"pickscore": tiny_sd3["prompts"]}}
    return config


def tiny_sd3_trainer(tiny_sd3, state_dir, method: str, train: dict, model: dict):
    """A trainer of ``method`` on PickScore with the tiny-sd3 test config, ``train`` and ``model``
    settings on top."""
    from vggflow.config import RunConfig, load_yaml, resolve_run_config
    from vggflow.train import Trainer

    config = tiny_sd3_experiment_config(tiny_sd3)
    config["train"] = {**config["train"], **train}
    config["model"] = {**config["model"], **model}
    resolved = resolve_run_config(config, load_yaml(REPO / f"config/methods/{method}.yaml"),
                                  "pickscore", method, 0)
    return Trainer(RunConfig.from_mapping(resolved), state_dir, threads=2)


def perturb_lora(model: SD3FlowModel, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.transformer.named_parameters():
            if "lora_B" in name:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


def seeded_noise(model: SD3FlowModel, seed: int) -> torch.Tensor:
    return torch.randn(len(PROMPTS), *model.sample_shape,
                       generator=torch.Generator().manual_seed(seed))


def our_latents(model: SD3FlowModel, noise: torch.Tensor, steps: int, scale: float):
    guidance = Guidance(model.encode_prompts(PROMPTS), model.null_condition(len(PROMPTS)), scale)
    return euler_rollout(model.velocity, noise, model.time_grid(steps), guidance, PROMPTS).final


def pipeline_latents(pipe, noise: torch.Tensor, steps: int, scale: float) -> torch.Tensor:
    with torch.no_grad():
        return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=scale, latents=noise,
                    height=TINY_RESOLUTION, width=TINY_RESOLUTION, output_type="latent").images


@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_euler_rollout_equals_the_diffusers_pipeline(model, scale):
    noise = seeded_noise(model, 3)
    ours = our_latents(model, noise, 20, scale)
    theirs = pipeline_latents(model.pipe, noise, 20, scale)
    assert ours.shape == theirs.shape == noise.shape
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), (ours - theirs).abs().max()
    assert not torch.allclose(ours, noise, atol=1e-2)  # the model moved the noise


def test_time_grid_is_the_shifted_sd3_schedule(model):
    grid = model.time_grid(20)
    assert grid.shape == (21,) and grid[0] == 0 and grid[-1] == 1
    assert (grid.diff() > 0).all()
    # shift 3 spends small steps near the noise: the first step is shorter than uniform 1/20
    assert grid[1] < 0.05


def test_adapter_changes_only_velocity_and_gradients_reach_only_the_lora(model):
    x = torch.randn(2, *model.sample_shape)
    t = torch.full((2,), 0.3)
    cond = model.encode_prompts(PROMPTS)
    assert torch.equal(model.velocity(x, t, cond), model.base_velocity(x, t, cond))  # B = 0
    perturb_lora(model)
    assert not torch.allclose(model.velocity(x, t, cond), model.base_velocity(x, t, cond))
    model.decode(model.velocity(x, t, cond)).sum().backward()
    with_grad = {n for n, p in model.transformer.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert all(p.dtype == torch.float32 for p in model.adapter().parameters() if p.requires_grad)


def test_the_lora_is_switched_by_its_own_layers_and_only_on_a_change(tiny_sd3, monkeypatch):
    """base_velocity switches the LoRA layers off and on through peft's per-layer switch, never
    the transformer-wide one (a walk over every module: about 4 ms at SD3 medium's 1788, which
    checkpointing paid twice per recomputed block); switching to the current state does nothing,
    so the LoRA loss's recomputed blocks switch nothing."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    torch.manual_seed(0)
    model = SD3FlowModel(tiny_sd3["pipeline"], {**SETTINGS, "gradient_checkpointing": True},
                         4, 4, "cpu", tiny_sd3["tiny_vae"])
    perturb_lora(model)
    switches = []
    switch = BaseTunerLayer.enable_adapters
    monkeypatch.setattr(BaseTunerLayer, "enable_adapters",
                        lambda layer, enabled: switches.append(enabled) or switch(layer, enabled))
    for name in ("enable_adapters", "disable_adapters"):
        monkeypatch.setattr(model.transformer, name,
                            lambda *args, name=name: pytest.fail(f"{name} called"))
    layers = sum(isinstance(m, BaseTunerLayer) for m in model.transformer.modules())
    x = torch.randn(2, *model.sample_shape)
    t = torch.full((2,), 0.3)
    cond = model.encode_prompts(PROMPTS)
    with torch.no_grad():
        lora_on = model.velocity(x, t, cond)
        base = model.base_velocity(x, t, cond)
    assert layers == 4 and switches == [False] * layers + [True] * layers
    assert not torch.allclose(lora_on, base)
    switches.clear()
    model.velocity(x, t, cond).sum().backward()  # blocks recomputed with the LoRA on, as it is
    assert switches == []
    torch.testing.assert_close(model.velocity(x, t, cond), lora_on)


def test_a_recomputed_block_switches_only_its_own_lora_layers(tmp_path, monkeypatch):
    """A checkpointed vector-Jacobian product through base_velocity (the adjoint's; LoRA off in
    the forward, back on when the backward runs): each recomputed block switches its own LoRA
    layers off and on, not the whole transformer's (two blocks of four layers here: 16 switches,
    not 32), and the gradient equals the one without checkpointing."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from vggflow.models.sd3_random import SHAPES, write_random_sd3

    monkeypatch.setitem(SHAPES["tiny"]["transformer"], "num_layers", 2)
    files = write_random_sd3(tmp_path)
    gradients, switched = [], []
    switch = BaseTunerLayer.enable_adapters
    monkeypatch.setattr(BaseTunerLayer, "enable_adapters",
                        lambda layer, enabled: switched.append(layer) or switch(layer, enabled))
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = SD3FlowModel(files["pipeline"], {**SETTINGS,
                                                 "gradient_checkpointing": checkpointing},
                             4, 4, "cpu", files["tiny_vae"])
        perturb_lora(model)
        x = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(1))
        x.requires_grad_(True)
        v = model.base_velocity(x, torch.full((2,), 0.3), model.encode_prompts(PROMPTS))
        switched.clear()
        (gradient,) = torch.autograd.grad(v.pow(2).sum(), x)
        gradients.append(gradient)
    blocks = model.transformer.transformer_blocks
    assert len(blocks) == 2 and len(switched) == 2 * 2 * 4
    for block in blocks:  # each block's own four layers, off then on
        own = [layer for layer in switched if any(layer is m for m in block.modules())]
        assert len(own) == 8 and own[:4] == own[4:]
    torch.testing.assert_close(gradients[1], gradients[0])


def test_saved_lora_reproduces_our_samples_in_a_stock_pipeline(model, tiny_sd3, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    perturb_lora(model)
    model.save_adapter(tmp_path / "lora")
    noise = seeded_noise(model, 5)
    ours = our_latents(model, noise, 8, 5.0)
    stock = StableDiffusion3Pipeline.from_pretrained(tiny_sd3["pipeline"], local_files_only=True,
                                                     text_encoder_3=None, tokenizer_3=None)
    without = pipeline_latents(stock, noise, 8, 5.0)
    stock.load_lora_weights(tmp_path / "lora")
    with_lora = pipeline_latents(stock, noise, 8, 5.0)
    assert torch.allclose(ours, with_lora, atol=1e-5, rtol=0), (ours - with_lora).abs().max()
    assert not torch.allclose(ours, without, atol=1e-4)
    # and our own loader restores it into a fresh model
    fresh = SD3FlowModel(tiny_sd3["pipeline"], SETTINGS, 4, 4, "cpu", tiny_sd3["tiny_vae"])
    fresh.load_adapter(tmp_path / "lora")
    assert torch.allclose(our_latents(fresh, noise, 8, 5.0), ours, atol=1e-6, rtol=0)


def test_decoders_give_images_in_the_unit_range(model):
    latents = torch.randn(2, *model.sample_shape)
    for images in (model.decode(latents), model.decode_for_evaluation(latents)):
        assert images.shape == (2, 3, TINY_RESOLUTION, TINY_RESOLUTION)
        assert images.min() >= 0 and images.max() <= 1


def test_bad_pipeline_directories_name_the_problem(tiny_sd3, tmp_path):
    with pytest.raises(FileNotFoundError, match="no model_index.json.*fetch_sd3_resources"):
        check_pipeline_dir(tmp_path / "nothing")
    incomplete = shutil.copytree(tiny_sd3["pipeline"], tmp_path / "incomplete")
    shutil.rmtree(incomplete / "vae")
    with pytest.raises(FileNotFoundError, match="incomplete: no vae"):
        SD3FlowModel(incomplete, SETTINGS, 4, 4)
    wrong = shutil.copytree(tiny_sd3["pipeline"], tmp_path / "wrong")
    index = json.loads((wrong / "model_index.json").read_text())
    (wrong / "model_index.json").write_text(json.dumps({**index,
                                                        "_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="holds a FluxPipeline"):
        check_pipeline_dir(wrong)
    with pytest.raises(ValueError, match="unknown SD3 model setting"):
        SD3FlowModel(tiny_sd3["pipeline"], {**SETTINGS, "resolutoin": 64}, 4, 4)


@pytest.mark.parametrize("method", ["vggflow", "vggflow_pmp", "adjoint_matching", "refl", "draft",
                                    "draft_lv"])
def test_one_update_of_every_method_on_tiny_sd3(tiny_sd3, tmp_path, method):
    from vggflow.train import trainable_parameters

    trainer = tiny_sd3_trainer(tiny_sd3, tmp_path / "state", method, {"max_steps": 1}, {})
    before = {name: {k: v.detach().clone() for k, v in trainable_parameters(m).items()}
              for name, m in trainer.modules.items()}
    row = trainer.update()
    assert trainer.step == 1  # the update counter (it also seeds the next update's draws)
    assert all(torch.isfinite(torch.tensor(v)) for v in row.values()), row
    for name, module in trainer.modules.items():
        after = trainable_parameters(module)
        changed = [k for k, v in after.items() if not torch.equal(v, before[name][k])]
        assert changed, f"{method}: no parameter of {name} changed in one update"
    lora = {k for k in trainable_parameters(trainer.model.adapter())}
    assert lora and all("lora_" in k for k in lora)


def test_feature_networks_of_the_sd3_suites(tiny_sd3, tmp_path, monkeypatch):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from vggflow.metrics.features import ClipFeatures, InceptionFeatures

    images = torch.rand(3, 3, 32, 32)
    clip = ClipFeatures(tiny_sd3["rewards"]["aesthetic"]["clip"])
    assert clip(images).shape == (3, 32)  # the tiny CLIP's projection width
    with pytest.raises(FileNotFoundError, match="FID Inception weights not found at"):
        InceptionFeatures(str(tmp_path / "missing.pth"))
    # a random-weight file in the FID Inception format loads through the real code path
    with monkeypatch.context() as patch:
        patch.setattr(torch, "load", lambda *args, **kwargs: {})
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        random_net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                 feature_extractor_weights_path="unused.pth")
    torch.save(random_net.state_dict(), tmp_path / "inception.pth")
    features = InceptionFeatures(str(tmp_path / "inception.pth"))(images)
    assert features.shape == (3, 2048) and torch.isfinite(features).all()


def test_feature_backends_with_missing_weights_stop_unless_the_fallback_is_chosen(tmp_path):
    from vggflow.config import DREAMSIM_FILES, ConfigError, resolve_feature_backends

    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    resources = {"rewards": {"aesthetic": {"clip": str(clip_dir)}},
                 "features": {"inception": str(tmp_path / "inception.pth")}}
    asked = {"features": ["clip", "inception"]}
    with pytest.raises(ConfigError, match="inception.pth are missing.*feature_fallback: lite0"):
        resolve_feature_backends(asked, resources)
    with_fallback = {**asked, "feature_fallback": "lite0"}
    assert resolve_feature_backends(with_fallback, resources) == ["clip", "lite0"]
    (tmp_path / "inception.pth").write_bytes(b"")
    assert resolve_feature_backends(asked, resources) == ["clip", "inception"]
    # DreamSim is a folder: every file it reads must be there, the missing ones are named
    dreamsim = tmp_path / "dreamsim"
    for name in DREAMSIM_FILES[1:]:
        (dreamsim / name).parent.mkdir(parents=True, exist_ok=True)
        (dreamsim / name).write_bytes(b"")
    resources["features"]["dreamsim"] = str(dreamsim)
    with pytest.raises(ConfigError, match=r"dreamsim/dino_vitb16_pretrain.pth are missing"):
        resolve_feature_backends({"features": ["dreamsim"]}, resources)
    (dreamsim / DREAMSIM_FILES[0]).write_bytes(b"")
    assert resolve_feature_backends({"features": ["dreamsim"]}, resources) == ["dreamsim"]


def two_tiny_sd3_updates(tiny_sd3, state_dir, method: str, train: dict, model: dict):
    """(logged rows, LoRA weights) of two updates of :func:`tiny_sd3_trainer`."""
    from vggflow.train import trainable_parameters

    trainer = tiny_sd3_trainer(tiny_sd3, state_dir, method, train, model)
    rows = [trainer.update() for _ in range(2)]
    weights = {k: v.detach().clone()
               for k, v in trainable_parameters(trainer.model.adapter()).items()}
    return rows, weights


def assert_same_updates(reference, other, differences: tuple[str, ...]) -> None:
    """Logged scalars within 1e-5 relative (1e-6 absolute for the ``differences``, small
    differences of O(1) quantities; else 1e-7), LoRA weights within 1e-6 absolute."""
    (rows_a, weights_a), (rows_b, weights_b) = reference, other
    assert [r.keys() for r in rows_a] == [r.keys() for r in rows_b]
    for a, b in zip(rows_a, rows_b):
        for key in a:
            absolute = 1e-6 if key in differences else 1e-7
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=absolute), key
    assert max((weights_a[k] - weights_b[k]).abs().max().item() for k in weights_a) < 1e-6


@pytest.mark.parametrize("method", ["vggflow", "vggflow_pmp", "adjoint_matching", "refl",
                                    "draft"])
def test_speed_options_keep_the_update_within_rounding(tiny_sd3, tmp_path, method):
    """Gradient checkpointing, AdamW's fused kernel and the LoRA forward in the transformer's
    dtype (fp32 here, so it differs from peft's only in the order of operations): the same
    update, up to float rounding
    (stated tolerance: 1e-5 relative on logged scalars, 1e-6 absolute on VGG-Flow's control norm
    and on LoRA weights). Adjoint
    Matching and VGG-Flow-PMP differentiate the base model (LoRA off) with checkpointing on."""
    results = [two_tiny_sd3_updates(
        tiny_sd3, tmp_path / str(fast), method, {"fused_optimizer": fast},
        {"gradient_checkpointing": fast, "lora_compute_dtype": "model" if fast else "float32"})
        for fast in (False, True)]
    # control_norm is |v - v_base|, a small difference of O(1) velocities
    assert_same_updates(*results, differences=("control_norm",))
    # not vacuous: the updates moved the LoRA (B starts at zero) far beyond the tolerance
    weights_on = results[1][1]
    assert max(w.abs().max().item() for k, w in weights_on.items() if "lora_B" in k) > 1e-4


def test_lora_forward_in_bf16_matches_peft_and_trains_the_fp32_factors():
    """The input-dtype LoRA forward on a bf16 layer: within bf16 rounding of peft's fp32 LoRA
    forward, gradients reach the fp32 factors close to peft's, and off means the base layer."""
    from peft import LoraConfig, inject_adapter_in_model

    from vggflow.models.sd3 import compute_lora_in_input_dtype

    def layer_with_lora():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(64, 48)).to(torch.bfloat16)
        net = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["0"]), net)
        for name, param in net.named_parameters():
            if "lora_" in name:
                param.data = torch.randn_like(param, dtype=torch.float32) * 0.5
        return net

    x = torch.randn(2, 10, 64).to(torch.bfloat16)
    peft_net, ours = layer_with_lora(), layer_with_lora()
    assert compute_lora_in_input_dtype(ours) == 1
    assert type(ours[0]).__name__ == "InputDtypeLoraLinear"
    want, got = peft_net(x), ours(x)
    assert got.dtype == torch.bfloat16
    base = ours[0].base_layer(x)
    layer = ours[0]
    exact = base.float() + (x.float() @ layer.lora_A["default"].weight.t()
                            @ layer.lora_B["default"].weight.t()) * layer.scaling["default"]
    scale = exact.abs().max()
    assert (exact - base.float()).abs().max() > 0.1 * scale  # the LoRA term is not negligible
    # both within a few bf16 roundings (2^-8 relative) of the exact sum
    for out in (want, got):
        assert (out.float() - exact).abs().max() < 2**-6 * scale
    grads = {}
    for name, module, out in (("peft", peft_net, want), ("ours", ours, got)):
        factors = [p for n, p in module.named_parameters() if "lora_" in n]
        grads[name] = torch.autograd.grad(out.float().square().sum(), factors)
        assert all(g.dtype == torch.float32 for g in grads[name])
    for a, b in zip(grads["peft"], grads["ours"]):
        assert torch.allclose(a, b, rtol=3e-2, atol=3e-2 * b.abs().max().item())
    compute_lora_in_input_dtype(ours, enabled=False)  # peft's own forward again
    assert torch.equal(ours(x), peft_net(x))
    ours[0].enable_adapters(False)
    assert torch.equal(ours(x), base)


def test_base_jacobian_difference_resolves_in_bf16_at_the_papers_scale(tiny_sd3):
    """VGG-Flow's J_{v_base} g difference with the flow model in bf16 and g of the size the
    paper's betas give (g = (v_base - v) / beta, 1e-6 per latent entry): along unit-RMS g with
    SD3's step (0.1) it stays near the float64 product, while the former step eps * g (eps 1e-3)
    vanishes in the input's bf16 rounding, and with a larger g gives rounding noise many times
    the product. The forward difference (``fd_scheme: forward``) stays within 20%."""
    from vggflow.methods.vggflow import unit_rms_difference

    def base_velocity(dtype: str):
        model = SD3FlowModel(tiny_sd3["pipeline"], {**SETTINGS, "dtype": dtype}, 4, 4, "cpu",
                             tiny_sd3["tiny_vae"])
        cond = model.encode_prompts(PROMPTS).to(model.dtype)
        t = torch.tensor([0.3, 0.7], dtype=model.dtype)
        return model, lambda y: model.base_velocity(y.to(model.dtype), t, cond).double()

    model, float64 = base_velocity("float64")
    _, bf16 = base_velocity("bfloat16")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(len(PROMPTS), *model.sample_shape, generator=generator, dtype=torch.float64)
    direction = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        exact = unit_rms_difference(float64, x, direction, 1e-6)

        def error(product):
            return ((product - exact).norm() / exact.norm()).item()

        errors = {"unit RMS, step 0.1": error(unit_rms_difference(bf16, x, direction, 0.1)),
                  "unit RMS, step 0.1, forward": error(
                      unit_rms_difference(bf16, x, direction, 0.1, f_at_x=bf16(x))),
                  "unit RMS, step 0.1, forward, float64": error(
                      unit_rms_difference(float64, x, direction, 0.1, f_at_x=float64(x))),
                  **{f"eps * g, rms(g) {scale:g}": error(
                      (bf16(x + 1e-3 * scale * direction) - bf16(x - 1e-3 * scale * direction))
                      / (2e-3 * scale)) for scale in (1e-6, 1e-2)}}
    print("J_vbase g in bf16, relative error against float64:", errors)
    assert errors["unit RMS, step 0.1"] < 0.1, errors
    # fd_scheme: forward: first-order truncation (about 5% here even in float64) and the bf16
    # rounding over half the span make about twice the central difference's error
    assert errors["unit RMS, step 0.1, forward"] < 0.2, errors
    assert errors["eps * g, rms(g) 1e-06"] == pytest.approx(1.0), errors  # the difference is 0
    assert errors["eps * g, rms(g) 0.01"] > 3, errors


def test_packed_joint_attention_computes_what_diffusers_does(tiny_sd3):
    """``model.attention: packed`` joins image and text tokens before the head split: the same
    guided velocity and LoRA gradients as diffusers' processor, up to float rounding."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    from vggflow.models.sd3_attention import PackedJointAttnProcessor

    results = []
    for attention in ("diffusers", "packed"):
        torch.manual_seed(0)
        model = SD3FlowModel(tiny_sd3["pipeline"], {**SETTINGS, "attention": attention}, 4, 4,
                             "cpu", tiny_sd3["tiny_vae"])
        kinds = {type(p) for p in model.transformer.attn_processors.values()}
        expected = PackedJointAttnProcessor if attention == "packed" else JointAttnProcessor2_0
        assert kinds == {expected}, kinds
        perturb_lora(model)
        x = seeded_noise(model, 5)
        guidance = Guidance(model.encode_prompts(PROMPTS), model.null_condition(len(PROMPTS)), 5.0)
        v = guidance.velocity(model.velocity, x, torch.tensor([0.3, 0.8]))
        v.square().mean().backward()
        grads = {k: p.grad.clone() for k, p in model.transformer.named_parameters()
                 if p.requires_grad}
        results.append((v.detach(), grads))
    (v_diffusers, g_diffusers), (v_packed, g_packed) = results
    torch.testing.assert_close(v_packed, v_diffusers, rtol=1e-5, atol=1e-6)
    assert g_packed.keys() == g_diffusers.keys()
    for name in g_diffusers:
        torch.testing.assert_close(g_packed[name], g_diffusers[name], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="model.attention"):
        SD3FlowModel(tiny_sd3["pipeline"], {**SETTINGS, "attention": "flash"}, 4, 4)


GPU_IMAGE_IMPORTS = """
import importlib.abc, importlib.metadata, importlib.util, os, re, sys

def _name(distribution):
    return re.sub(r"[-_.]+", "-", distribution).lower()

def _names(path):
    return {_name(line.split("==")[0].strip()) for line in open(path)
            if line.strip() and not line.startswith("#")}

_image, _wheels = map(_names, os.environ["GPU_PACKAGE_LISTS"].split(":"))
_distributions = importlib.metadata.packages_distributions()

def _on(names, module):
    found = _distributions.get(module)
    return bool(found) and any(_name(d) in names for d in found)

def _importer():
    frame = sys._getframe(2)
    while frame is not None and ("importlib" in frame.f_code.co_filename
                                 or frame.f_globals.get("__name__", "").startswith("importlib")):
        frame = frame.f_back
    return "" if frame is None else frame.f_globals.get("__name__", "").split(".")[0]

class _Missing(importlib.abc.Loader):
    def create_module(self, spec):
        with open(os.environ["GPU_BLOCKED_LOG"], "a") as log:
            log.write(spec.name + "\\n")
        raise ModuleNotFoundError(f"No module named {spec.name!r} (not on the GPU image)",
                                  name=spec.name)

    def exec_module(self, module):
        pass

# Our code and the carried wheels' packages import only what the image or the wheels hold (other
# packages import their own dependencies, which differ between versions here and there).
class _OnlyTheGPUImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if ("." in name or name == "vggflow" or not _distributions.get(name)
                or _on(_image | _wheels, name)):
            return None
        importer = _importer()
        if importer in ("vggflow", "__main__") or _on(_wheels, importer):
            return importlib.util.spec_from_loader(name, _Missing())
        return None

sys.meta_path.insert(0, _OnlyTheGPUImage())
"""


def gpu_image_environment(tmp_path, blocked_log) -> dict:
    """Environment for a subprocess whose imports are limited as on the lent GPU machine
    (:data:`GPU_IMAGE_IMPORTS` as its sitecustomize); blocked imports are logged to
    ``blocked_log``."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(GPU_IMAGE_IMPORTS)
    return {**os.environ, "PYTHONPATH": f"{tmp_path / 'hook'}:{REPO}",
            "GPU_BLOCKED_LOG": str(blocked_log),
            "GPU_PACKAGE_LISTS": f"{REPO / 'docs/bench_h100/gpu_image_packages.txt'}:"
                                 f"{REPO / 'scripts/gpu_wheels.txt'}"}


def test_gpu_bench_script_runs_its_steps_and_packs_what_it_measured(tiny_sd3, tmp_path):
    """scripts/gpu_bench.sh on tiny-sd3 on the CPU (BENCH_CONFIG), importing only what the lent
    GPU machine has: its image's packages and the carried wheels (a package of neither list is
    missing, as there). Each step's CSV lands in the tarball; a step that cannot fit before the
    deadline is skipped, not started."""
    import pandas as pd

    config = tiny_sd3_experiment_config(tiny_sd3)
    config["rewards"] = ["pickscore"]
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(config))
    blocked = tmp_path / "blocked.txt"
    env = {**gpu_image_environment(tmp_path, blocked),
           "BENCH_CONFIG": str(tmp_path / "bench.yaml"), "DEADLINE": "400"}
    result = subprocess.run(
        ["bash", "scripts/gpu_bench.sh", str(tmp_path / "out"), "bench_vggflow_packed", "profile",
         "bench_refl"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "exit 0" in result.stdout and "exit 1" not in result.stdout, result.stdout
    # optional imports only (tabulate tries wcwidth)
    assert not blocked.exists() or set(blocked.read_text().split()) <= {"wcwidth"}, \
        blocked.read_text()
    # the closing summary printed the region table (a failure there would not stop the script)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-2000:]
    assert "update_value_net > value_net/loss > vggflow/base_jacobian" in result.stdout
    with tarfile.open(tmp_path / "out" / "bench.tar.gz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    unpacked = tmp_path / "unpacked"
    bench = pd.read_csv(unpacked / "update_cost_vggflow_packed.csv")
    assert bench["method"].tolist() == ["vggflow"] and bench["seconds_per_update"].gt(0).all()
    regions = pd.read_csv(unpacked / "update_regions_vggflow_packed.csv").set_index("path")
    assert regions.loc["update_value_net > value_net/loss > vggflow/base_jacobian",
                       "gflop_per_update"] > 0
    assert yaml.safe_load((unpacked / "configs/vggflow_packed.yaml").read_text())["model"][
        "attention"] == "packed"
    forward = pd.read_csv(unpacked / "forward.csv")
    assert {"peft_fp32", "lora_model_dtype", "packed_attention",
            "packed_attention_compiled"} <= set(forward["variant"])
    processors = forward.groupby("variant")["attention"].unique().map(list)
    assert processors["lora_model_dtype"] == ["JointAttnProcessor2_0"]  # whatever the default
    assert processors["packed_attention"] == ["PackedJointAttnProcessor"]
    assert (unpacked / "kernels.txt.packed").is_file()
    assert (unpacked / "update_cost_refl.csv").is_file()
    short = subprocess.run(
        ["bash", "scripts/gpu_bench.sh", str(tmp_path / "short"), "bench_refl"], cwd=REPO,
        env={**env, "DEADLINE": "30"}, capture_output=True, text=True, timeout=600)
    assert "skipping bench_refl" in short.stdout, short.stdout


def test_value_update_profile_times_every_variant_with_the_gpu_images_imports(tiny_sd3,
                                                                              tmp_path):
    """scripts/profile_value_update.py (gpu_bench.sh's profile_value step) on tiny-sd3 on the CPU,
    importing only what the GPU machine has: one row per reward-gradient variant (precision x
    cuDNN autotuner x chunk), the jvp of the gradient and the value U-Net's layouts and head
    widths, none failed;
    chunking does not change a pass's FLOPs, and the jvp of the gradient costs more than one
    gradient pass (it computes the gradient and its derivative) but less than four."""
    import pandas as pd

    from vggflow.config import load_yaml, resolve_run_config

    resolved = resolve_run_config(tiny_sd3_experiment_config(tiny_sd3),
                                  load_yaml(REPO / "config/methods/vggflow.yaml"), "pickscore",
                                  "vggflow", 0)
    (tmp_path / "vggflow.yaml").write_text(yaml.safe_dump(resolved))
    env = gpu_image_environment(tmp_path, tmp_path / "blocked.txt")
    result = subprocess.run(
        ["python", "scripts/profile_value_update.py", "--config", str(tmp_path / "vggflow.yaml"),
         "--out", str(tmp_path / "value.csv"), "--chunks", "5", "10", "--repeats", "1",
         "--profile-out", str(tmp_path / "kernels")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    table = pd.read_csv(tmp_path / "value.csv")
    assert "note" not in table or table["note"].isna().all(), table.get("note")
    passes = table[table["variant"] == "reward_grad"]
    assert len(passes) == 2 * 2 * 2 and passes["seconds"].gt(0).all()
    assert passes["tflop"].max() == pytest.approx(passes["tflop"].min(), rel=1e-6)
    jvp_flops = table.loc[table["variant"] == "reward_jvp", "tflop"].item()
    assert passes["tflop"].max() < jvp_flops < 4 * passes["tflop"].max()
    assert set(table.loc[table["variant"] == "value_net", "layout"]) == {"contiguous",
                                                                         "channels_last"}
    assert table.loc[table["variant"] == "value_net", "head_dim"].eq(64).sum() == 1
    assert (tmp_path / "kernels.value_net").is_file() and (tmp_path / "kernels.reward").is_file()


@pytest.mark.parametrize("method", ["adjoint_matching", "vggflow_pmp"])
def test_adjoint_without_checkpointing_gives_the_same_updates(tiny_sd3, tmp_path, method,
                                                               monkeypatch):
    """``model.checkpoint_adjoint: false`` with gradient checkpointing on: the adjoint ODE's
    vector-Jacobian products (Adjoint Matching's lean adjoint, VGG-Flow-PMP's costates) keep
    their block activations, so no block is recomputed there, while the flow model's loss still
    checkpoints; the two updates equal the fully checkpointed ones within rounding."""
    from vggflow.methods.base import discrete_adjoint
    from vggflow.models.sd3 import SD3FlowModel

    checkpointed = {"adjoint": 0, "other": 0}
    in_adjoint = [False]
    checkpoint = SD3FlowModel._checkpoint

    def counting_checkpoint(self, block, *args):
        checkpointed["adjoint" if in_adjoint[0] else "other"] += 1
        return checkpoint(self, block, *args)

    def flagged_adjoint(*args):
        in_adjoint[0] = True
        try:
            return discrete_adjoint(*args)
        finally:
            in_adjoint[0] = False

    monkeypatch.setattr(SD3FlowModel, "_checkpoint", counting_checkpoint)
    monkeypatch.setattr(f"vggflow.methods.{method}.discrete_adjoint", flagged_adjoint)
    results, counts = [], []
    for kept in (False, True):
        checkpointed.update(adjoint=0, other=0)
        results.append(two_tiny_sd3_updates(
            tiny_sd3, tmp_path / str(kept), method, {},
            {"gradient_checkpointing": True, "checkpoint_adjoint": not kept}))
        counts.append(dict(checkpointed))
    assert counts[0]["adjoint"] > 0 and counts[1]["adjoint"] == 0
    assert counts[1]["other"] == counts[0]["other"] > 0  # the loss's backward still checkpoints
    assert_same_updates(*results, differences=())


@pytest.mark.parametrize("method", ["vggflow", "adjoint_matching"])
def test_compiled_blocks_keep_the_update_within_rounding(tiny_sd3, tmp_path, method):
    """``model.compile: blocks`` (regional torch.compile, with gradient checkpointing on, as on
    SD3): the same two updates as eager within 1e-5 (relative, logged scalars; 1e-6 absolute for
    the control norm and the rewards' standard deviation, differences of O(1) quantities) and
    1e-6 (absolute, LoRA weights), for VGG-Flow and for Adjoint Matching, which differentiates
    the base model (LoRA off) through the compiled blocks."""
    from torch._dynamo.utils import counters

    results = []
    for mode in ("none", "blocks"):
        torch._dynamo.reset()
        counters.clear()
        results.append(two_tiny_sd3_updates(tiny_sd3, tmp_path / mode, method, {},
                                            {"gradient_checkpointing": True, "compile": mode}))
    assert counters["stats"]["unique_graphs"] > 0  # the blocks ran compiled
    # differences of O(1) quantities: |v - v_base| and the spread of rewards near -1.9
    assert_same_updates(*results, differences=("control_norm", "reward_std"))
