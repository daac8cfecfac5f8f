"""I (and A, G) greedy selection time against D's on a large energy store, in one run.

    python benchmarks/trace_scale.py [--n-frames 100000] [--n-sparse 1000] [--picks 1000]
                                     [--criteria i] [--store DIR] [--blas-threads 1]

Pool and store: those of benchmarks/scale.py (hcp Zr, 32 atoms per frame, strain ≤ 3 %,
rattle 0.02 Å, default SOAP, ζ = 4, M sparse points by CUR on a 50,000-environment
sample), built with ``build_model_stored`` (reused when ``--store`` holds it). Energy rows
at σ_E = 1 meV. Times, for ``--picks`` picks from the whole pool, in one run:

- ``d``: lazy greedy (exact: d is submodular; what ``mlipdoe select`` runs);
- each of ``--criteria`` with plain greedy (what ``mlipdoe select`` runs for these criteria,
  which are not submodular: the O(N M)-per-pick energy-only gains), and its ratio to d's time;
- ``--lazy-check n``: on the first n frames, lazy greedy run on each criterion as if it were
  submodular (stale gains as bounds), its gain evaluations and how many picks it shares
  with greedy — why the tool does not offer it;
- peak RSS.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from mlipdoe.criteria import make_criterion
from mlipdoe.descriptors import SOAP
from mlipdoe.generate import ZR_HCP_A, ZR_HCP_C, generate_strained
from mlipdoe.model.kernels import Kernel
from mlipdoe.optimizers import greedy, lazy_greedy
from mlipdoe.store import build_model_stored, peak_rss


def timed(model, name: str, picks: int, *, lazy: bool):
    crit = make_criterion(name).initialize(model)
    t = time.perf_counter()
    run = (lazy_greedy if lazy else greedy)(crit, picks, available=np.ones(model.n_frames, dtype=bool))
    return time.perf_counter() - t, run, crit


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-frames", type=int, default=100_000)
    p.add_argument("--n-sparse", type=int, default=1000)
    p.add_argument("--picks", type=int, default=1000)
    p.add_argument("--criteria", default="i", help="comma-separated, from i, a, g (plain greedy)")
    p.add_argument("--lazy-check", type=int, default=0, help="frames for the lazy-as-heuristic check (0: skip)")
    p.add_argument("--store", type=Path, default=None)
    p.add_argument("--memory-limit", default="3GB")
    p.add_argument("--blas-threads", type=int, default=1)
    args = p.parse_args(argv)

    limit = nullcontext()
    if args.blas_threads:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(limits=args.blas_threads, user_api="blas")
    root = Path(tempfile.mkdtemp(prefix="mlipdoe-trace-scale-"))
    store = args.store or root / "store"
    frames = generate_strained("Zr", structure="hcp", a=ZR_HCP_A, c=ZR_HCP_C, n_frames=args.n_frames,
                               max_strain=0.03, rattle=0.02, supercell=(2, 2, 4), seed=0)
    with limit:
        t = time.perf_counter()
        model = build_model_stored(frames, store=store, soap=SOAP(species=(40,)), kernel=Kernel(zeta=4),
                                   n_sparse=args.n_sparse, memory_limit=args.memory_limit)
        print(f"{model.n_frames} frames of 32 atoms, M = {model.M}, {args.picks} picks; store "
              f"{'built' if model.store_info['chunks_computed'] else 'loaded'} in {time.perf_counter() - t:.1f} s",
              flush=True)
        t_d, run_d, _ = timed(model, "d", args.picks, lazy=True)
        print(f"d  lazy greedy (exact)      {t_d:8.2f} s   {run_d.n_evaluations} gain evaluations", flush=True)
        for name in [c for c in args.criteria.split(",") if c]:
            t_c, run_c, crit = timed(model, name, args.picks, lazy=False)
            print(f"{name}  greedy (exact)           {t_c:8.2f} s   ratio to d {t_c / t_d:6.2f}   "
                  f"{t_c / args.picks * 1e3:.1f} ms/pick", flush=True)
        if args.lazy_check:
            sub = build_model_stored(frames[: args.lazy_check], store=root / "lazy-check",
                                     soap=SOAP(species=(40,)), kernel=Kernel(zeta=4), n_sparse=args.n_sparse)
            n = min(args.picks, args.lazy_check // 10)
            for name in [c for c in args.criteria.split(",") if c]:
                _, plain, crit_p = timed(sub, name, n, lazy=False)
                _, lazy, crit_l = timed(sub, name, n, lazy=True)
                shared = len(set(plain.selected) & set(lazy.selected))
                print(f"{name}  lazy as a heuristic, {args.lazy_check} frames, {n} picks: "
                      f"{lazy.n_evaluations} vs {plain.n_evaluations} gain evaluations; {shared} of {n} frames "
                      f"shared; value {float(crit_l.value()):.6e} vs greedy {float(crit_p.value()):.6e}", flush=True)
    print(f"peak RSS {peak_rss() / 1e9:.2f} GB")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
