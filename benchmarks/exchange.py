"""One Fedorov exchange pass vs greedy for the same n, at σ_E = 1 meV.

    python benchmarks/exchange.py [--n-frames 2000] [--n-sparse 300] [--n 100] [--criteria d,a]

A pass evaluates every swap: |S| trial removals (each undone), each followed by one gains
sweep over the candidates. With the information state's Cholesky downdate a trial
removal costs O(M² r); the printed ratio (pass / greedy) is the number to watch. It also
prints how many times the criterion state was rebuilt from its members during the pass
(``initialize`` calls beyond the loads the exchange itself makes: one at the start, one
per accepted swap, one at the end).

Pool: hcp Zr (``zr_example``), default SOAP, energy rows, σ_E = 1 meV. Times are the
minimum of ``--repeats`` runs; on a shared machine set ``OPENBLAS_NUM_THREADS=1`` (small
BLAS calls from two OpenBLAS thread pools otherwise dominate under load). Runs with whatever
``mlipdoe`` is importable, so the same script times an older checkout
(``PYTHONPATH=<old>/src python benchmarks/exchange.py``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mlipdoe.criteria import make_criterion
from mlipdoe.generate import zr_example
from mlipdoe.hypers import Noise
from mlipdoe.model import build_model
from mlipdoe.optimizers import exchange, greedy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-frames", type=int, default=2000)
    parser.add_argument("--n-sparse", type=int, default=300)
    parser.add_argument("--n", type=int, default=100, help="design size (greedy picks, exchange members)")
    parser.add_argument("--criteria", default="d", help="comma-separated criteria (d, a, i, g, e)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-strain", type=float, default=0.03)
    parser.add_argument("--rattle", type=float, default=0.02, help="Å; larger values give more distinct frames")
    parser.add_argument("--repeats", type=int, default=3, help="times are the minimum over this many runs")
    args = parser.parse_args()

    frames = zr_example(args.n_frames, seed=args.seed, max_strain=args.max_strain, rattle=args.rattle)
    t = time.perf_counter()
    model = build_model(frames, n_sparse=args.n_sparse, noise=Noise(energy=0.001), seed=args.seed)
    print(f"pool: {model.n_frames} hcp Zr frames (strain <= {args.max_strain:g}, rattle {args.rattle:g} A), "
          f"M = {model.M}, sigma_E = 1 meV "
          f"(model built in {time.perf_counter() - t:.1f} s)")
    available = np.ones(model.n_frames, dtype=bool)
    for name in args.criteria.split(","):
        t_greedy, t_pass = [], []
        for _ in range(args.repeats):
            crit = make_criterion(name).initialize(model, seed=args.seed)
            t = time.perf_counter()
            run = greedy(crit, args.n, available=available)
            t_greedy.append(time.perf_counter() - t)

            calls = {"initialize": 0}
            initialize = crit.initialize

            def counted(*a, _init=initialize, _calls=calls, **k):
                _calls["initialize"] += 1
                return _init(*a, **k)

            crit.initialize = counted
            t = time.perf_counter()
            ex = exchange(crit, list(run.selected), available=available, max_iter=1, seed=args.seed)
            t_pass.append(time.perf_counter() - t)
        rebuilds = calls["initialize"] - (2 + ex.n_swaps)
        state = getattr(crit, "state", None)
        refreshes = getattr(state, "n_refreshes", None)
        tg, tp = min(t_greedy), min(t_pass)
        print(f"{name}: greedy n = {args.n}: {tg:7.2f} s   exchange pass ({len(run.selected)} members x "
              f"{model.n_frames - len(run.selected)} candidates, {ex.n_swaps} swap): {tp:7.2f} s   "
              f"ratio pass/greedy {tp / tg:6.2f}   rebuilds from members during the pass {rebuilds}"
              + (f"   exact refreshes of the final state {refreshes}" if refreshes is not None else ""))

if __name__ == "__main__":
    main()
