"""The random baseline."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .d_optimal import DOptimal


class RandomCriterion(DOptimal):
    """``random``: frames in a uniformly random order drawn from the seed.

    ``gains`` returns fixed random priorities, so greedy picks a uniform random
    subset. ``add``, ``remove`` and ``value`` report the D-optimal information
    (log det F̃), so random designs are scored on the same scale as ``d``.
    Cost per pick: O(N M) (the D bookkeeping). Under an atom or cost budget the frames
    are taken in the same random order, each one that still fits (``budget_runs``: only
    the plain-gain run of :func:`~mlipdoe.optimizers.cost_greedy`, no cost weighting).
    """

    name = "random"
    submodular = False
    budget_runs = ("gain",)

    def initialize(self, model, *, fixed: Sequence[int] = (), seed: int = 0) -> "RandomCriterion":
        super().initialize(model, fixed=fixed, seed=seed)
        self._priority = np.random.default_rng(seed).random(model.n_frames)
        return self

    def gains(self, candidates: np.ndarray) -> np.ndarray:
        return self._priority[candidates]
