"""Suites: a flow model, its rewards, prompts and evaluation features, selected by name."""

from vggflow.suites.base import SUITES, Suite


def load_builtin_suites() -> None:
    """Import the built-in suites so that they register themselves."""
    from vggflow.suites import digits, sd3, toy2d  # noqa: F401


__all__ = ["SUITES", "Suite", "load_builtin_suites"]
