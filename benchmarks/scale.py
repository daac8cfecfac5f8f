"""Scale benchmark: a 100,000-frame pool on one machine through the row store.

    python benchmarks/scale.py [--n-frames 100000] [--n-sparse 1000] [--picks 1000]
                               [--memory-limit 2GB] [--scheduler serial|local|tcp://...]
                               [--compare-exact 2000] [--blas-threads 1]

Generates N strained + rattled hcp Zr frames of 32 atoms (supercell 2,2,4), builds the
store (M sparse points by CUR on a 50,000-environment sample), selects ``--picks``
frames D-optimally on energy rows (lazy greedy + DOptimal, as ``mlipdoe select`` does),
then rebuilds from the warm store and selects again. ``--plain`` also runs plain greedy
(every q_s updated after every pick: one N × M mat-vec per pick) and checks that it
picks the same frames. Prints wall time and peak RSS per stage and, measured in the
same run on a sample of the same frames, the bare work each stage cannot avoid:

- bare featomic ``compute`` on chunks of 100 frames (µs/atom);
- bare ``X @ Z.T`` followed by the power ζ (µs/atom);
- one bare N × M matrix–vector product per pick.

Ratios: end-to-end (cold build + selection) vs the sum of the bare stages (target
≤ 1.3), peak RSS (target ≤ 2 GB), selection vs skmatter FPS picking the same number of
frames from the pool's mean-pooled descriptors (target: faster). ``--compare-exact n``
also measures, on the first n frames, exact streaming CUR vs the sampled choice: cost
of the sparse stage and the D value (log det F̃ in the *exact* model) of the frames each
selects.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from mlipdoe.criteria import DOptimal
from mlipdoe.descriptors import SOAP, make_descriptor
from mlipdoe.generate import ZR_HCP_A, ZR_HCP_C, generate_strained
from mlipdoe.model.kernels import Kernel
from mlipdoe.optimizers import greedy, lazy_greedy
from mlipdoe.store import build_model_stored, current_rss, open_store, peak_rss

GB = 1e9


class Stages:
    """Wall time, CPU time (all threads of this process), current and peak RSS per stage."""

    def __init__(self):
        self.rows = []
        self.cpu0 = time.process_time()

    def add(self, name, seconds, note=""):
        cpu = time.process_time() - self.cpu0
        self.rows.append((name, seconds, cpu, current_rss() / GB, peak_rss() / GB, note))
        print(f"  {name:<28} {seconds:9.2f} s  cpu {cpu:8.2f} s   rss {current_rss() / GB:5.2f} GB   "
              f"peak {peak_rss() / GB:5.2f} GB  {note}", flush=True)
        self.cpu0 = time.process_time()

    def mark(self):
        """Start timing the next stage's CPU here."""
        self.cpu0 = time.process_time()


def select_d(model, picks, lazy=True):
    t = time.perf_counter()
    crit = DOptimal().initialize(model)
    run = (lazy_greedy if lazy else greedy)(crit, picks, available=np.ones(model.n_frames, dtype=bool))
    return run, time.perf_counter() - t


def bare_stages(frames, model, soap, kernel, n_sample, repeats=2):
    """Bare per-unit costs on ``n_sample`` frames, as {name: (wall, cpu)}.

    ``featomic`` and ``kernel`` are seconds per atom, ``matvec`` seconds per N × M
    product; the minimum over ``repeats`` (median of ≥ 5 for the mat-vec).
    """
    calculator = make_descriptor(soap)._calculator
    sample = frames[:n_sample]
    atoms = sum(len(a) for a in sample)
    chunks = [sample[i : i + 100] for i in range(0, len(sample), 100)]

    def timed(fn, n):
        walls, cpus = [], []
        for _ in range(n):
            w, c = time.perf_counter(), time.process_time()
            fn()
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
        return walls, cpus

    w, c = timed(lambda: [calculator.compute(chunk) for chunk in chunks], repeats)
    out = {"featomic": (min(w) / atoms, min(c) / atoms)}
    X = make_descriptor(soap).compute(sample[:100]).blocks[40].values
    Z = model.sparse.vectors[40]

    def kernel_rows():
        for _c in chunks:
            kernel.power(X @ Z.T)

    w, c = timed(kernel_rows, repeats)
    out["kernel"] = (min(w) / (len(X) * len(chunks)), min(c) / (len(X) * len(chunks)))
    v = np.random.default_rng(0).standard_normal(model.M)
    w, c = timed(lambda: model.psi @ v, max(5, repeats))
    out["matvec"] = (float(np.median(w)), float(np.median(c)))
    return out


