"""The default in-memory ``select`` against the bare work it must do, measured in one run.

    python benchmarks/select_default.py [--n-frames 20000] [--n-sparse 500] [--picks 200] [--blas-threads 1]

Pool: hcp Zr frames of 16 atoms (``mlipdoe.generate.zr_example``). Prints, for the same
frames and the same sparse points:

- bare featomic: one ``compute`` per chunk of 100 frames (the pool's SOAP, once);
- bare kernel rows: per chunk and species X Zᵀ, the ζ power, per-frame sums, the
  triangular solve with L;
- bare picks: per pick of the D-optimal greedy, one N × M and one M × M mat-vec and a
  rank-one update of C (the BLAS work of ``d``);
- ``mlipdoe.select(pool, n=..., criterion="d")`` with the defaults (in-memory model:
  sparse points by CUR, rows, lazy greedy), and its ratio to the sum of the three.
Target: ratio ≤ 1.3. The pool's file reading and validation are not in either side.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg
import threadpoolctl
from core import bare_d_picks

import mlipdoe
from mlipdoe.descriptors import SOAP, make_descriptor
from mlipdoe.generate import zr_example
from mlipdoe.pool import pool_from_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-frames", type=int, default=20000)
    parser.add_argument("--n-sparse", type=int, default=500)
    parser.add_argument("--picks", type=int, default=200)
    parser.add_argument("--blas-threads", type=int, default=None)
    args = parser.parse_args()
    if args.blas_threads:
        threadpoolctl.threadpool_limits(args.blas_threads)

    frames = zr_example(args.n_frames, seed=0)
    pool = pool_from_frames(frames)
    n_atoms = sum(len(a) for a in frames)
    soap = SOAP(species=(40,))

    t = time.perf_counter()
    result = mlipdoe.select(pool, n=args.picks, criterion="d", soap=soap, n_sparse=args.n_sparse)
    ours = time.perf_counter() - t
    model = result.model
    print(f"pool: {args.n_frames} frames, {n_atoms} atoms; M = {model.M}; {args.picks} D-optimal picks")
    print(f"mlipdoe.select (defaults)      {ours:8.2f} s   model timings "
          f"{ {k: round(v, 2) for k, v in model.timings.items()} }")

    # bare featomic, on the same chunks of 100 frames
    calculator = make_descriptor(model.soap)
    chunks = [frames[i : i + 100] for i in range(0, len(frames), 100)]
    t = time.perf_counter()
    descs = [calculator.compute(c) for c in chunks]
    bare_featomic = time.perf_counter() - t
    # bare kernel rows on those descriptors and the same sparse points
    Z = model.sparse.vectors[40]
    assert model.kernel.zeta == 4 and model.kernel.delta == 1.0
    t = time.perf_counter()
    for desc in descs:
        block = desc.blocks[40]
        K = block.values @ Z.T
        np.multiply(K, K, out=K)          # ζ = 4 by two in-place squarings (the cheapest power)
        np.multiply(K, K, out=K)
        phi = K.reshape(desc.n_frames, -1, K.shape[1]).sum(axis=1)
        scipy.linalg.solve_triangular(model.L, phi.T, lower=True, check_finite=False)
    bare_rows = time.perf_counter() - t
    del descs
    bare_picks = bare_d_picks(model.psi, result.selected)
    bare = bare_featomic + bare_rows + bare_picks
    print(f"bare featomic                  {bare_featomic:8.2f} s ({bare_featomic / n_atoms * 1e6:.1f} us/atom)")
    print(f"bare kernel rows               {bare_rows:8.2f} s")
    print(f"bare picks (BLAS of d)         {bare_picks:8.2f} s")
    print(f"ratio select / bare            {ours / bare:8.2f}   (target <= 1.3); "
          f"descriptor passes: {model.timings.get('descriptor_passes')}")


if __name__ == "__main__":
    main()
