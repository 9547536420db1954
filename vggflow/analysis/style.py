"""One method order, label set and palette for every table and figure."""

from __future__ import annotations

BASE = "base"
METHOD_ORDER = [BASE, "vggflow", "vggflow_pmp", "adjoint_matching", "refl", "draft", "draft_lv"]
METHOD_LABELS = {
    BASE: "Base model",
    "vggflow": "VGG-Flow",
    "vggflow_pmp": "VGG-Flow-PMP",
    "adjoint_matching": "Adjoint Matching",
    "refl": "ReFL",
    "draft": "DRaFT",
    "draft_lv": "DRaFT-LV",
}
# seaborn's "colorblind" palette, fixed per method so colours never change between figures.
PALETTE = {
    BASE: "#949494",
    "vggflow": "#0173b2",
    "vggflow_pmp": "#56b4e9",
    "adjoint_matching": "#029e73",
    "refl": "#de8f05",
    "draft": "#d55e00",
    "draft_lv": "#cc78bc",
}


def ordered_methods(methods) -> list[str]:
    """Known methods in the fixed order, then any others alphabetically."""
    present = set(methods)
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def method_rank(methods):
    """Each entry's position in the fixed method order (a pandas Series in, one out): a sort key."""
    order = {m: i for i, m in enumerate(ordered_methods(methods))}
    return methods.map(order)


def label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def metric_family(metric: str) -> int:
    """Sort key: rewards, then diversity, then Fréchet distances."""
    for rank, prefix in enumerate(("reward_", "diversity_", "fd_prior_", "fd_ref_")):
        if metric.startswith(prefix):
            return rank
    return 4
