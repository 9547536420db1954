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


# seaborn's paper theme, sns.set_theme(context="paper", style="whitegrid", font_scale=1.1): the
# rcParams it changes (seaborn 0.13.2, matplotlib 3.11; tests/test_figures.py checks them against
# seaborn itself), set without importing seaborn, which costs 2-3 s per figure job on the CPU.
# Its default colour map, seaborn's own "rocket", is left out: no figure uses a default map.
_PAPER_FONT = 12 * 0.8 * 1.1  # seaborn's "notebook" font size, x 0.8 for "paper", x font_scale
_PAPER_SMALL_FONT = 11 * 0.8 * 1.1  # legend and tick labels
_PAPER_LINES = 0.8  # line widths and tick sizes: "paper" (font_scale leaves them)
# seaborn's "deep" palette, the theme's colour cycle (figures colour methods by PALETTE)
DEEP_CYCLE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
              "#8c8c8c", "#ccb974", "#64b5cd"]
PAPER_THEME = {
    "axes.prop_cycle": f"cycler(color={DEEP_CYCLE!r})",
    "axes.axisbelow": True,
    "axes.edgecolor": ".8",
    "axes.grid": True,
    "axes.labelcolor": ".15",
    "axes.labelsize": _PAPER_FONT,
    "axes.linewidth": 1.25 * _PAPER_LINES,
    "axes.titlesize": _PAPER_FONT,
    "font.sans-serif": ["Arial", "DejaVu Sans", "Liberation Sans", "Bitstream Vera Sans",
                        "sans-serif"],
    "font.size": _PAPER_FONT,
    "grid.color": ".8",
    "legend.fontsize": _PAPER_SMALL_FONT,
    "legend.title_fontsize": _PAPER_FONT,
    "lines.linewidth": 1.5 * _PAPER_LINES,
    "lines.markersize": 6 * _PAPER_LINES,
    "lines.solid_capstyle": "round",
    "patch.edgecolor": "w",
    "patch.force_edgecolor": True,
    "patch.linewidth": 1 * _PAPER_LINES,
    "text.color": ".15",
    "xtick.bottom": False,
    "xtick.color": ".15",
    "xtick.labelsize": _PAPER_SMALL_FONT,
    "xtick.major.size": 6 * _PAPER_LINES,
    "xtick.major.width": 1.25 * _PAPER_LINES,
    "xtick.minor.size": 4 * _PAPER_LINES,
    "xtick.minor.width": 1 * _PAPER_LINES,
    "ytick.color": ".15",
    "ytick.labelsize": _PAPER_SMALL_FONT,
    "ytick.left": False,
    "ytick.major.size": 6 * _PAPER_LINES,
    "ytick.major.width": 1.25 * _PAPER_LINES,
    "ytick.minor.size": 4 * _PAPER_LINES,
    "ytick.minor.width": 1 * _PAPER_LINES,
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
