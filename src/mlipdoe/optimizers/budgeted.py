"""Cost-aware greedy for atom and DFT-cost budgets (Khuller, Moss & Naor 1999; Leskovec et al. 2007)."""

from __future__ import annotations

import numpy as np

from ..progress import NULL_PROGRESS
from .greedy import TIE_RTOL, GreedyResult, all_gains, best_candidate, tie_tolerance

#: The two greedy runs of :func:`cost_greedy`, in the order they are run.
BRANCHES = ("ratio", "gain")


def cost_greedy(criterion, costs: np.ndarray, budget: float, *, available: np.ndarray,
                threshold: float | None = None, lazy: bool = True, chunk_size: int = 8192,
                progress=NULL_PROGRESS) -> GreedyResult:
    """Greedy under a knapsack budget Σ_{s∈S} cost(s) ≤ budget, with the best-singleton safeguard.

    Two greedy runs from the same starting state (fixed frames); the better final design
    is kept (ties → ``ratio``) and the criterion is left in its state:

    - ``ratio``: each pick takes, among the candidates that still fit
      (spent + cost ≤ budget), the largest gain per unit cost g/cost. Gains with
      |g| ≤ ``TIE_RTOL``·max(|v₀|, |v|, max|g⁽¹⁾|) count as 0 — v₀ the starting value,
      v the current one and g⁽¹⁾ the first step's gains, i.e. the criterion's own scale
      (the I/A/G variances are ~1e-6 eV²/atom², so an absolute floor would hide every
      gain). Gains ≤ 0 (``maximin``/``fps``, whose value is a minimum distance and can
      only fall) rank by the same g/cost: the loss of minimum distance per unit of budget
      spent. Scores within ``TIE_RTOL`` of the best (relative) are tied and go to the
      largest ``tie_break``/cost (e.g. D gain per cost while ``e`` is flat; for
      ``maximin``/``fps`` the distance the frame fills in, per cost), or without a
      tie-break to the cheapest frame, then the lowest index.
    - ``gain``: each pick takes the affordable candidate with the largest gain, tied
      as in :func:`~mlipdoe.optimizers.greedy.greedy`. Its first pick is the best
      affordable singleton, so for a monotone criterion this run's value is at least the
      best singleton's.

    A criterion may restrict the runs with a ``budget_runs`` attribute: ``random`` has
    ``("gain",)`` (its gains are random priorities, so its design is a uniformly random
    order filled while frames fit; picking between runs by value would bias the baseline).

    For a monotone submodular criterion (``d``) max(ratio, best singleton) ≥
    (1 − 1/e)/2 × optimum (Khuller, Moss & Naor 1999; Leskovec et al. 2007), so the kept
    design has that guarantee. For the others it is a heuristic.

    Both runs stop when no remaining candidate fits (``stopped_by="budget"``) or when
    the chosen pick's gain is below ``threshold`` (``"threshold"``). The budget is never
    exceeded: a frame is only a candidate if it fits.

    ``lazy`` (default True) uses stale upper bounds (Minoux 1978) when the criterion is
    ``submodular``: a candidate's last gain bounds its current gain, and with its cost
    fixed, last gain/cost bounds its current ratio. Candidates are re-evaluated best
    bound first until no stale bound can still win or tie, so the picks are those of
    plain evaluation. Criteria that are not submodular are always evaluated exactly.

    Parameters
    ----------
    costs : (N,) array of positive floats
    budget : float
    available : (N,) bool array
    lazy : bool

    Returns
    -------
    GreedyResult
        The kept run's picks; ``n_evaluations`` counts both runs. ``extra`` holds
        ``spent``, ``budget``, ``phases`` (per pick: ``ratio``, ``tie_break``,
        ``fill`` for the ratio run, ``gain`` for the gain run), ``branch`` (which run
        was kept), ``branches`` ({run: value, spent, selected, n_evaluations,
        stopped_by}), ``best_singleton`` ({index, value}) and ``lazy``.
    """
    costs = np.asarray(costs, dtype=np.float64)
    mask = np.array(available, dtype=bool, copy=True)
    use_lazy = bool(lazy and getattr(criterion, "submodular", False))
    start = criterion.snapshot()
    v0 = float(criterion.value())
    first = np.flatnonzero(mask & (costs <= budget))
    g0 = all_gains(criterion, first, chunk_size) if len(first) else np.empty(0)
    scale = max(abs(v0), float(np.abs(g0).max()) if len(g0) else 0.0)
    singleton = None
    if len(first):
        k = best_candidate(criterion, first, g0)
        singleton = {"index": int(first[k]), "value": v0 + float(g0[k])}
    branches = tuple(getattr(criterion, "budget_runs", BRANCHES))
    runs: dict[str, tuple[GreedyResult, float]] = {}
    with progress.stage("selection", None) as advance:
        for branch in branches:
            criterion.restore(start)
            run = _branch(criterion, costs, float(budget), mask, first, g0, per_cost=branch == "ratio",
                          lazy=use_lazy, scale=scale, threshold=threshold, chunk_size=chunk_size, advance=advance)
            runs[branch] = (run, float(criterion.value()))
    kept = branches[0]
    for branch in branches[1:]:
        if runs[branch][1] > runs[kept][1] + TIE_RTOL * max(scale, abs(runs[kept][1])):
            kept = branch
    result = runs[kept][0]
    if kept != branches[-1]:  # leave the criterion in the kept design's state
        criterion.restore(start)
        for index in result.selected:
            criterion.add(index)
    result.n_evaluations = len(first) + sum(r.n_evaluations for r, _ in runs.values())
    result.extra.update(
        budget=float(budget), branch=kept, lazy=use_lazy,
        branches={b: {"value": v, "spent": r.extra["spent"], "selected": list(r.selected),
                      "n_evaluations": r.n_evaluations, "stopped_by": r.stopped_by} for b, (r, v) in runs.items()},
        best_singleton=singleton)
    return result


