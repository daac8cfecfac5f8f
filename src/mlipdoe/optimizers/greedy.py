"""Greedy forward selection (Fedorov 1972, ch. 4) and its lazy form (Minoux 1978)."""

from __future__ import annotations

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


def tie_tolerance(criterion, best: float) -> float:
    """Largest gap below the best gain ``best`` within which :func:`best_candidate` may
    prefer another candidate (the larger of its two tie rules)."""
    return TIE_RTOL * max(1.0, abs(float(criterion.value())), abs(best))


def best_candidate(criterion, candidates: np.ndarray, scores: np.ndarray) -> int:
    """Position in ``candidates`` of the largest score.

    Candidates are in increasing index order. If the criterion has a :meth:`tie_break`,
    scores within ``TIE_RTOL·max(1, |value|)`` of the best are tied and the largest
    tie-break score wins. Otherwise scores within ``TIE_RTOL·|best|`` of the best (equal
    up to round-off, e.g. duplicated frames whose gains BLAS rounds differently by
    position) are tied and the lowest position wins.
    """
    k = int(np.argmax(scores))
    if len(scores) == 1:
        return k
    best = float(scores[k])
    near = np.flatnonzero(scores >= best - TIE_RTOL * max(1.0, abs(float(criterion.value()))))
    if len(near) > 1:
        tb = criterion.tie_break(candidates[near])
        if tb is not None:
            return int(near[int(np.argmax(tb))])
    return int(np.flatnonzero(scores >= best - TIE_RTOL * abs(best))[0])


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
                chunk_size: int = 8192, progress=NULL_PROGRESS) -> GreedyResult:
    """Greedy with stale upper bounds (Minoux 1978) for submodular criteria.

    Every candidate's last evaluated gain is an upper bound on its current gain
    (submodularity: gains only shrink as the design grows). For each pick, the stale
    candidates with the largest bounds are re-evaluated, a batch at a time in one
    ``criterion.gains`` call, until the best re-evaluated gain g* is at least every
    remaining stale bound; ties go to the lowest index exactly as in :func:`greedy`, so
    for a submodular criterion the design is the same with far fewer gain evaluations.
    The bounds live in one array (no heap): a batch costs O(N) array work plus its
    evaluations. The batch starts at a quarter of the previous pick's evaluations and
    then grows to min(2 × batch, number of stale bounds that may still win); evaluating
    more than needed only tightens bounds, so the design does not depend on the batch
    sizes. Stale bounds within :func:`tie_tolerance` of g* are evaluated too, so the pick
    is :func:`best_candidate` over the same near-tied set as in :func:`greedy`.

    Returns a :class:`GreedyResult` whose ``extra`` holds ``n_evaluations_plain``
    (what :func:`greedy` would have spent), ``saved_fraction`` and
    ``evaluations_per_pick``.
    """
    alive = np.array(available, dtype=bool, copy=True)
    candidates = np.flatnonzero(alive)
    result = GreedyResult([], [], [])
    bound = np.full(len(alive), -np.inf)
    bound[candidates] = all_gains(criterion, candidates, chunk_size)
    result.n_evaluations = len(candidates)
    fresh = alive.copy()  # evaluated for the current design
    per_pick, batch = [], 1
    with progress.stage("selection", n) as advance:
        for pick in range(n):
            if pick:
                fresh[:] = False
            spent = 0
            while True:
                fresh_idx = np.flatnonzero(fresh)
                best_gain = float(bound[fresh_idx].max()) if len(fresh_idx) else -np.inf
                # a stale bound this close to the best fresh gain may still win or tie
                floor = best_gain - tie_tolerance(criterion, best_gain) if len(fresh_idx) else -np.inf
                stale = np.flatnonzero(alive & ~fresh)
                b = bound[stale]
                above = int(np.count_nonzero(b >= floor))
                if above == 0:
                    break
                size = min(batch, above)
                take = stale[np.argpartition(-b, size - 1)[:size]] if size < len(stale) else stale
                take.sort()
                bound[take] = criterion.gains(take)
                fresh[take] = True
                spent += len(take)
                batch = min(2 * batch, above)
            best = None
            if len(fresh_idx):
                k = best_candidate(criterion, fresh_idx, bound[fresh_idx])
                best, best_gain = int(fresh_idx[k]), float(bound[fresh_idx[k]])
            if best is None:
                result.stopped_by = "exhausted"
                break
            result.n_evaluations += spent
            per_pick.append(spent)
            batch = max(1, spent // 4)
            if threshold is not None and best_gain < threshold:
                result.stopped_by = "threshold"
                break
            result.take(criterion, best)
            alive[best] = fresh[best] = False
            bound[best] = -np.inf
            advance(1)
    n_plain = sum(len(candidates) - k for k in range(len(result.selected) + (result.stopped_by == "threshold")))
    result.extra["n_evaluations_plain"] = int(n_plain)
    result.extra["saved_fraction"] = 1.0 - result.n_evaluations / n_plain if n_plain else 0.0
    result.extra["evaluations_per_pick"] = per_pick
    result.extra["lazy"] = True
    return result

