"""Named regions of an optimizer update, which the update-cost benchmark measures.

``with region("value_net/backward"): ...`` marks a part of an update. Outside
:func:`measured_by` it does nothing; inside it, the measuring callable (``vggflow.bench``'s
``RegionTimer``) wraps the region, so the benchmark can split an update's seconds and FLOPs
below its phases. Regions nest, and each is measured inclusively.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

_measure: Callable[[str], AbstractContextManager] | None = None


def region(name: str) -> AbstractContextManager:
    """A named part of an update (measured only inside :func:`measured_by`)."""
    return contextlib.nullcontext() if _measure is None else _measure(name)


@contextlib.contextmanager
def measured_by(measure: Callable[[str], AbstractContextManager]) -> Iterator[None]:
    """Every :func:`region` entered inside this block is wrapped by ``measure(name)``."""
    global _measure
    previous, _measure = _measure, measure
    try:
        yield
    finally:
        _measure = previous