def _branch(criterion, costs, budget, mask, first, g0, *, per_cost, lazy, scale, threshold, chunk_size, advance):
    """One greedy run (``per_cost``: by gain/cost, else by gain) from the current state."""
    alive = mask.copy()
    bound = np.full(len(alive), -np.inf)  # last evaluated gain (an upper bound when lazy)
    bound[first] = g0
    fresh = np.zeros(len(alive), dtype=bool)
    fresh[first] = True
    result = GreedyResult([], [], [])
    phases: list[str] = []
    spent = 0.0
    while True:
        alive &= spent + costs <= budget  # a frame that does not fit now never will
        cand = np.flatnonzero(alive)
        if len(cand) == 0:
            result.stopped_by = "budget"
            break
        tol = TIE_RTOL * max(scale, abs(float(criterion.value())))
        stale = cand[~fresh[cand]]
        if not lazy:
            if len(stale):
                bound[stale] = all_gains(criterion, stale, chunk_size)
                result.n_evaluations += len(stale)
                fresh[stale] = True
        else:
            result.n_evaluations += _refresh_bounds(criterion, cand, bound, fresh, costs, per_cost, tol, chunk_size)
        pool = cand[fresh[cand]]
        g = bound[pool]
        if per_cost:
            k, phase = _best_ratio(criterion, pool, g, costs[pool], tol)
        else:
            k, phase = best_candidate(criterion, pool, g), "gain"
        best, best_gain = int(pool[k]), float(g[k])
        if threshold is not None and best_gain < threshold:
            result.stopped_by = "threshold"
            break
        result.take(criterion, best)
        alive[best] = False
        fresh[:] = False
        spent += float(costs[best])
        phases.append(phase)
        advance(1)
    result.extra.update(spent=spent, phases=phases)
    return result


def _scores(g, c, per_cost, tol):
    """Gain per cost with |gain| ≤ ``tol`` counted as 0 (``per_cost``), else the raw gain
    (as :func:`~mlipdoe.optimizers.greedy.best_candidate` ranks it). Both are
    non-decreasing in the gain, so stale gains give upper bounds on the scores."""
    if not per_cost:
        return g
    return np.where(np.abs(g) <= tol, 0.0, g) / c


def _window(criterion, best, per_cost):
    """How far below the best score another score still counts as tied."""
    return TIE_RTOL * abs(best) if per_cost else tie_tolerance(criterion, best)


def _refresh_bounds(criterion, cand, bound, fresh, costs, per_cost, tol, chunk_size) -> int:
    """Re-evaluate stale candidates, best bound first, until none can still win or tie.

    Valid for submodular criteria: a stale gain bounds the current gain, so a stale
    score bounds the current score (the cost is fixed, and zeroing gains below ``tol``
    is monotone). Returns the number of evaluations.
    """
    evaluated, batch = 0, 1
    while True:
        done = cand[fresh[cand]]
        if len(done):
            s = _scores(bound[done], costs[done], per_cost, tol)
            best = float(s.max())
            floor = best - _window(criterion, best, per_cost)
        else:
            floor = -np.inf
        stale = cand[~fresh[cand]]
        if len(stale) == 0:
            return evaluated
        b = _scores(bound[stale], costs[stale], per_cost, tol)
        above = int(np.count_nonzero(b >= floor))
        if above == 0:
            return evaluated
        size = min(batch, above)
        take = stale[np.argpartition(-b, size - 1)[:size]] if size < len(stale) else stale
        take = np.sort(take)
        for lo in range(0, len(take), chunk_size):
            part = take[lo : lo + chunk_size]
            bound[part] = criterion.gains(part)
        fresh[take] = True
        evaluated += len(take)
        batch = min(2 * batch, above)


def _best_ratio(criterion, cand, g, c, tol) -> tuple[int, str]:
    """Position of the pick of the ``ratio`` run and its phase (see :func:`cost_greedy`)."""
    s = _scores(g, c, True, tol)
    best = float(s.max())
    near = np.flatnonzero(s >= best - TIE_RTOL * abs(best))
    if len(near) == 1:
        return int(near[0]), "ratio"
    phase = "ratio" if best != 0.0 else "fill"
    tb = criterion.tie_break(cand[near])
    if tb is not None:
        second = np.asarray(tb, dtype=np.float64) / c[near]
        top = float(second.max())
        if np.isfinite(top):
            near = near[second >= top - TIE_RTOL * abs(top)]
        else:  # infinite tie-break scores (empty design): all tied
            near = near[second == top]
        if best == 0.0:
            phase = "tie_break"
    else:
        near = near[c[near] == c[near].min()]
    return int(near[0]), phase
