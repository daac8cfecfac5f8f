"""Space filling: maximise the smallest pairwise distance (maximin; Johnson, Moore & Ylvisaker 1990)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import Criterion, ExistingRows

#: Value of a design with fewer than two points: the largest distance between unit vectors.
DIAMETER = 2.0


def unit_distances(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """‖x_i − y‖ for unit vectors, as sqrt(max(0, 2 − 2 x_i·y)) (N,)."""
    return np.sqrt(np.maximum(0.0, 2.0 - 2.0 * (X @ y)))


def normalise_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1)
    return X / np.where(norms > 0, norms, 1.0)[:, None]


class SpaceFilling(Criterion):
    """Maximin distance between unit vectors x_s (one per frame).

    Value: min_{s≠s'∈S} ‖x_s − x_s'‖ over the design S (fixed and existing frames
    included); ``DIAMETER`` = 2 while S has fewer than two points.

    Incremental update (as skmatter's FPS): keep dmin_c = min_{s∈S} ‖x_c − x_s‖ for
    every pool frame; gain of c = min(value, dmin_c) − value (≤ 0); adding i updates
    dmin with one distance row (O(N D)) and value ← min(value, dmin_i). Removing
    recomputes dmin and value from the remaining points (O(N D |S| + |S|² D)).
    :meth:`tie_break` returns dmin, so among candidates that do not lower the value
    greedy takes the farthest one: greedy on this criterion *is* farthest-point
    sampling. Cost per pick O(N D). Not submodular.
    """

    _state_attrs = ("members", "_dmin", "_value")

    def _vectors(self, model) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        """(pool unit vectors (N, D), extra fixed unit vectors (E, D))."""
        raise NotImplementedError

    def initialize(self, model, *, fixed: Sequence[int] = (), seed: int = 0):
        self.model = model
        self.seed = int(seed)
        self.fixed = [int(f) for f in fixed]
        self.members = []
        if getattr(self, "_X", None) is None or getattr(self, "_model_id", None) is not id(model):
            self._X, self._extra = self._vectors(model)
            self._model_id = id(model)
        self._rebuild()
        return self

    def _points(self) -> np.ndarray:
        """Unit vectors of every point in the design (extra, fixed, members)."""
        idx = self.fixed + self.members
        return np.vstack([self._extra, self._X[idx]]) if len(idx) else self._extra

    def _rebuild(self) -> None:
        P = self._points()
        self._dmin = np.full(len(self._X), np.inf)
        for p in P:
            np.minimum(self._dmin, unit_distances(self._X, p), out=self._dmin)
        self._value = self.value_of(P)

    @staticmethod
    def value_of(P: np.ndarray) -> float:
        """Maximin value of a set of unit vectors P (k, D), from scratch."""
        if len(P) < 2:
            return DIAMETER
        G = P @ P.T
        D = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * G[np.triu_indices(len(P), 1)]))
        return float(D.min())

    def gains(self, candidates: np.ndarray) -> np.ndarray:
        d = self._dmin[np.asarray(candidates, dtype=np.int64)]
        return np.minimum(d, self._value) - self._value

    def tie_break(self, candidates: np.ndarray) -> np.ndarray:
        return self._dmin[np.asarray(candidates, dtype=np.int64)]

    def add(self, index: int) -> float:
        index = int(index)
        before = self._value
        self._value = min(self._value, float(self._dmin[index]))
        np.minimum(self._dmin, unit_distances(self._X, self._X[index]), out=self._dmin)
        self.members.append(index)
        return self._value - before

    remove = Criterion._remove_by_rebuild

    def value(self) -> float:
        return self._value


class Maximin(SpaceFilling):
    """``maximin``: min_{s≠s'∈S} d_k(s, s') in the kernel distance of the spec,
    d_k² = 2 − 2 K̂(s, s'), K̂ the normalised configuration kernel (the seed paper's
    space-filling criterion).

    **Nyström, not exact**: K(s, s') = φ_sᵀ K_MM⁻¹ φ_s' / (n_s n_s') = ψ_s·ψ_s' / (n_s n_s')
    (whitened rows), so K̂(s, s') = ψ̂_s·ψ̂_s' with ψ̂ = ψ/‖ψ‖ and d_k = ‖ψ̂_s − ψ̂_s'‖.
    It is the distance the GAP model itself can resolve with its M sparse points.
    Existing frames enter through their whitened rows. Cost per pick O(N M).
    See :class:`SpaceFilling` for the update.
    """

    name = "maximin"

    def __init__(self, *, existing: ExistingRows | None = None):
        super().__init__()
        self.existing = existing

    def _vectors(self, model):
        X = normalise_rows(model.psi)
        extra = normalise_rows(self.existing.psi) if self.existing is not None else np.empty((0, X.shape[1]))
        return X, extra
