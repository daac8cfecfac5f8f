"""I, A and G greedy selection time against D's on the same model, in one run.

    python benchmarks/fast_gains.py [--n-frames 20000] [--n-sparse 500] [--picks 200]
                                    [--criteria i,g] [--reference-picks 3] [--blas-threads 1]

Pool: hcp Zr frames of 16 atoms (``zr_example``, strain ≤ 5 %, rattle 0.05 Å), a small
SOAP (n_max 4, l_max 3, 4.5 Å), M sparse points by CUR, energy rows at σ_E = 1 meV (the
default noise). Times, for ``--picks`` picks from the whole pool:

- ``d``: lazy greedy (what ``mlipdoe select`` runs for d);
- each of ``--criteria``: plain greedy (not submodular) with the O(N M) energy-only gains,
  its ratio to d's time, how many pool rows it recomputed from C (in sweeps of the pool)
  and, for g, the first pick alone (C = I: every candidate needs every target);
- ``--reference-picks`` picks of each criterion with the O(N M²) (i, a) or O(T N M) (g)
  gains, per pick, and whether they are the same as the fast run's first picks;
- g with a separate target of ``--g-target-frames`` generated frames.

On a shared machine pass ``--blas-threads 1`` (OpenBLAS spin-waits otherwise dominate).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import threadpoolctl

import mlipdoe
from mlipdoe.criteria import make_criterion, target_rows
from mlipdoe.descriptors import SOAP
from mlipdoe.generate import zr_example
from mlipdoe.optimizers import greedy, lazy_greedy

SMALL_SOAP = SOAP(cutoff=4.5, cutoff_transition_width=0.5, n_max=4, l_max=3, atom_sigma=0.5)


def timed_greedy(criterion, model, n: int, *, lazy: bool = False, first_pick: bool = False):
    """(seconds, result, seconds of the first pick or None) of a greedy run from ``initialize``."""
    available = np.ones(model.n_frames, dtype=bool)
    first = None
    if first_pick:
        criterion.initialize(model)
        t = time.perf_counter()
        greedy(criterion, 1, available=available)
        first = time.perf_counter() - t
    criterion.initialize(model)
    t = time.perf_counter()
    run = (lazy_greedy if lazy else greedy)(criterion, n, available=available)
    return time.perf_counter() - t, run, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-frames", type=int, default=20000)
    parser.add_argument("--n-sparse", type=int, default=500)
    parser.add_argument("--picks", type=int, default=200)
    parser.add_argument("--criteria", default="i,g", help="comma-separated, from i, a, g")
    parser.add_argument("--reference-picks", type=int, default=3,
                        help="picks timed with the O(N M²) / O(T N M) gains (0: skip)")
    parser.add_argument("--g-target-frames", type=int, default=2000,
                        help="also time g on a separate target of this many generated frames (0: skip)")
    parser.add_argument("--blas-threads", type=int, default=None)
    args = parser.parse_args()
    limits = threadpoolctl.threadpool_limits(limits=args.blas_threads, user_api="blas") if args.blas_threads else None

    t = time.perf_counter()
    frames = zr_example(args.n_frames, seed=4, rattle=0.05, max_strain=0.05)
    model = mlipdoe.build_information_model(frames, soap=SMALL_SOAP, n_sparse=args.n_sparse)
    W = model.energy_factors()
    q0 = np.einsum("ij,ij->i", W, W)
    print(f"pool: {model.n_frames} hcp Zr frames of {frames[0].get_global_number_of_atoms()} atoms, M = {model.M}, "
          f"sigma_E = 1 meV, q = |w|^2 in [{q0.min():.2e}, {q0.max():.2e}] (model built in "
          f"{time.perf_counter() - t:.1f} s); {args.picks} picks; BLAS threads {args.blas_threads or 'default'}")
    del W

    t_d, _, _ = timed_greedy(make_criterion("d"), model, args.picks, lazy=True)
    print(f"d  lazy greedy   {t_d:7.2f} s  {1e3 * t_d / args.picks:6.2f} ms/pick")
    for name in args.criteria.split(","):
        crit = make_criterion(name)
        t_fast, run, first = timed_greedy(crit, model, args.picks, first_pick=name == "g")
        sweeps = crit.n_row_refreshes / (model.n_frames if name != "g" else len(crit._v))
        note = f"; first pick {first:.2f} s, the other {args.picks - 1} {t_fast - first:.2f} s" if first else ""
        print(f"{name}  greedy        {t_fast:7.2f} s  {1e3 * t_fast / args.picks:6.2f} ms/pick  "
              f"ratio to d {t_fast / t_d:5.2f}  rows recomputed from C {crit.n_row_refreshes} "
              f"({sweeps:.2f} sweeps){note}")
        if args.reference_picks:
            ref = make_criterion(name)
            ref.fast_max_entries, ref.fast = 0, False
            t_ref, run_ref, _ = timed_greedy(ref, model, args.reference_picks)
            same = run_ref.selected == run.selected[: args.reference_picks]
            print(f"{name}  reference     {t_ref / args.reference_picks:7.2f} s/pick over {args.reference_picks} picks "
                  f"(x {args.picks} = {t_ref / args.reference_picks * args.picks:.0f} s); same picks: {same}")
    if args.g_target_frames:
        target = target_rows(model, zr_example(args.g_target_frames, seed=5, rattle=0.05, max_strain=0.05))
        crit = make_criterion("g", target=target)
        t_fast, run, first = timed_greedy(crit, model, args.picks, first_pick=True)
        print(f"g  greedy, separate target of {len(target)} frames: {t_fast:7.2f} s  "
              f"{1e3 * t_fast / args.picks:6.2f} ms/pick  ratio to d {t_fast / t_d:5.2f}; first pick {first:.2f} s")
    if limits is not None:
        limits.unregister()


if __name__ == "__main__":
    main()
