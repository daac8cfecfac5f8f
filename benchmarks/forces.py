"""Energy+force D-optimal selection on a large pool: wall time, peak RSS, lazy-greedy savings.

Pool: strained, rattled hcp Zr supercells of 32–108 atoms (sizes drawn uniformly from
the list below). Builds the information model with ``observations=("energy", "forces")``
(streamed gradient pass, per-frame compressed factors, docs/forces.md) and picks
``--n-select`` frames greedily by ``d``. Uses ``mlipdoe.optimizers.lazy_greedy`` when it
exists (Minoux 1978), otherwise plain greedy (and says so).

    python benchmarks/forces.py --n-frames 500      # reduced size
    python benchmarks/forces.py                     # 5,000 frames, 100 picks
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from mlipdoe import optimizers
from mlipdoe.criteria import make_criterion
from mlipdoe.descriptors import SOAP
from mlipdoe.generate import generate_strained
from mlipdoe.model import build_model

#: hcp supercells and their atom counts (2 atoms per cell)
SUPERCELLS = [(2, 2, 4), (3, 3, 2), (3, 3, 3), (4, 4, 2), (3, 3, 4), (4, 4, 3), (3, 3, 6)]  # 32..108 atoms


def make_pool(n_frames: int, seed: int = 0, rattle: float = 0.05):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(len(SUPERCELLS), size=n_frames)
    frames = [None] * n_frames
    for k, cell in enumerate(SUPERCELLS):
        where = np.flatnonzero(sizes == k)
        if len(where) == 0:
            continue
        group = generate_strained("Zr", n_frames=len(where), supercell=cell, rattle=rattle, max_strain=0.03,
                                  seed=seed * 100 + k)
        for i, atoms in zip(where, group):
            frames[i] = atoms
    return frames


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kB


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-frames", type=int, default=5000)
    p.add_argument("--n-select", type=int, default=100)
    p.add_argument("--n-sparse", type=int, default=100)
    p.add_argument("--n-max", type=int, default=8)
    p.add_argument("--l-max", type=int, default=6)
    p.add_argument("--gradient-chunk-atoms", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    frames = make_pool(args.n_frames, args.seed)
    n_atoms = np.array([len(a) for a in frames])
    t_pool = time.perf_counter() - t0
    print(f"pool: {len(frames)} frames, {n_atoms.sum()} atoms ({n_atoms.min()}-{n_atoms.max()} per frame), "
          f"generated in {t_pool:.1f} s")

    t1 = time.perf_counter()
    model = build_model(frames, soap=SOAP(n_max=args.n_max, l_max=args.l_max), n_sparse=args.n_sparse,
                        observations=("energy", "forces"), seed=args.seed,
                        gradient_chunk_atoms=args.gradient_chunk_atoms)
    t_model = time.perf_counter() - t1
    ranks = model.factor_ranks
    stored = sum(f.nbytes for f in model.factors)
    full = int(np.sum(1 + 3 * n_atoms)) * model.M * 8
    print(f"model: M = {model.M}, built in {t_model:.1f} s "
          + ", ".join(f"{k} {v:.1f} s" for k, v in model.timings.items()))
    print(f"factors: rank mean {ranks.mean():.1f} (min {ranks.min()}, max {ranks.max()}), "
          f"stored {stored / 1e6:.0f} MB vs {full / 1e6:.0f} MB of full rows ({full / stored:.1f}x)")
    print(f"peak RSS after model: {peak_rss_gb():.2f} GB")

    crit = make_criterion("d").initialize(model)
    available = np.ones(len(frames), dtype=bool)
    # one full pass of gains: the criterion's per-frame loop vs the batched helper
    sample = np.arange(min(len(frames), 1000))
    t = time.perf_counter()
    g_loop = crit.gains(sample)
    t_loop = time.perf_counter() - t
    t = time.perf_counter()
    g_batch = crit.state.block_gains([model.factor(int(c)) for c in sample])
    t_batch = time.perf_counter() - t
    print(f"gains of {len(sample)} frames: criterion loop {t_loop:.2f} s, InformationState.block_gains "
          f"{t_batch:.2f} s (max rel. diff {np.max(np.abs(g_batch - g_loop) / np.abs(g_loop)):.1e})")
    lazy = getattr(optimizers, "lazy_greedy", None)
    t2 = time.perf_counter()
    if lazy is not None:
        run = lazy(crit, args.n_select, available=available)
        kind = "lazy_greedy"
    else:
        run = optimizers.greedy(crit, args.n_select, available=available)
        kind = "greedy (plain: mlipdoe.optimizers.lazy_greedy not available)"
    t_sel = time.perf_counter() - t2
    plain = sum(len(frames) - k for k in range(len(run.selected)))
    skipped = 1.0 - run.n_evaluations / plain
    d_check = model.d_value(run.selected)
    print(f"selection: {kind}, {len(run.selected)} picks in {t_sel:.1f} s, {run.n_evaluations} gain evaluations "
          f"of {plain} for plain greedy (skipped {100 * skipped:.1f} %)")
    print(f"d value {run.values[-1]:.4f} (from-scratch slogdet {d_check:.4f}); "
          f"mean atoms of picks {n_atoms[run.selected].mean():.1f} vs pool {n_atoms.mean():.1f}")
    print(f"total wall time {time.perf_counter() - t0:.1f} s, peak RSS {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
