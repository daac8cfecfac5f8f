"""Core benchmark: our descriptor and selection stages vs the bare work they must do.

    python benchmarks/core.py [--n-frames 10000] [--n-sparse 200] [--picks 200]

Prints, measured in one run on the same frames:
- descriptor stage (mlipdoe DescriptorSource pass: featomic + per-species layout +
  normalisation) vs a bare featomic ``compute`` on the same chunks of 100 frames;
- selection stage (D-optimal greedy, energy rows) vs its bare BLAS work: per pick one
  N × M matrix–vector product, one M × M matrix–vector product and one rank-one update.
Targets: descriptor ≤ 1.2×, selection ≤ 2×.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mlipdoe.criteria import DOptimal
from mlipdoe.descriptors import SOAP, make_descriptor
from mlipdoe.generate import zr_example
from mlipdoe.model import DescriptorSource, build_model
from mlipdoe.optimizers import greedy


def bare_d_picks(psi: np.ndarray, picks) -> float:
    """Seconds of the BLAS work of D-optimal greedy picks: per pick u = C w (M×M), the
    q-update mat-vec ψ u (N×M) and a rank-one update of C."""
    psi, C = psi.copy(), np.eye(psi.shape[1])
    q = np.empty(len(psi))
    t = time.perf_counter()
    for k in picks:
        w = psi[k]
        u = C @ w
        y = psi @ u
        q -= y * y
        C -= np.outer(u, u) / (1.0 + w @ u)
    return time.perf_counter() - t


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-frames", type=int, default=10000)
    parser.add_argument("--n-sparse", type=int, default=200)
    parser.add_argument("--picks", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    frames = zr_example(args.n_frames, seed=0)
    n_atoms = sum(len(a) for a in frames)
    soap = SOAP(species=(40,))
    descriptor = make_descriptor(soap)
    calculator = descriptor._calculator
    chunks = [frames[i : i + 100] for i in range(0, len(frames), 100)]

    bare, ours = [], []
    for _ in range(args.repeats):  # interleave to share machine noise
        t = time.perf_counter()
        for chunk in chunks:
            calculator.compute(chunk)
        bare.append(time.perf_counter() - t)
        source = DescriptorSource(descriptor, frames, cache_limit_bytes=0)
        t = time.perf_counter()
        for _first, _desc in source():
            pass
        ours.append(time.perf_counter() - t)
    bare_t, ours_t = min(bare), min(ours)
    print(f"pool: {args.n_frames} frames, {n_atoms} atoms (hcp Zr, 16 atoms/frame)")
    print(f"descriptors  bare featomic {bare_t:8.3f} s ({bare_t / n_atoms * 1e6:6.1f} us/atom)   "
          f"mlipdoe {ours_t:8.3f} s ({ours_t / n_atoms * 1e6:6.1f} us/atom)   ratio {ours_t / bare_t:5.2f}  (target <= 1.2)")

    model = build_model(frames, soap=soap, n_sparse=args.n_sparse)
    N, M = model.psi.shape
    print(f"model: N = {N}, M = {M}; build timings {({k: round(v, 2) for k, v in model.timings.items()})}")

    sel, blas = [], []
    for _ in range(args.repeats):
        crit = DOptimal().initialize(model)
        t = time.perf_counter()
        run = greedy(crit, args.picks, available=np.ones(N, dtype=bool))
        sel.append(time.perf_counter() - t)
        blas.append(bare_d_picks(model.psi, run.selected))
    sel_t, blas_t = min(sel), min(blas)
    print(f"selection    bare BLAS {blas_t:8.3f} s ({blas_t / args.picks * 1e3:6.2f} ms/pick)   "
          f"mlipdoe {sel_t:8.3f} s ({sel_t / args.picks * 1e3:6.2f} ms/pick)   ratio {sel_t / blas_t:5.2f}  (target <= 2)")
    print(f"initial q (one-off, O(N M^2)) is included in neither; greedy gain evaluations: {run.n_evaluations}")


if __name__ == "__main__":
    main()
