"""E-optimality: the least-constrained direction."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import InformationCriterion


class EOptimal(InformationCriterion):
    """``e``: λ_min(K_MM^{-1/2} F(S) K_MM^{-1/2}) = λ_min(F̃(S)) (Ehrenfeld 1955).

    (K^{-1/2} F K^{-1/2} and L⁻¹ F L⁻ᵀ = F̃ are similar, so their spectra agree.)

    Energy-only gains of all candidates at once from one eigendecomposition
    F̃ = V diag(λ) Vᵀ (O(M³) per pick): with z = Vᵀ w_c, the new smallest eigenvalue
    is the root x ∈ [λ_1, min(λ_2, λ_1 + |z|²)] of the secular equation
    1 + Σ_i z_i² / (λ_i − x) = 0 (Golub 1973), found by vectorised bisection
    (64 halvings, O(N M) each). Cost per pick: O(M³ + 64 N M). Blocks: one eigvalsh per
    candidate, O(N M³) per pick. Add/remove: Woodbury on F̃ plus one eigvalsh.

    While |S| (in rows) is below M, λ_min stays 1 and every gain is 0: the value is
    flat. :meth:`tie_break` then ranks tied candidates by their D gain
    log(1 + w_cᵀ C w_c), so greedy grows the span first. Not submodular.
    """

    name = "e"
    bisection_steps = 64
    _state_attrs = ("members", "state", "_value", "_eig")

    def initialize(self, model, *, fixed: Sequence[int] = (), seed: int = 0) -> "EOptimal":
        self._init_state(model, fixed, seed)
        self._eig = None
        self._value = float(np.linalg.eigvalsh(self.state.F)[0])
        return self

    def _eigen(self):
        if self._eig is None:
            self._eig = np.linalg.eigh(self.state.F)
        return self._eig

    def gains(self, candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates, dtype=np.int64)
        if not self._rank_one:
            F = self.state.F
            out = []
            for c in candidates:
                W = np.atleast_2d(self.model.factor(int(c)))
                out.append(float(np.linalg.eigvalsh(F + W.T @ W)[0]) - self._value)
            return np.array(out)
        lam, V = self._eigen()
        z2 = (self.model.energy_factors(candidates) @ V) ** 2    # (k, M)
        if len(lam) == 1:
            return z2[:, 0]
        gaps = lam - lam[0]                                      # d_i = λ_i − λ_1 ≥ 0
        lo = np.zeros(len(candidates))
        hi = np.minimum(gaps[1], z2.sum(axis=1))                 # interlacing bounds on δ = x − λ_1
        for _ in range(self.bisection_steps):
            mid = 0.5 * (lo + hi)
            with np.errstate(divide="ignore", invalid="ignore"):
                f = 1.0 + np.sum(z2 / (gaps[None, :] - mid[:, None]), axis=1)
            below = ~(f > 0)      # f increasing in δ: f ≤ 0 (or nan at a pole) → root above mid
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
        # λ_1 + δ − λ_min(F̃): the same reference as value() so gains and differences agree
        return (lam[0] + 0.5 * (lo + hi)) - self._value

    def tie_break(self, candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates, dtype=np.int64)
        if not self._rank_one:
            return np.array([self.state.gain(np.atleast_2d(self.model.factor(int(c)))) for c in candidates])
        W = self.model.energy_factors(candidates)
        return np.log1p(np.einsum("ij,jk,ik->i", W, self.state.C, W))

    def _update(self, index: int, sign: int) -> float:
        self.state.update(np.atleast_2d(self.model.factor(index)), sign)
        self._eig = None
        new = float(np.linalg.eigvalsh(self.state.F)[0])
        delta, self._value = new - self._value, new
        return delta

    def value(self) -> float:
        return self._value
