"""The protocol every criterion implements. Optimizers only see this."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np


class Criterion(ABC):
    """A design criterion with incremental state; values are always maximised.

    Life cycle: ``initialize(model, fixed=...)`` puts the fixed frames into the state;
    then ``gains(candidates)`` scores additions without changing the state, and
    ``add``/``remove`` change it and return the realised change of ``value()``.
    """

    name: str = ""
    #: True when the gains can only shrink as the design grows (lazy greedy is exact).
    submodular: bool = False

    def __init__(self):
        self.members: list[int] = []

    @abstractmethod
    def initialize(self, model, *, fixed: Sequence[int] = (), seed: int = 0) -> "Criterion":
        """Reset the state to the information of ``fixed`` frames; returns self."""

    @abstractmethod
    def gains(self, candidates: np.ndarray) -> np.ndarray:
        """Increase of ``value()`` if each candidate were added (state unchanged)."""

    @abstractmethod
    def add(self, index: int) -> float:
        """Add a frame; returns the change of ``value()``."""

    @abstractmethod
    def remove(self, index: int) -> float:
        """Remove a non-fixed member; returns the change of ``value()`` (≤ 0 for d)."""

    @abstractmethod
    def value(self) -> float:
        """Current criterion value."""
