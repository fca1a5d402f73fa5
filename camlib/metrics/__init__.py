"""Measuring explanations: localization (pointing game, IoU, energy) and faithfulness
(average drop, increase in confidence, deletion / insertion curves)."""

from .faithfulness import *  # noqa: F403
from .localization import *  # noqa: F403
