"""Greedy forward selection (Fedorov 1972, ch. 4) and its lazy form (Minoux 1978)."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from ..progress import NULL_PROGRESS

#: Gains within this fraction of max(1, |value|) of the best count as tied when the
#: criterion offers a :meth:`tie_break` (exact ties elsewhere).
TIE_RTOL = 1e-9


@dataclass
class GreedyResult:
    """Picks in selection order with the realised gain of each and the value after it."""

    selected: list[int]
    gains: list[float]
    values: list[float]
    n_evaluations: int = 0
    stopped_by: str = "n"
    extra: dict = field(default_factory=dict)

    def take(self, criterion, index: int) -> float:
        """Add ``index`` to ``criterion`` and record the pick, its realised gain and the value."""
        realised = float(criterion.add(index))
        self.selected.append(int(index))
        self.gains.append(realised)
        self.values.append(float(criterion.value()))
        return realised


def all_gains(criterion, candidates: np.ndarray, chunk_size: int = 8192) -> np.ndarray:
    """``criterion.gains`` over ``candidates`` in chunks (bounded memory)."""
    out = np.empty(len(candidates))
    for start in range(0, len(candidates), chunk_size):
        chunk = candidates[start : start + chunk_size]
        out[start : start + len(chunk)] = criterion.gains(chunk)
    return out


def best_candidate(criterion, candidates: np.ndarray, scores: np.ndarray) -> int:
    """Position in ``candidates`` of the largest score.

    Exact ties go to the lowest position (candidates are in increasing index order).
    If the criterion has a :meth:`tie_break`, scores within ``TIE_RTOL·max(1, |value|)``
    of the best are tied and the largest tie-break score wins.
    """
    k = int(np.argmax(scores))
    tied = None
    if len(scores) > 1:
        tol = TIE_RTOL * max(1.0, abs(float(criterion.value())))
        near = np.flatnonzero(scores >= scores[k] - tol)
        if len(near) > 1:
            tied = near
    if tied is not None:
        tb = criterion.tie_break(candidates[tied])
        if tb is not None:
            return int(tied[int(np.argmax(tb))])
    return k


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

    Ties go to the lowest frame index (or to the criterion's ``tie_break``, see
    :func:`best_candidate`). Returns a :class:`GreedyResult`; ``stopped_by`` is
    ``"n"``, ``"threshold"`` or ``"exhausted"``. Cost: every pick evaluates every
    remaining candidate (``n_evaluations`` = Σ_k (N_available − k)).
    """
    mask = np.array(available, dtype=bool, copy=True)
    result = GreedyResult([], [], [])
    with progress.stage("selection", n) as advance:
        for _ in range(n):
            candidates = np.flatnonzero(mask)
            if len(candidates) == 0:
                result.stopped_by = "exhausted"
                break
            g = all_gains(criterion, candidates, chunk_size)
            result.n_evaluations += len(candidates)
            k = best_candidate(criterion, candidates, g)
            best_gain, best = float(g[k]), int(candidates[k])
            if threshold is not None and best_gain < threshold:
                result.stopped_by = "threshold"
                break
            result.take(criterion, best)
            mask[best] = False
            advance(1)
    return result


def lazy_greedy(criterion, n: int, *, available: np.ndarray, threshold: float | None = None,
                chunk_size: int = 8192, max_batch: int = 256, progress=NULL_PROGRESS) -> GreedyResult:
    """Greedy with stale upper bounds (Minoux 1978) for submodular criteria.

    Every candidate's last evaluated gain is an upper bound on its current gain
    (submodularity: gains only shrink as the design grows). Pop the largest bound;
    if it was evaluated for the current design, it is the greedy pick; otherwise
    re-evaluate it and push it back. The heap orders by (−gain, index), so ties go to
    the lowest index exactly as in :func:`greedy`: for a submodular criterion the
    design is identical, with far fewer gain evaluations. Stale bounds are re-evaluated
    in batches (1, 2, 4, … ≤ ``max_batch`` consecutive stale heap tops) to cut Python
    overhead; re-evaluating more than needed only tightens bounds, so the design is
    unchanged.

    Returns a :class:`GreedyResult` whose ``extra`` holds ``n_evaluations_plain``
    (what :func:`greedy` would have spent) and ``saved_fraction``.
    """
    candidates = np.flatnonzero(np.asarray(available, dtype=bool))
    result = GreedyResult([], [], [])
    g = all_gains(criterion, candidates, chunk_size)
    result.n_evaluations = len(candidates)
    heap = [(-float(gain), int(c)) for gain, c in zip(g, candidates)]
    heapq.heapify(heap)
    stamp = {int(c): 0 for c in candidates}  # pick number at which the bound was computed
    with progress.stage("selection", n) as advance:
        for pick in range(n):
            chosen = None
            batch = 1
            while heap:
                neg_gain, c = heapq.heappop(heap)
                if stamp[c] == pick:
                    chosen = (c, -neg_gain)
                    break
                # re-evaluate this stale bound together with the next stale ones (the batch
                # doubles while the top stays stale; fewer Python round trips, same design)
                stale = [c]
                while heap and len(stale) < batch and stamp[heap[0][1]] != pick:
                    stale.append(heapq.heappop(heap)[1])
                fresh = criterion.gains(np.array(stale, dtype=np.int64))
                result.n_evaluations += len(stale)
                for c_, g_ in zip(stale, fresh):
                    stamp[c_] = pick
                    heapq.heappush(heap, (-float(g_), c_))
                batch = min(2 * batch, max_batch)
            if chosen is None:
                result.stopped_by = "exhausted"
                break
            best, best_gain = chosen
            if threshold is not None and best_gain < threshold:
                result.stopped_by = "threshold"
                break
            result.take(criterion, best)
            advance(1)
    n_plain = sum(len(candidates) - k for k in range(len(result.selected) + (result.stopped_by == "threshold")))
    result.extra["n_evaluations_plain"] = int(n_plain)
    result.extra["saved_fraction"] = 1.0 - result.n_evaluations / n_plain if n_plain else 0.0
    result.extra["lazy"] = True
    return result
