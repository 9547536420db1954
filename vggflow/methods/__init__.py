"""Finetuning methods behind :class:`~vggflow.methods.base.Method`, keyed by config name.

Adding a method: one module here, one line in :func:`load_builtin_methods`, one
``config/methods/<name>.yaml`` and its block in ``workflow/schemas/method.schema.yaml``.
"""

from vggflow.methods.base import METHODS, Method


def load_builtin_methods() -> None:
    """Import the built-in methods so that they register themselves."""
    from vggflow.methods import (  # noqa: F401
        adjoint_matching,
        draft,
        refl,
        vggflow,
        vggflow_pmp,
    )


__all__ = ["METHODS", "Method", "load_builtin_methods"]
