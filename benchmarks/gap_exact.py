"""GAP-exact models: the quippy row stage against the bare quippy calls, and featomic vs quippy designs.

Usage::

    OPENBLAS_NUM_THREADS=1 python benchmarks/gap_exact.py [--frames 120] [--workers 2]

1. Row stage: ``build_gap_model`` (energy + force rows of every frame, a soap + distance_2b model)
   against the bare quippy calls it must make — ``Descriptor.calc(atoms)`` of every frame (the
   sparse points are chosen from all instances) and ``calc(atoms, grad=True)`` — both spread
   over the same number of worker processes (spawned, the same chunks), in one run. Prints the
   ratio (target ≤ 1.2).
2. Design agreement on the same frames: a D-optimal design of 20 % of the pool on featomic SOAP
   (same cutoff, n_max, l_max, atom_sigma, ζ, δ, σ_E) and on the GAP-exact model of a gap_fit
   soap descriptor; how many picks coincide, and the D-efficiency of the featomic design measured
   on the quippy model, exp((log det F̃_q(S_featomic) − log det F̃_q(S_quippy)) / M).

Frames: Zuo et al. Mo training frames (../shared/data) when present, else generated Zr.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "zuo2020" / "Mo_train.xyz"
SOAP_KEYS = "cutoff=5.0 cutoff_transition_width=0.5 n_max=8 l_max=6 atom_sigma=0.5"


def frames_for(n: int):
    import ase.io

    if SHARED.exists():
        frames = ase.io.read(SHARED, index=":")
        for a in frames:
            a.calc = None
        return frames[:n], "Zuo Mo"
    from mlipdoe.generate import zr_example

    return zr_example(n, seed=1), "generated Zr"


def _bare_task(args):
    strings, frames = args
    from quippy.descriptors import Descriptor

    descs = [Descriptor(s) for s in strings]
    t0 = time.perf_counter()
    for atoms in frames:
        for d in descs:
            d.calc(atoms)
    t1 = time.perf_counter()
    for atoms in frames:
        for d in descs:
            d.calc(atoms, grad=True)
    return t1 - t0, time.perf_counter() - t1


def bare_calls(strings, frames, workers: int, chunk: int) -> tuple[float, float, float]:
    """The calls the stage must make, over ``workers`` processes (spawn, same chunks).

    Two passes, as the stage: descriptor values of every frame (the sparse points are chosen
    from all of them), then values with gradients. Returns (wall time, summed values seconds,
    summed gradient seconds) — the sums are over processes.
    """
    import multiprocessing

    tasks = [(strings, frames[s : s + chunk]) for s in range(0, len(frames), chunk)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_bare_task, tasks))
    return time.perf_counter() - t0, sum(p[0] for p in parts), sum(p[1] for p in parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--n-sparse", type=int, default=100)
    args = ap.parse_args(argv)

    import mlipdoe.model.gap_quippy as gq
    from mlipdoe.api import design
    from mlipdoe.budget import Budget
    from mlipdoe.descriptors import SOAP
    from mlipdoe.gap_spec import parse_gap_fit_args
    from mlipdoe.hypers import DesignConfig, ModelConfig, Noise
    from mlipdoe.model.kernels import Kernel

    frames, source = frames_for(args.frames)
    workers = args.workers or gq.default_workers()
    n_atoms = sum(len(a) for a in frames)
    print(f"{len(frames)} {source} frames, {n_atoms} atoms; {workers} worker processes")

    # 1. row stage vs bare calls
    spec = parse_gap_fit_args(
        f"gap={{distance_2b cutoff=5.0 cutoff_transition_width=1.0 delta=1.0 covariance_type=ard_se "
        f"theta_uniform=1.0 n_sparse=20 sparse_method=uniform : soap {SOAP_KEYS} delta=1.0 zeta=4 "
        f"covariance_type=dot_product n_sparse={args.n_sparse} sparse_method=cur_points}} "
        f"default_sigma={{0.001 0.1 0.05 0}}")
    species = sorted({int(z) for a in frames for z in a.numbers})
    strings = [d.descriptor_string() for d in spec.expanded(species)]
    bare, bare_values, bare_grad = bare_calls(strings, frames, workers, gq.CHUNK_FRAMES)
    t0 = time.perf_counter()
    model = gq.build_gap_model(frames, spec, observations=("energy", "forces"), workers=workers)
    ours = time.perf_counter() - t0
    t = model.timings
    print(f"row stage (energy + force rows, M = {model.M}): {ours:.1f} s = descriptors (values, for the "
          f"sparse points) {t['descriptors']:.1f} s + sparse points {t['sparse_points']:.2f} s + rows "
          f"{t['rows']:.1f} s")
    print(f"bare quippy calls on the same frames and workers (values, then values + gradients): {bare:.1f} s "
          f"wall; per atom in one process {1000 * bare_values / n_atoms:.2f} + {1000 * bare_grad / n_atoms:.2f} ms")
    print(f"ratio row stage / bare calls: {ours / bare:.2f} (rows pass alone: {t['rows'] / bare:.2f})")

    # 2. featomic vs quippy designs (soap only, energy rows, same hypers)
    n_pick = max(1, len(frames) // 5)
    qspec = parse_gap_fit_args(f"gap={{soap {SOAP_KEYS} delta=1.0 zeta=4 covariance_type=dot_product "
                               f"n_sparse={args.n_sparse} sparse_method=cur_points}} default_sigma={{0.001 0.1 0.05 0}}")
    budget = Budget("count", n_pick)
    q = design(frames, DesignConfig(model=ModelConfig(gap=qspec), criterion="d", budget=budget).validate())
    fcfg = ModelConfig(soap=SOAP(cutoff=5.0, cutoff_transition_width=0.5, n_max=8, l_max=6, atom_sigma=0.5),
                       kernel=Kernel(zeta=4, delta=1.0), noise=Noise(energy=0.001), n_sparse=args.n_sparse)
    f = design(frames, DesignConfig(model=fcfg, criterion="d", budget=budget).validate())
    common = len(set(q.selected) & set(f.selected))
    d_q = q.model.d_value(q.selected)
    d_f_on_q = q.model.d_value(f.selected)
    eff = float(np.exp((d_f_on_q - d_q) / q.model.M))
    print(f"D-optimal {n_pick} of {len(frames)} frames: {common} picks in common "
          f"({100 * common / n_pick:.0f} %); on the quippy model log det F̃: quippy design {d_q:.3f}, featomic "
          f"design {d_f_on_q:.3f}; D-efficiency of the featomic design {eff:.4f} (M = {q.model.M})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
