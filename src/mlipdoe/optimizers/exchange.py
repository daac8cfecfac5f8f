"""Fedorov exchange (Fedorov 1972; Cook & Nachtsheim 1980): improve a design by swaps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..exceptions import InputError
from ..progress import NULL_PROGRESS
from .greedy import all_gains


@dataclass
class ExchangeResult:
    """The best design found.

    Attributes
    ----------
    selected : list of int
        Members in order (swapped-in frames appended where they entered).
    gains : list of float
        Realised gain of adding each member, in order, after the fixed frames.
    value : float
        Criterion value of the design.
    history : list of float
        Value after each accepted swap of the best run (first entry: its start).
    start_value : float
        Value of the design passed in.
    n_swaps, n_evaluations : int
        Of all runs together.
    runs : list of dict
        Per run: ``start`` ("given" or "random"), ``start_value``, ``value``,
        ``n_swaps``, ``history``.
    stopped_by : str
        ``"converged"`` or ``"max_iter"`` for the best run.
    """

    selected: list[int]
    gains: list[float]
    value: float
    history: list[float]
    start_value: float
    n_swaps: int = 0
    n_evaluations: int = 0
    runs: list = field(default_factory=list)
    stopped_by: str = "converged"

    @property
    def values(self) -> list[float]:
        out, v = [], self.value - sum(self.gains)
        for g in self.gains:
            v += g
            out.append(v)
        return out


def exchange(criterion, design: Sequence[int], *, available: np.ndarray, fixed: Sequence[int] = (),
             max_iter: int = 100, tol: float = 1e-9, restarts: int = 0, seed: int = 0,
             costs: np.ndarray | None = None, budget: float | None = None, chunk_size: int = 8192,
             progress=NULL_PROGRESS) -> ExchangeResult:
    """Best-improvement Fedorov exchange with optional random restarts.

    Each iteration evaluates every swap (member j out, candidate c in): for each
    swappable member, remove it (``criterion.remove``), score all candidates at once
    (``criterion.gains``) and undo (``snapshot``/``restore``). The best swap is made
    if it improves the value by more than ``tol · |value|`` (relative, so criteria of
    any scale — d in nats, i in eV²/atom² — are treated alike; ``tol`` itself when the
    value is 0); otherwise (or after ``max_iter`` swaps) the run stops.
    A pass costs |S| × (one removal + one gains sweep); for the information criteria a
    trial removal is a downdate of the state's Cholesky factor, O(M² r) (see
    :class:`~mlipdoe.state.InformationState`), built once per pass by
    ``criterion.prepare_removals()``.

    Parameters
    ----------
    criterion : Criterion
        Initialised (its fixed frames are in the state and are never swapped).
    design : sequence of int
        Starting members (pool indices).
    available : (N,) bool array
        Frames that may be swapped in.
    fixed : sequence of int
        Further design frames that must stay (kept, never swapped out).
    max_iter : int
        Most swaps per run.
    tol : float
        Smallest relative improvement that counts.
    restarts : int
        Extra runs from random designs of the same size (or budget), drawn with
        ``np.random.default_rng(seed)``; the best run is kept.
    costs, budget : optional
        Per-frame cost (N,) and the total the swappable members may cost: a swap is
        only considered if the design stays within the budget.

    The criterion is left holding the best design. Returns :class:`ExchangeResult`.
    """
    available = np.asarray(available, dtype=bool)
    base_fixed = set(int(f) for f in getattr(criterion, "fixed", []))
    locked = [int(f) for f in fixed if int(f) not in base_fixed]
    design = [int(d) for d in design]
    if len(set(design)) != len(design):
        raise InputError("the starting design contains a frame twice")
    swappable = [d for d in design if d not in base_fixed and d not in set(locked)]
    if costs is not None and budget is not None and costs[swappable].sum() > budget * (1 + 1e-12):
        raise InputError("the starting design exceeds the budget")
    rng = np.random.default_rng(seed)
    runs: list[dict] = []
    best = None
    n_eval_total = 0
    with progress.stage("exchange", restarts + 1) as advance:
        for run in range(restarts + 1):
            if run == 0:
                start, kind = swappable, "given"
            else:
                start, kind = _random_design(rng, available, base_fixed | set(locked), len(swappable), costs,
                                             budget), "random"
            _load(criterion, locked + start)
            start_value = float(criterion.value())
            history, n_swaps, n_eval, stopped = _local_search(criterion, set(locked), available, max_iter, tol,
                                                              costs, budget, chunk_size)
            n_eval_total += n_eval
            members = [m for m in criterion.members if m not in set(locked)]
            runs.append({"start": kind, "start_value": start_value, "value": history[-1], "n_swaps": n_swaps,
                         "history": history, "stopped_by": stopped, "members": members})
            if best is None or history[-1] > best["value"] + _threshold(best["value"], tol):
                best = runs[-1]
            advance(1)
    gains = _load(criterion, locked + best["members"])
    return ExchangeResult(
        selected=locked + best["members"], gains=gains, value=float(criterion.value()), history=best["history"],
        start_value=runs[0]["start_value"], n_swaps=sum(r["n_swaps"] for r in runs), n_evaluations=n_eval_total,
        runs=[{k: v for k, v in r.items() if k != "members"} for r in runs], stopped_by=best["stopped_by"],
    )


def _threshold(value: float, tol: float) -> float:
    """Smallest improvement that counts: tol relative to |value| (tol itself at 0)."""
    return tol * abs(value) if value != 0 else tol


def _load(criterion, members: Sequence[int]) -> list[float]:
    criterion.reset()
    return [float(criterion.add(m)) for m in members]


def _random_design(rng, available, exclude, size, costs, budget) -> list[int]:
    pool = np.array([i for i in np.flatnonzero(available) if int(i) not in exclude], dtype=np.int64)
    order = rng.permutation(pool)
    if costs is None or budget is None:
        return [int(i) for i in order[:size]]
    out, spent = [], 0.0
    for i in order:
        if spent + costs[i] <= budget:
            out.append(int(i))
            spent += costs[i]
    return out


def _local_search(criterion, locked: set, available, max_iter, tol, costs, budget, chunk_size):
    history = [float(criterion.value())]
    n_swaps = n_eval = 0
    stopped = "converged"
    for _ in range(max_iter):
        members = [m for m in criterion.members if m not in locked]
        mask = available.copy()
        mask[list(criterion.members)] = False
        mask[list(getattr(criterion, "fixed", []))] = False
        candidates = np.flatnonzero(mask)
        if len(candidates) == 0 or not members:
            break
        spent = float(costs[members].sum()) if costs is not None else 0.0
        criterion.prepare_removals()  # e.g. the Cholesky factor every trial removal downdates
        snap = criterion.snapshot()
        before = float(criterion.value())
        threshold = _threshold(before, tol)
        best_delta, best_swap = threshold, None
        for j in members:
            cand = candidates
            if costs is not None and budget is not None:
                cand = cand[spent - costs[j] + costs[cand] <= budget]
                if len(cand) == 0:
                    continue
            delta_out = criterion.remove(j)
            g = all_gains(criterion, cand, chunk_size)
            n_eval += len(cand)
            k = int(np.argmax(g))
            if delta_out + g[k] > best_delta:
                best_delta, best_swap = delta_out + float(g[k]), (j, int(cand[k]))
            criterion.restore(snap)
        if best_swap is None:
            break
        j, c = best_swap
        criterion.remove(j)
        criterion.add(c)
        criterion.refresh()
        if not float(criterion.value()) > before + threshold:  # predicted gain lost to round-off: undo, stop
            criterion.restore(snap)
            break
        n_swaps += 1
        history.append(float(criterion.value()))
    else:
        stopped = "max_iter"
    return history, n_swaps, n_eval, stopped
