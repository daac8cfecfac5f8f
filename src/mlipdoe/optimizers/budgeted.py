"""Cost-aware greedy for atom and DFT-cost budgets (Khuller, Moss & Naor 1999; Leskovec et al. 2007)."""

from __future__ import annotations

import numpy as np

from ..progress import NULL_PROGRESS
from .greedy import TIE_RTOL, GreedyResult, all_gains, best_candidate


def cost_greedy(criterion, costs: np.ndarray, budget: float, *, available: np.ndarray,
                threshold: float | None = None, chunk_size: int = 8192, progress=NULL_PROGRESS) -> GreedyResult:
    """Greedy under a knapsack budget Σ_{s∈S} cost(s) ≤ budget.

    Rule (documented in docs/criteria.md):

    1. *ratio phase* — among the candidates that still fit (spent + cost ≤ budget),
       pick the largest gain per unit cost, gain/cost, over candidates with a
       positive gain (> ``TIE_RTOL``·max(1, |value|)); ties as in :func:`greedy`.
       As the budget shrinks only smaller frames fit, so this phase already fills
       leftover budget with the best-ratio small frames.
    2. *fill phase* — once no affordable candidate has a positive gain, keep adding
       the affordable candidate with the largest gain (ties → ``tie_break`` → lowest
       index) until nothing fits (or the gain drops below ``threshold``).

    The budget is never exceeded: a frame is only a candidate if it fits.

    Parameters
    ----------
    costs : (N,) array of positive floats
    budget : float
    available : (N,) bool array

    Returns
    -------
    GreedyResult
        ``extra`` holds ``spent``, ``budget`` and ``phases`` (per pick).
    """
    costs = np.asarray(costs, dtype=np.float64)
    mask = np.array(available, dtype=bool, copy=True)
    result = GreedyResult([], [], [])
    spent = 0.0
    phases: list[str] = []
    with progress.stage("selection", int(mask.sum())) as advance:
        while True:
            candidates = np.flatnonzero(mask & (spent + costs <= budget))
            if len(candidates) == 0:
                result.stopped_by = "budget"
                break
            g = all_gains(criterion, candidates, chunk_size)
            result.n_evaluations += len(candidates)
            positive = g > TIE_RTOL * max(1.0, abs(float(criterion.value())))
            if positive.any():
                ratio = np.where(positive, g / costs[candidates], -np.inf)
                k = best_candidate(criterion, candidates, ratio)
                phase = "ratio"
            else:
                k = best_candidate(criterion, candidates, g)
                phase = "fill"
            best, best_gain = int(candidates[k]), float(g[k])
            if threshold is not None and best_gain < threshold:
                result.stopped_by = "threshold"
                break
            result.take(criterion, best)
            mask[best] = False
            spent += float(costs[best])
            phases.append(phase)
            advance(1)
    result.extra.update(spent=spent, budget=float(budget), phases=phases)
    return result