def compare_exact(frames, args, kernel, soap, root):
    """Exact streaming CUR vs sampled CUR on a pool where exact is affordable."""
    n_atoms = sum(len(a) for a in frames)
    sample = max(args.n_sparse * 4, n_atoms // 10)
    print(f"\nsparse points: exact CUR vs a {sample}-environment sample ({len(frames)} frames, {n_atoms} atoms, "
          f"M = {args.n_sparse}, {args.exact_picks} picks)")
    models, picks = {}, {}
    for name, ss in (("exact", None), ("sampled", sample)):
        m = build_model_stored(frames, store=root / f"cmp-{name}", soap=soap, kernel=kernel, n_sparse=args.n_sparse,
                               sparse_sample=ss, memory_limit=args.memory_limit)
        run, _ = select_d(m, args.exact_picks)
        models[name], picks[name] = m, run.selected
        print(f"  {name:<8} sparse stage {m.timings['sparse_points']:7.2f} s   own d value {run.values[-1]:10.3f}")
    ref = models["exact"]
    d_exact = ref.d_value(picks["exact"])
    d_sampled = ref.d_value(picks["sampled"])
    rng = np.random.default_rng(1)
    d_random = ref.d_value(rng.choice(len(frames), args.exact_picks, replace=False))
    print(f"  d value in the exact model: exact picks {d_exact:.3f}, sampled picks {d_sampled:.3f} "
          f"(loss {d_exact - d_sampled:.3f} nats = {100 * (d_exact - d_sampled) / max(d_exact - d_random, 1e-12):.2f}% "
          f"of the exact-vs-random gap), random picks {d_random:.3f}")
    print(f"  overlap of the two selections: {len(set(picks['exact']) & set(picks['sampled']))}/{args.exact_picks}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-frames", type=int, default=100_000)
    parser.add_argument("--n-sparse", type=int, default=1000)
    parser.add_argument("--picks", type=int, default=1000)
    parser.add_argument("--supercell", default="2,2,4", help="hcp Zr repetition (2,2,4 = 32 atoms)")
    parser.add_argument("--memory-limit", default="2GB")
    parser.add_argument("--scheduler", default="serial")
    parser.add_argument("--sparse-sample", type=int, default=50_000)
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--bare-sample", type=int, default=500, help="frames for the bare-stage timings")
    parser.add_argument("--store", type=Path, default=None, help="store directory (default: a fresh temporary one)")
    parser.add_argument("--compare-exact", type=int, default=0, help="frames for exact-vs-sampled sparse points")
    parser.add_argument("--exact-picks", type=int, default=100)
    parser.add_argument("--skip-fps", action="store_true")
    parser.add_argument("--plain", action="store_true", help="also time plain (eager) greedy and compare picks")
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="limit BLAS threads (threadpoolctl); 1 avoids OpenBLAS spin-waits on a busy machine")
    args = parser.parse_args()
    if args.blas_threads:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=args.blas_threads, user_api="blas"):
            run(args)
    else:
        run(args)


