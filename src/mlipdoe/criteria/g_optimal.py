"""G-optimality: the worst-case predictive variance on the target."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import InformationCriterion, TargetRows, target_rows


class GOptimal(InformationCriterion):
    """``g``: −max_{t∈T} v_S(t), v_S(t) = ψ_tᵀ C ψ_t / n_t² (Kiefer & Wolfowitz 1960).

    Target: the pool (default) or ``target`` (:class:`TargetRows`).

    State: C and the target variances v (T,). Adding a block W (r × M), U = C Wᵀ,
    K = (I + W U)⁻¹: v_t ← v_t − a_tᵀ K a_t / n_t² with a_t = Uᵀ ψ_t. Removal: the same
    with the U = C_new Wᵀ and K that :meth:`~mlipdoe.state.InformationState.update`
    returns (stable at leverages near 1) and the opposite sign. Energy-only gains of all candidates at once: A = Ψ_T C W_cᵀ
    (T × k) and v'_t = v_t − A_tc² / (n_t² (1 + q_c)); gain = max v − max_t v'.

    Cost per greedy pick: O(T N M) for the gains (chunks of candidates keep the
    T × k block under ~4·10⁶ entries) plus O(T M + M²) for the update — the most
    expensive criterion with a large target; pass a smaller target if needed.
    Not submodular.
    """

    name = "g"
    max_block_entries = 4_000_000
    _state_attrs = ("members", "state", "_v")

    def __init__(self, *, target: TargetRows | None = None, existing=None):
        super().__init__(existing=existing)
        self.target = target

    def initialize(self, model, *, fixed: Sequence[int] = (), seed: int = 0) -> "GOptimal":
        t = self.target if self.target is not None else target_rows(model)
        self._psi_t = np.ascontiguousarray(t.psi)
        self._n2 = np.asarray(t.n_atoms, dtype=float) ** 2
        self._init_state(model, fixed, seed)
        self._v = np.einsum("ij,jk,ik->i", self._psi_t, self.state.C, self._psi_t) / self._n2
        return self

    def _variance_drop(self, U: np.ndarray, K: np.ndarray, sign: int = +1) -> np.ndarray:
        """Change of v (T,) when C changes by −sign · U K Uᵀ."""
        A = self._psi_t @ U
        return -sign * np.einsum("ij,ij->i", A @ K, A) / self._n2

    def _addition_terms(self, W: np.ndarray):
        U = self.state.C @ W.T
        return U, np.linalg.inv(np.eye(len(W)) + W @ U)

    def gains(self, candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates, dtype=np.int64)
        current = float(self._v.max())
        if not self._rank_one:
            return np.array([current - float((self._v + self._variance_drop(
                *self._addition_terms(np.atleast_2d(self.model.factor(int(c)))))).max()) for c in candidates])
        out = np.empty(len(candidates))
        step = max(1, self.max_block_entries // len(self._v))
        C = self.state.C
        for start in range(0, len(candidates), step):
            chunk = candidates[start : start + step]
            W = self.model.energy_factors(chunk)          # (k, M)
            CW = C @ W.T                                  # (M, k)
            q = np.einsum("ij,ji->i", W, CW)              # w_cᵀ C w_c
            A = self._psi_t @ CW                          # (T, k)
            A *= A
            A /= self._n2[:, None] * (1.0 + q)[None, :]
            out[start : start + len(chunk)] = current - np.max(self._v[:, None] - A, axis=0)
        return out

    def _update(self, index: int, sign: int) -> float:
        before = float(self._v.max())
        _, U, K = self.state.update(np.atleast_2d(self.model.factor(index)), sign)
        self._v = self._v + self._variance_drop(U, K, sign)
        return before - float(self._v.max())

    def value(self) -> float:
        return -float(self._v.max())
