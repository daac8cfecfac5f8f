"""A- and I-optimality: linear (trace) functionals of C = F̃⁻¹."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import InformationCriterion, TargetRows, target_rows


class TraceCriterion(InformationCriterion):
    """Value −tr(C B) for a fixed positive semi-definite weight matrix B (M × M).

    Gain of adding a block W (r × M): with U = C Wᵀ and K = (I_r + W U)⁻¹,
    C' = C − U K Uᵀ (Woodbury), so Δ = tr(K Uᵀ B U). Removing uses the U, K that
    :meth:`~mlipdoe.state.InformationState.update` returns (U = C_new Wᵀ, from the
    downdated factor) and the opposite sign, so no 1 − leverage division. The value is
    tracked by these increments; C by :class:`~mlipdoe.state.InformationState`
    (O(M² r) per add/remove).

    Energy-only gains of all candidates at once: P = W_c C (k × M),
    gain_c = (p_c B p_cᵀ) / (1 + p_c·w_c) — two k × M × M products. Cost per greedy
    pick O(N M²) (blocks: O(M² r) per candidate). Keeping g_c = w_cᵀ C B C w_c per
    frame by rank-one recurrences would be O(N M) but loses digits: with σ_E = 1 meV,
    q_c = w_cᵀ C w_c reaches 1e6–1e8 and the recurrence cancels (gains 10 % off on a
    1,000-frame pool), so the gains are recomputed from C.
    """

    chunk_size = 4096
    _state_attrs = ("members", "state", "_value")

    def _weight(self, model) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def initialize(self, model, *, fixed: Sequence[int] = (), seed: int = 0):
        self.B = self._weight(model)
        self._init_state(model, fixed, seed)
        self._value = -float(np.sum(self.state.C * self.B))
        return self

    def _block_gain(self, W: np.ndarray) -> float:
        U = self.state.C @ W.T
        S = np.eye(len(W)) + W @ U
        return float(np.trace(np.linalg.solve(S, U.T @ self.B @ U)))

    def gains(self, candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates, dtype=np.int64)
        if not self._rank_one:
            return np.array([self._block_gain(np.atleast_2d(self.model.factor(int(c)))) for c in candidates])
        out = np.empty(len(candidates))
        for start in range(0, len(candidates), self.chunk_size):
            chunk = candidates[start : start + self.chunk_size]
            W = self.model.energy_factors(chunk)
            P = W @ self.state.C
            out[start : start + len(chunk)] = np.einsum("ij,ij->i", P @ self.B, P) / (1.0 + np.einsum("ij,ij->i", P, W))
        return out

    def _update(self, index: int, sign: int) -> float:
        _, U, K = self.state.update(np.atleast_2d(self.model.factor(index)), sign)
        delta = sign * float(np.sum(K * (U.T @ self.B @ U)))  # ± tr(K Uᵀ B U), K and UᵀBU symmetric
        self._value += delta
        return delta

    def value(self) -> float:
        return self._value


class AOptimal(TraceCriterion):
    """``a``: −tr(K_MM F(S)⁻¹ K_MM) / M, the mean posterior variance of the local
    energies at the sparse points (Kiefer 1959 A-optimality, in the sparse-point basis).

    Whitened: K_MM F⁻¹ K_MM = L C Lᵀ, so the value is −tr(C B) with B = LᵀL / M.
    Incremental update and cost: see :class:`TraceCriterion` (O(N M²) per pick
    energy-only). Not submodular in general.
    """

    name = "a"

    def _weight(self, model) -> np.ndarray:
        return (model.L.T @ model.L) / model.M


class IOptimal(TraceCriterion):
    """``i``: −mean_{t∈T} v_S(t), v_S(t) = ψ_tᵀ C ψ_t / n_t² (I/V-optimality;
    Box & Draper 1959, Atkinson, Donev & Tobias 2007 ch. 10).

    Value −tr(C B) with the target moment B = mean_t ψ_t ψ_tᵀ / n_t² (M × M), formed
    once in O(T M²). The target is the pool (default) or ``target`` (:class:`TargetRows`,
    e.g. from ``target_rows(model, frames)``: frames where the potential will be used).
    Incremental update and cost: see :class:`TraceCriterion` (O(N M²) per pick
    energy-only). Not submodular in general.
    """

    name = "i"

    def __init__(self, *, target: TargetRows | None = None, force_moment: np.ndarray | None = None, existing=None):
        super().__init__(existing=existing)
        self.target = target
        self.force_moment = force_moment

    def _weight(self, model) -> np.ndarray:
        if self.force_moment is not None:  # --target-observable forces: B = A, mean force variance
            return np.asarray(self.force_moment, dtype=float)
        t = self.target if self.target is not None else target_rows(model)
        scaled = t.psi / np.asarray(t.n_atoms, dtype=float)[:, None]
        return (scaled.T @ scaled) / len(scaled)
