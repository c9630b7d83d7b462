"""DisCoHead: disentangled control of head pose and facial expressions (ICASSP 2023).

The library behind the ``pipelines/`` jobs. It never imports Ray. The model is imported
on first use, so that data workers, which only need ``discohead.data``, start quickly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["DisCoHead", "DisCoHeadConfig", "VARIANTS"]

if TYPE_CHECKING:
    from .config import VARIANTS, DisCoHeadConfig
    from .model import DisCoHead


def __getattr__(name: str) -> Any:
    if name == "DisCoHead":
        from .model import DisCoHead

        return DisCoHead
    if name in ("DisCoHeadConfig", "VARIANTS"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module 'discohead' has no attribute {name!r}")
