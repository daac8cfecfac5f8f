"""I (and A) greedy on energy + force factors: the kept H_c, S_c state against the O(N k M²) gains, in one run.

    python benchmarks/block_gains.py [--n-frames 1000] [--n-sparse 1000] [--picks 100]
                                     [--criteria i] [--reference-picks 5] [--blas-threads 1]

Pool: strained (≤ 3 %) and rattled (0.02 Å) hcp Zr cells of 8, 16, 24 and 32 atoms
(supercells 2,2,1 / 2,2,2 / 3,2,2 / 2,2,4, a quarter each), default SOAP, ζ = 4, M sparse
points by CUR, energy + force rows (σ_E = 1 meV, σ_F = 0.1 eV/Å, the defaults), each
frame's factor compressed as ``build_model`` does. Prints, in one run:

- each criterion's greedy with the per-frame block state (what ``mlipdoe select`` runs),
  per pick, and how many frames it recomputed from C (in sweeps of the pool);
- ``--reference-picks`` picks with the O(N k M²) gains (the block state switched off),
  per pick, whether they are the fast run's first picks, and the ratio of the two;
- the bare products one pick of the block state needs (W U of every frame, H − A F,
  H Hᵀ and the k × k solves, on arrays of the same shapes), and the pick's time over them;
- the block state's memory next to the factors'.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import numpy as np

from mlipdoe.criteria import make_criterion
from mlipdoe.descriptors import SOAP
from mlipdoe.generate import ZR_HCP_A, ZR_HCP_C, generate_strained
from mlipdoe.model import build_model
from mlipdoe.model.kernels import Kernel
from mlipdoe.optimizers import greedy

CELLS = ((2, 2, 1), (2, 2, 2), (3, 2, 2), (2, 2, 4))


def pool(n_frames: int) -> list:
    frames = []
    for seed, cell in enumerate(CELLS):
        frames += generate_strained("Zr", structure="hcp", a=ZR_HCP_A, c=ZR_HCP_C, n_frames=n_frames // len(CELLS),
                                    max_strain=0.03, rattle=0.02, supercell=cell, seed=seed)
    return frames


def timed(crit, model, picks: int):
    t = time.perf_counter()
    crit.initialize(model)
    run = greedy(crit, picks, available=np.ones(model.n_frames, dtype=bool))
    return time.perf_counter() - t, run


def bare_pick(model, r: int, k_pick: int, rows: int = 2048) -> float:
    """Seconds of the products one pick of the block state makes, on random arrays of its shapes."""
    rng = np.random.default_rng(0)
    U, F = rng.standard_normal((model.M, k_pick)), rng.standard_normal((k_pick, r))
    total = 0.0
    for k in np.unique(model.factor_ranks):
        frames = np.flatnonzero(model.factor_ranks == k)
        step = max(1, rows // int(k))
        for a in range(0, len(frames), step):
            part = frames[a : a + step]
            W = np.concatenate([model.factor(int(c)) for c in part])
            H = rng.standard_normal((len(part), int(k), r))
            S = np.eye(int(k)) + np.zeros((len(part), int(k), int(k)))
            t = time.perf_counter()
            A = W @ U
            H.reshape(len(part) * int(k), r)[...] -= A @ F
            N = np.matmul(H, H.transpose(0, 2, 1))
            np.linalg.solve(S, N)
            total += time.perf_counter() - t
    return total


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-frames", type=int, default=1000)
    p.add_argument("--n-sparse", type=int, default=1000)
    p.add_argument("--picks", type=int, default=100)
    p.add_argument("--criteria", default="i", help="comma-separated, from i, a")
    p.add_argument("--reference-picks", type=int, default=5)
    p.add_argument("--blas-threads", type=int, default=1)
    args = p.parse_args(argv)

    limit = nullcontext()
    if args.blas_threads:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(limits=args.blas_threads, user_api="blas")
    with limit:
        t = time.perf_counter()
        model = build_model(pool(args.n_frames), soap=SOAP(species=(40,)), kernel=Kernel(zeta=4),
                            n_sparse=args.n_sparse, observations=("energy", "forces"))
        ranks = model.factor_ranks
        factor_bytes = int(ranks.sum()) * model.M * 8
        print(f"{model.n_frames} frames of 8–32 atoms, M = {model.M}, energy + force factors: k̄ = {ranks.mean():.1f} "
              f"rows (max {ranks.max()}), {factor_bytes / 1e6:.0f} MB; model built in {time.perf_counter() - t:.1f} s; "
              f"{args.picks} picks; BLAS threads {args.blas_threads or 'default'}", flush=True)
        for name in [c for c in args.criteria.split(",") if c]:
            crit = make_criterion(name)
            t_fast, run = timed(crit, model, args.picks)
            if not crit._fast_blocks:
                print(f"{name}  no block state here (mean factor rows {ranks.mean():.0f} > "
                      f"{crit.fast_block_row_fraction} M, or over fast_block_max_entries): the direct gains ran")
                continue
            state = sum(g.H.nbytes + g.S.nbytes for g in crit._vec.groups)
            print(f"{name}  block state     {1e3 * t_fast / args.picks:8.1f} ms/pick over {args.picks} picks "
                  f"({t_fast:.1f} s); frames recomputed from C {crit.n_row_refreshes} "
                  f"({crit.n_row_refreshes / model.n_frames:.2f} sweeps); state {state / 1e6:.0f} MB", flush=True)
            if args.reference_picks:
                ref = make_criterion(name)
                ref.fast_block_max_entries = 0
                t_ref, run_ref = timed(ref, model, args.reference_picks)
                same = run_ref.selected == run.selected[: args.reference_picks]
                print(f"{name}  O(N k M²) gains {1e3 * t_ref / args.reference_picks:8.1f} ms/pick over "
                      f"{args.reference_picks} picks; same picks: {same}; ratio {t_ref / args.reference_picks / (t_fast / args.picks):.2f}",
                      flush=True)
            k_pick = int(np.mean([ranks[s] for s in run.selected]))
            t_bare = bare_pick(model, len(crit._Y), k_pick)
            print(f"{name}  bare products   {1e3 * t_bare:8.1f} ms/pick (k* = {k_pick}); block state / bare = "
                  f"{t_fast / args.picks / t_bare:.2f}", flush=True)


if __name__ == "__main__":
    main()
