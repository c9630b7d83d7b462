"""DisCoHead: disentangled control of head pose and facial expressions (ICASSP 2023).

The library behind the ``pipelines/`` jobs. It never imports Ray.
"""

from .config import VARIANTS, DisCoHeadConfig
from .model import DisCoHead

__all__ = ["DisCoHead", "DisCoHeadConfig", "VARIANTS"]
__version__ = "0.1.0"
