"""Toolbox benchmark: every criterion, lazy greedy, exchange and FPS vs skmatter.

    python benchmarks/toolbox.py [--n-frames 5000] [--n-sparse 50] [--picks 50] [--supercell 2,2,1]

On one zr_example pool (small cells) prints, measured in one run:
- time per greedy pick of every criterion (whole pool as candidates; i and g with the
  pool as target, g with fewer picks because its pick is O(T N M));
- lazy vs plain greedy for d: gain evaluations, fraction saved, identical design;
- time of one Fedorov exchange pass (|S| removals × one gains sweep) for d, i, maximin;
- FPS on mean-pooled SOAP: our greedy on the ``fps`` criterion vs
  ``skmatter.sample_selection.FPS`` on the same vectors and pick count (ratio, same picks?).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mlipdoe.criteria import make_criterion, mean_pooled_descriptors
from mlipdoe.descriptors import SOAP
from mlipdoe.generate import zr_example
from mlipdoe.model import build_model
from mlipdoe.optimizers import exchange, greedy, lazy_greedy


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-frames", type=int, default=5000)
    parser.add_argument("--n-sparse", type=int, default=50)
    parser.add_argument("--picks", type=int, default=50)
    parser.add_argument("--g-picks", type=int, default=5)
    parser.add_argument("--supercell", default="2,2,1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    reps = tuple(int(x) for x in args.supercell.split(","))
    soap = SOAP(cutoff=4.5, cutoff_transition_width=0.5, n_max=6, l_max=4, atom_sigma=0.5)

    frames, t_gen = timed(lambda: zr_example(args.n_frames, seed=args.seed, supercell=reps))
    n_atoms = sum(len(a) for a in frames)
    model, t_model = timed(lambda: build_model(frames, soap=soap, n_sparse=args.n_sparse, seed=args.seed))
    X, t_desc = timed(lambda: mean_pooled_descriptors(frames, model.soap))
    N, M = model.n_frames, model.M
    print(f"pool: {N} frames, {n_atoms} atoms ({len(frames[0])}/frame), M = {M}, mean-pooled D = {X.shape[1]}")
    print(f"setup: generate {t_gen:.1f} s, model {t_model:.1f} s, mean-pooled descriptors {t_desc:.1f} s")
    available = np.ones(N, bool)

    print(f"\ngreedy, time per pick (candidates = whole pool, {args.picks} picks; g: {args.g_picks}):")
    print(f"  {'criterion':10s} {'init s':>8s} {'ms/pick':>9s} {'final value':>14s}")
    for name in ["d", "a", "i", "g", "e", "maximin", "random", "fps", "cur"]:
        picks = args.g_picks if name == "g" else args.picks
        crit, t_init = timed(lambda: make_criterion(name, lenient=True, vectors=X).initialize(model))
        run, t = timed(lambda: greedy(crit, picks, available=available))
        print(f"  {name:10s} {t_init:8.3f} {1e3 * t / picks:9.2f} {crit.value():14.6g}")

    plain, t_plain = timed(lambda: greedy(make_criterion("d").initialize(model), args.picks, available=available))
    lazy, t_lazy = timed(lambda: lazy_greedy(make_criterion("d").initialize(model), args.picks, available=available))
    print(f"\nlazy greedy (d, {args.picks} picks): {lazy.n_evaluations} gain evaluations vs {plain.n_evaluations} "
          f"plain → {100 * lazy.extra['saved_fraction']:.1f}% saved; identical design: "
          f"{lazy.selected == plain.selected}; time {t_lazy:.3f} s vs {t_plain:.3f} s")

    print(f"\nexchange: one pass (|S| = {args.picks} removals × gains over {N - args.picks} candidates):")
    for name in ["d", "i", "maximin"]:
        crit = make_criterion(name, lenient=True, vectors=X).initialize(model)
        run = greedy(crit, args.picks, available=available)
        ex, t = timed(lambda: exchange(crit, run.selected, available=available, max_iter=1))
        print(f"  {name:10s} pass {t:7.3f} s  ({ex.n_evaluations} swap evaluations, {ex.n_swaps} swap made, "
              f"value {run.values[-1]:.6g} → {ex.value:.6g})")

    from skmatter.sample_selection import FPS

    crit = make_criterion("fps", vectors=X).initialize(model)
    ours, t_ours = timed(lambda: greedy(crit, args.picks, available=available))
    sk, t_sk = timed(lambda: FPS(n_to_select=args.picks, initialize=0).fit(X))
    same = ours.selected == [int(i) for i in sk.selected_idx_]
    print(f"\nFPS on mean-pooled SOAP ({N} × {X.shape[1]}, {args.picks} picks): mlipdoe {t_ours:.3f} s, "
          f"skmatter {t_sk:.3f} s, ratio {t_ours / t_sk:.2f}; same picks: {same}")


if __name__ == "__main__":
    main()
