"""Force store benchmark: ``select --store --observe energy,forces --criterion i`` on generated Zr cells.

    python benchmarks/store_forces.py [--n-frames 2000] [--n-sparse 300] [--picks 200]
                                      [--information 0.999] [--check-frames 100]
                                      [--memory-limit 4GB] [--blas-threads 1]
                                      [--scheduler serial|local|processes|tcp://…]

Generates ``--n-frames`` strained + rattled hcp Zr cells, a third each of 16, 32 and 64
atoms (supercells 2,2,2 / 2,2,4 / 4,4,2, shuffled), builds the force store
(:func:`mlipdoe.store.build_model_stored` with ``observations=("energy", "forces")``),
rebuilds it warm, and picks ``--picks`` frames with the I criterion (greedy, pool
target, energy observable) on the loaded force factors. Prints in one run:

- the cold build vs the bare featomic gradient computation (``compute(...,
  gradients=["positions"])``) on the same atom chunks the store's force pass uses;
- the warm rerun (the store is only loaded);
- the I picks, and the bare products of one I-gains sweep (every frame's U = C Wᵀ, B U,
  Uᵀ(BU), W U and k × k solve) times the picks: end to end (cold build + picks) over the bare
  featomic gradients + that bare selection work;
- peak RSS; bytes per frame of the loaded factors;
- compression: mean k_s vs 3 n_s and the rank of Ψ_F,s, the worst frame's kept share
  of its force information at σ_F (from the stored singular values, every frame), and on
  ``--check-frames`` frames the kept share of the *full* block log det(I + W_sᵀW_s)
  (energy + force rows) against the untruncated in-memory block.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from mlipdoe.criteria import IOptimal
from mlipdoe.descriptors import SOAP, make_descriptor
from mlipdoe.generate import generate_strained
from mlipdoe.hypers import Noise
from mlipdoe.model.gap_featomic import _atom_chunks
from mlipdoe.optimizers import greedy
from mlipdoe.store import build_model_stored, open_store, peak_rss

GB = 1e9
SUPERCELLS = ((2, 2, 2), (2, 2, 4), (4, 4, 2))


def zr_pool(n_frames: int, seed: int = 0) -> list:
    """``n_frames`` strained (≤ 3 %) + rattled (0.05 Å) hcp Zr cells of 16, 32 and 64 atoms, shuffled."""
    parts = []
    for k, reps in enumerate(SUPERCELLS):
        n = n_frames // 3 + (1 if k < n_frames % 3 else 0)
        parts += generate_strained("Zr", n_frames=n, max_strain=0.03, supercell=reps, rattle=0.05, seed=seed + k)
    order = np.random.default_rng(seed).permutation(len(parts))
    return [parts[i] for i in order]


def bare_gradients(frames, soap: SOAP, store) -> float:
    """Seconds of featomic's ``compute(..., gradients=["positions"])`` on the store's atom chunks."""
    calculator = make_descriptor(soap)._calculator
    rs = open_store(store)
    t = time.perf_counter()
    for i in range(rs.n_chunks):
        a, b = rs.chunk_range(i)
        chunk = frames[a:b]
        for lo, hi in _atom_chunks(chunk, rs.gradient_atoms):
            calculator.compute(chunk[lo:hi], gradients=["positions"])
    return time.perf_counter() - t


def bare_i_sweep(model, B: np.ndarray) -> float:
    """Seconds of the bare products one I-gains sweep over every frame's block needs
    (U = C Wᵀ, B U, Uᵀ(BU), W U and a k × k solve per frame, C = I after no pick)."""
    C = np.eye(model.M)
    t = time.perf_counter()
    for s in range(model.n_frames):
        W = model.factor(s)
        U = C @ W.T
        np.trace(np.linalg.solve(np.eye(len(W)) + W @ U, U.T @ (B @ U)))
    return time.perf_counter() - t


def full_block_share(model, frames, indices) -> np.ndarray:
    """log det(I + W_sᵀW_s) of the stored (truncated) factor over that of the untruncated block."""
    share = []
    sub = [frames[i] for i in indices]
    cts = [model.config_types[i] for i in indices] if model.config_types is not None else None
    for local, rows in model.iter_observation_rows(sub, observations=("energy", "forces"), config_types=cts):
        full, kept = rows.compressed(), model.factor(int(indices[local]))
        ld = [np.linalg.slogdet(np.eye(len(W)) + W @ W.T)[1] for W in (full, kept)]
        share.append(ld[1] / ld[0])
    return np.array(share)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-frames", type=int, default=2000)
    p.add_argument("--n-sparse", type=int, default=300)
    p.add_argument("--picks", type=int, default=200)
    p.add_argument("--information", type=float, default=0.999, help="force information kept per frame")
    p.add_argument("--sigma-force", type=float, default=0.1)
    p.add_argument("--check-frames", type=int, default=100, help="frames checked against the full block")
    p.add_argument("--memory-limit", default=None)
    p.add_argument("--blas-threads", type=int, default=1)
    p.add_argument("--scheduler", default=None, help="serial (default), local, processes or tcp://host:port")
    p.add_argument("--root", default=None, help="store folder parent (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    limit = nullcontext()
    if args.blas_threads:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(limits=args.blas_threads, user_api="blas")
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="mlipdoe-store-forces-"))
    store = root / "forces.store"
    if store.exists():
        shutil.rmtree(store)
    frames = zr_pool(args.n_frames, seed=args.seed)
    n_atoms = np.array([len(a) for a in frames])
    soap = SOAP()
    noise = Noise(force=args.sigma_force)
    opts = dict(store=store, soap=soap, noise=noise, observations=("energy", "forces"), n_sparse=args.n_sparse,
                force_information=args.information, memory_limit=args.memory_limit, seed=args.seed)
    cold_opts = dict(opts, scheduler=args.scheduler)
    print(f"{len(frames)} Zr frames ({n_atoms.min()}–{n_atoms.max()} atoms, {n_atoms.sum()} in all), "
          f"M = {args.n_sparse}, σ_F = {args.sigma_force} eV/Å, force information kept ≥ {args.information}")
    with limit:
        t = time.perf_counter()
        cold = build_model_stored(frames, **cold_opts)
        t_cold = time.perf_counter() - t
        peak_build = peak_rss()
        t_bare = bare_gradients(frames, cold.soap, store)
        t = time.perf_counter()
        warm = build_model_stored(frames, **opts)
        t_warm = time.perf_counter() - t
        assert warm.store_info["chunks_computed"] == 0
        t = time.perf_counter()
        crit = IOptimal().initialize(warm)
        run = greedy(crit, args.picks, available=np.ones(len(frames), dtype=bool))
        t_pick = time.perf_counter() - t
        t_sweep = bare_i_sweep(warm, crit.B) if args.picks else 0.0
        rng = np.random.default_rng(1)
        check = np.sort(rng.choice(len(frames), min(args.check_frames, len(frames)), replace=False))
        share = full_block_share(warm, frames, check)

    info, tm = cold.store_info, cold.timings
    print(f"\ncold build          {t_cold:8.1f} s   (rows stage {tm['row_stage']:.1f} s: descriptors "
          f"{tm['descriptors']:.1f}, energy rows {tm['rows']:.1f}, force rows {tm['force_rows']:.1f}; "
          f"sparse points {tm.get('sparse_points', 0):.1f}, load {tm['store_load']:.1f})")
    print(f"bare featomic grads {t_bare:8.1f} s   (same {info['gradient_atoms']}-atom chunks)   "
          f"build / bare = {t_cold / t_bare:.2f}")
    print(f"warm rerun          {t_warm:8.1f} s   (load only: {warm.timings['store_load']:.1f} s)")
    print(f"{args.picks} i picks        {t_pick:8.1f} s   (greedy, {run.n_evaluations} gain evaluations)")
    if args.picks:
        bare_total = t_bare + t_sweep * args.picks
        print(f"bare i sweep        {t_sweep:8.2f} s   per pick (the products of every frame's gain) × {args.picks} = "
              f"{t_sweep * args.picks:.1f} s")
        print(f"end to end          {t_cold + t_pick:8.1f} s   vs bare featomic grads + bare selection {bare_total:.1f} s: "
              f"ratio {(t_cold + t_pick) / bare_total:.2f}; warm rerun + picks {t_warm + t_pick:.1f} s")
    print(f"peak RSS            {peak_build / GB:8.2f} GB after the build, {peak_rss() / GB:.2f} GB at the end")
    per_frame = info["factor_bytes"] / len(frames)
    print(f"factors in memory   {info['factor_bytes'] / 1e6:8.1f} MB = {per_frame / 1e3:.1f} kB per frame "
          f"(→ {per_frame * 1e5 / GB:.1f} GB at 10^5 frames)")
    ranks = np.array([len(f) - 1 for f in warm.factors])
    print(f"compression         mean k_s {ranks.mean():.1f} of 3 n_s = {3 * n_atoms.mean():.1f} rows "
          f"(rank of Ψ_F,s {info['force_full_rank_mean']:.1f}); mean k_s / 3 n_s = {(ranks / (3 * n_atoms)).mean():.3f}")
    for n in np.unique(n_atoms):
        sel = n_atoms == n
        print(f"    {n:3d} atoms: mean k_s {ranks[sel].mean():6.1f} of {3 * n} rows")
    print(f"kept information    worst frame {info['force_retained_min']:.5f} of its force information "
          f"(frame {info['force_retained_worst_frame']}, all {len(frames)} frames); full block "
          f"log det(I + W_sᵀW_s) on {len(check)} frames: worst {share.min():.5f}, mean {share.mean():.5f}")
    if not args.root:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