def run(args):

    root = Path(tempfile.mkdtemp(prefix="mlipdoe-scale-"))
    store = args.store or root / "store"
    soap = SOAP(species=(40,))
    kernel = Kernel(zeta=4)
    stages = Stages()
    try:
        print(f"stages (wall, RSS now, peak RSS so far); store {store}; memory limit {args.memory_limit}; "
              f"scheduler {args.scheduler}; dtype {args.dtype}; BLAS threads {args.blas_threads or 'default'}",
              flush=True)
        t = time.perf_counter()
        frames = generate_strained("Zr", structure="hcp", a=ZR_HCP_A, c=ZR_HCP_C, n_frames=args.n_frames,
                                   max_strain=0.03, rattle=0.02, supercell=tuple(int(x) for x in args.supercell.split(",")),
                                   seed=0)
        n_atoms = sum(len(a) for a in frames)
        stages.add("generate pool", time.perf_counter() - t, f"{args.n_frames} frames, {n_atoms} atoms")

        def build():
            return build_model_stored(frames, store=store, soap=soap, kernel=kernel, n_sparse=args.n_sparse,
                                      memory_limit=args.memory_limit, scheduler=args.scheduler,
                                      sparse_sample=args.sparse_sample, dtype=args.dtype)

        stages.mark()
        t = time.perf_counter()
        model = build()
        cold = time.perf_counter() - t
        tm = model.timings
        info = model.store_info
        stages.add("store build (cold)", cold, f"N = {model.n_frames}, M = {model.M}, chunk {info['chunk_size']}")
        print(f"    of which: hash {tm['hash']:.2f} s, sparse points (sample + CUR) {tm['sparse_points']:.2f} s, "
              f"K_MM {tm['kernel_matrix']:.2f} s, row stage {tm['row_stage']:.2f} s "
              f"[featomic {tm['descriptors']:.2f} s + kernel rows {tm['rows']:.2f} s], load {tm['store_load']:.2f} s",
              flush=True)

        stages.mark()
        run, sel = select_d(model, args.picks)
        evals = run.n_evaluations
        stages.add("selection (cold)", sel, f"{args.picks} picks, {sel / args.picks * 1e3:.2f} ms/pick, lazy greedy: "
                   f"{evals} gain evaluations ({100 * run.extra['saved_fraction']:.1f}% fewer than plain)")
        plain_t = None
        if args.plain:
            stages.mark()
            plain, plain_t = select_d(model, args.picks, lazy=False)
            stages.add("selection (plain greedy)", plain_t,
                       f"{plain_t / args.picks * 1e3:.2f} ms/pick; " +
                       ("same picks" if plain.selected == run.selected else "PICKS DIFFER"))
            del plain

        bare_units = bare_stages(frames, model, soap, kernel, args.bare_sample)
        feat_us, kern_us, mv = (bare_units[k][0] for k in ("featomic", "kernel", "matvec"))
        cpu = {row[0]: row[2] for row in stages.rows}
        cpu_build, cpu_sel = cpu["store build (cold)"], cpu["selection (cold)"]
        selected_cold, value_cold = run.selected, run.values[-1]
        del model, run  # free Ψ before the baseline and the warm run (peak RSS)

        fps_t = None
        if not args.skip_fps:
            from skmatter.sample_selection import FPS

            mean = open_store(store).load_mean_descriptors()
            stages.mark()
            t = time.perf_counter()
            FPS(n_to_select=args.picks, initialize=0).fit(mean)
            fps_t = time.perf_counter() - t
            stages.add("skmatter FPS (mean-pooled)", fps_t, f"{mean.shape[0]} × {mean.shape[1]}")
            del mean

        stages.mark()
        t = time.perf_counter()
        warm = build()
        warm_build = time.perf_counter() - t
        stages.add("store load (warm)", warm_build, f"{warm.store_info['chunks_computed']} chunks computed")
        stages.mark()
        run, warm_sel = select_d(warm, args.picks)
        stages.add("selection (warm)", warm_sel, "same picks" if run.selected == selected_cold else "PICKS DIFFER")

        bare_feat = feat_us * n_atoms
        bare_kern = kern_us * n_atoms
        bare_sel = mv * args.picks
        bare = bare_feat + bare_kern + bare_sel
        end_to_end = cold + sel
        print(f"\nbare stages (measured now on {args.bare_sample} of the same frames, M = {warm.M}):")
        print(f"  featomic compute   {feat_us * 1e6:7.1f} us/atom  -> {bare_feat:8.1f} s for {n_atoms} atoms")
        print(f"  X @ Z.T, ^zeta     {kern_us * 1e6:7.1f} us/atom  -> {bare_kern:8.1f} s")
        print(f"  N x M mat-vec      {mv * 1e3:7.2f} ms/pick  -> {bare_sel:8.1f} s for {args.picks} picks")
        print(f"  sum of bare stages {bare:8.1f} s")
        print("\nresults:")
        print(f"  end-to-end (cold build + selection) {end_to_end:8.1f} s   ratio to bare {end_to_end / bare:5.2f}  (target <= 1.3)")
        print(f"  warm run (load + selection)         {warm_build + warm_sel:8.1f} s   (load {warm_build:.1f} s)")
        print(f"  peak RSS                            {peak_rss() / GB:8.2f} GB  (target <= 2 GB)")
        if fps_t is not None:
            print(f"  selection {sel:.1f} s vs skmatter FPS {fps_t:.1f} s: ratio {sel / fps_t:.2f}  (target < 1)")
        print(f"  d value of the selection {value_cold:.3f}")
        print("\nper stage vs its bare work (wall):")
        print(f"  row stage {tm['row_stage']:.1f} s vs bare featomic + kernel rows {bare_feat + bare_kern:.1f} s: "
              f"{tm['row_stage'] / (bare_feat + bare_kern):.2f}x  (inside tasks: featomic+wrapper "
              f"{tm['descriptors'] / bare_feat:.2f}x, rows+whitening+pooling {tm['rows'] / bare_kern:.2f}x)")
        print(f"  whole build {cold:.1f} s vs bare featomic + kernel rows: {cold / (bare_feat + bare_kern):.2f}x")
        bare_cpu = (bare_units["featomic"][1] + bare_units["kernel"][1]) * n_atoms + bare_units["matvec"][1] * args.picks
        print(f"  CPU time (robust to other users of the machine): build + selection {cpu_build + cpu_sel:.1f} s vs "
              f"bare {bare_cpu:.1f} s: {(cpu_build + cpu_sel) / bare_cpu:.2f}x")
        print(f"  selection {sel:.1f} s vs {args.picks} bare mat-vecs {bare_sel:.1f} s: {sel / bare_sel:.2f}x "
              f"(lazy greedy evaluated {evals} gains, {evals / args.picks:.0f} per pick of N = {warm.n_frames})")
        if plain_t is not None:
            print(f"  plain greedy {plain_t:.1f} s vs {args.picks} bare mat-vecs: {plain_t / bare_sel:.2f}x")
        del warm, run

        if args.compare_exact:
            compare_exact(frames[: args.compare_exact], args, kernel, soap, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
