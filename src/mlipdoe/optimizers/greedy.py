"""Greedy forward selection (Fedorov 1972, ch. 4): add the best candidate, repeat."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..progress import NULL_PROGRESS


@dataclass
class GreedyResult:
    """Picks in selection order with the realised gain of each and the value after it."""

    selected: list[int]
    gains: list[float]
    values: list[float]
    n_evaluations: int = 0
    stopped_by: str = "n"
    extra: dict = field(default_factory=dict)


def greedy(criterion, n: int, *, available: np.ndarray, threshold: float | None = None,
           chunk_size: int = 8192, progress=NULL_PROGRESS) -> GreedyResult:
    """Pick up to ``n`` frames one at a time by the largest gain.

    Parameters
    ----------
    criterion : Criterion
        Already initialised (fixed frames in its state).
    n : int
        Number of picks.
    available : (N,) bool array
        Candidates; not modified. Picked frames are removed from a private copy.
    threshold : float, optional
        Stop early when the best gain falls below it.
    chunk_size : int
        Candidates scored per ``criterion.gains`` call (bounds memory).

    Ties go to the lowest frame index. Returns a :class:`GreedyResult`; ``stopped_by``
    is ``"n"``, ``"threshold"`` or ``"exhausted"``.
    """
    mask = np.array(available, dtype=bool, copy=True)
    result = GreedyResult([], [], [])
    with progress.stage("selection", n) as advance:
        for _ in range(n):
            candidates = np.flatnonzero(mask)
            if len(candidates) == 0:
                result.stopped_by = "exhausted"
                break
            best_gain, best = -np.inf, -1
            for start in range(0, len(candidates), chunk_size):
                chunk = candidates[start : start + chunk_size]
                g = criterion.gains(chunk)
                result.n_evaluations += len(chunk)
                k = int(np.argmax(g))
                if g[k] > best_gain:  # strict: earlier chunk (lower index) wins ties
                    best_gain, best = float(g[k]), int(chunk[k])
            if threshold is not None and best_gain < threshold:
                result.stopped_by = "threshold"
                break
            realised = criterion.add(best)
            mask[best] = False
            result.selected.append(best)
            result.gains.append(float(realised))
            result.values.append(float(criterion.value()))
            advance(1)
    return result
