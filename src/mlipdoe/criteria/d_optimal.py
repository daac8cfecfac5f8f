"""D-optimality: maximise log det F(S) − log det K_MM = log det F̃(S)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import InformationCriterion


class DOptimal(InformationCriterion):
    """``d``: information gain about the weights α (nats; 2 × mutual information).

    Value: log det F̃(S). Gain of adding s: log det(I + W_s C W_sᵀ), C = F̃⁻¹
    (matrix determinant lemma; energy-only: log(1 + q_s), q_s = w_sᵀ C w_s).

    Incremental update: single-row factors keep q for the whole pool and update it
    after each pick with one N × M matrix–vector product,
    q ← q − (W u)² / (1 + w*ᵀ u), u = C w*  (Sherman–Morrison), plus O(M²) for C.
    Blocks of r rows use the Woodbury form; cost O(M² r) per evaluated gain.
    Cost per greedy pick: O(N M) energy-only; O(N M² r) with blocks.
    Monotone submodular (Krause & Golovin 2014), so lazy greedy is exact.

    Options: ``existing`` (:class:`~mlipdoe.criteria.base.ExistingRows`).
    """

    name = "d"
    submodular = True
    chunk_size = 8192
    _state_attrs = ("members", "state", "_q")

    def initialize(self, model, *, fixed: Sequence[int] = (), seed: int = 0) -> "DOptimal":
        self._init_state(model, fixed, seed)
        self._scale = model.energy_scale
        self._q = self._quadratic_forms() if self._rank_one else None
        return self

    def _quadratic_forms(self) -> np.ndarray:
        """q_s = w_sᵀ C w_s for every pool frame, in chunks of rows."""
        model, C = self.model, self.state.C
        q = np.empty(model.n_frames)
        for start in range(0, model.n_frames, self.chunk_size):
            W = model.energy_factors(slice(start, start + self.chunk_size))
            q[start : start + len(W)] = np.einsum("ij,ij->i", W @ C, W)
        return q

    def gains(self, candidates: np.ndarray) -> np.ndarray:
        if self._rank_one:
            return np.log1p(self._q[candidates])
        return np.array([self.state.gain(self.model.factor(int(c))) for c in candidates])

    def _update(self, index: int, sign: int) -> float:
        delta, U, S_inv = self.state.update(self.model.factor(index), sign)
        if self._rank_one:
            model = self.model
            u = U[:, 0]
            for start in range(0, model.n_frames, self.chunk_size):
                sl = slice(start, start + self.chunk_size)
                y = model.psi[sl] @ u
                y *= self._scale[sl]
                y *= y
                y *= sign * S_inv[0, 0]
                self._q[sl] -= y
        return delta

    def value(self) -> float:
        return self.state.log_det
