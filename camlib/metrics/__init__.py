"""Measuring explanations: localization (pointing game, IoU, energy), faithfulness
(average drop, increase in confidence, deletion / insertion curves) and ROAD."""

from .faithfulness import *  # noqa: F403
from .localization import *  # noqa: F403
from .road import *  # noqa: F403
