"""I (and A, G) greedy selection time against D's on a large energy store, in one run.

    python benchmarks/trace_scale.py [--n-frames 100000] [--n-sparse 1000] [--picks 1000]
                                     [--criteria i] [--store DIR] [--blas-threads 1]
                                     [--scheduler serial|local|processes|tcp://…]

Pool and store: those of benchmarks/scale.py (hcp Zr, 32 atoms per frame, strain ≤ 3 %,
rattle 0.02 Å, default SOAP, ζ = 4, M sparse points by CUR on a 50,000-environment
sample), built with ``build_model_stored`` (reused when ``--store`` holds it). Energy rows
at σ_E = 1 meV. Times, for ``--picks`` picks from the whole pool, in one run:

- ``d``: lazy greedy (exact: d is submodular; what ``mlipdoe select`` runs);
- the bare products of one energy-only I pick (Ψ u, a rank-one update of an N × M array, its
  row norms) and i's time per pick over them;
- each of ``--criteria`` with plain greedy (what ``mlipdoe select`` runs for these criteria,
  which are not submodular: the O(N M)-per-pick energy-only gains), and its ratio to d's time;
- ``--lazy-check n``: on the first n frames, lazy greedy run on each criterion as if it were
  submodular (stale gains as bounds), its gain evaluations and how many picks it shares
  with greedy — why the tool does not offer it;
- peak RSS: of each criterion's run where the count can be restarted (Linux), and of the whole run.
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


def reset_peak_rss() -> bool:
    """Restart the peak RSS count (Linux: ``5`` into /proc/self/clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:  # pragma: no cover - not Linux, or not permitted
        return False


def bare_i_pick(model, repeats: int = 10) -> float:
    """Seconds per pick of the bare products the energy-only I update makes: Ψ u over the
    pool's rows, a rank-one update of an N × M array (BLAS ger) and |h_c|² of its rows."""
    from mlipdoe.criteria.trace import rowdot
    from mlipdoe.state import _ger

    rng = np.random.default_rng(0)
    H = rng.standard_normal((model.n_frames, model.M))
    u, yu = rng.standard_normal(model.M), rng.standard_normal(model.M)
    t = time.perf_counter()
    for _ in range(repeats):
        z = model.psi @ u
        z *= model.energy_scale
        H = _ger(-1e-3, z, yu, H)
        rowdot(H, H)
    return (time.perf_counter() - t) / repeats


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
    p.add_argument("--scheduler", default=None, help="store build: serial (default), local, processes or tcp://host:port")
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
                                   n_sparse=args.n_sparse, memory_limit=args.memory_limit, scheduler=args.scheduler)
        print(f"{model.n_frames} frames of 32 atoms, M = {model.M}, {args.picks} picks; store "
              f"{'built' if model.store_info['chunks_computed'] else 'loaded'} in {time.perf_counter() - t:.1f} s",
              flush=True)
        reset = reset_peak_rss()
        t_d, run_d, _ = timed(model, "d", args.picks, lazy=True)
        print(f"d  lazy greedy (exact)      {t_d:8.2f} s   {run_d.n_evaluations} gain evaluations"
              f"{f'   peak RSS {peak_rss() / 1e9:.2f} GB' if reset else ''}", flush=True)
        t_i = None
        for name in [c for c in args.criteria.split(",") if c]:
            run_c = crit = None  # the previous criterion's state goes before this one's is counted
            reset = reset_peak_rss()
            t_c, run_c, crit = timed(model, name, args.picks, lazy=False)
            print(f"{name}  greedy (exact)           {t_c:8.2f} s   ratio to d {t_c / t_d:6.2f}   "
                  f"{t_c / args.picks * 1e3:.1f} ms/pick{f'   peak RSS {peak_rss() / 1e9:.2f} GB' if reset else ''}",
                  flush=True)
            if name == "i":
                t_i = t_c
        if "i" in args.criteria.split(",") or "a" in args.criteria.split(","):
            t_bare = bare_i_pick(model)
            print(f"bare i pick products        {t_bare * 1e3:.1f} ms/pick (Ψ u, rank-one update of N × M, row norms)"
                  f"{f';  i greedy / bare = {t_i / args.picks / t_bare:.2f}' if t_i else ''}", flush=True)
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
