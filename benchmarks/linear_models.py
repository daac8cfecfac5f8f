"""SNAP (linear) models: designed training sets vs random and FPS picks.

A SNAP model (2J = 6, one coefficient block per element with a count column) fitted by
weighted ridge least squares on energies and forces (spec section 8: the posterior mean
``mlipdoe.fit.fit_from_rows`` on :class:`mlipdoe.model.linear_model.LinearModel` rows,
σ_E = 1 meV/atom, σ_F = 0.1 eV/Å, prior precision λ = 1). Labels are hidden from every
selector (:class:`mlipdoe.bench.LabelVault`): each design is frozen before its labels are read.

Data sets:

- ``Zr``: hcp Zr from :func:`mlipdoe.generate.generate_strained` (Sobol strains within ±3 %,
  rattle 0.05 Å, 16-atom cells), labelled by the Mendelev–Ackland EAM potential
  (``../shared/data/eam/Zr_mm.eam.fs``); tests: the same distribution with another seed
  ("in") and strains between 3 and 5 % ("strain 3–5 %");
- ``Mo``, ``Cu``, ``Ni``, ``Li``: the Zuo et al. 2020 DFT splits (``../shared/data/zuo2020``),
  pool = training split, test = test split.

Strategies, at each budget (fractions of the pool, rounded): ``d`` and ``i`` (target = the
pool) on the energy + force information of every frame, ``d`` on energy rows only, ``fps`` on
mean-pooled SOAP (default featomic SOAP on the pool's species), ``random`` over several seeds
(median and min–max), and the full pool for reference. Every design goes through
:func:`mlipdoe.api.design` with the prebuilt model.

    OPENBLAS_NUM_THREADS=1 python benchmarks/linear_models.py [--quick]

Prints markdown tables (test RMSEs, selection and row-stage wall times). Data sets whose
files are absent are skipped with a message.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
EAM_FILE = SHARED / "eam" / "Zr_mm.eam.fs"
ZUO = SHARED / "zuo2020"

#: Total SNAP cutoff per element (Å): between the third and fourth neighbour shells
#: (bcc Mo 4.45 / 5.22, fcc Cu 4.43 / 5.12, fcc Ni 4.31 / 4.98, bcc Li 4.86 / 5.70),
#: for hcp Zr past the second shell (4.57).
CUTOFF = {"Zr": 5.0, "Mo": 4.7, "Cu": 4.7, "Ni": 4.7, "Li": 5.2}
RADELEM = 0.5  # rcutfac = cutoff / (2 radelem) = cutoff


@dataclass
class Dataset:
    """A labelled pool and labelled test sets."""

    name: str
    pool: list
    tests: dict
    description: str


@dataclass
class Result:
    """Errors of one fitted design on every test set."""

    strategy: str
    n: int
    selected: list
    seconds: float
    errors: dict = field(default_factory=dict)  # test name -> (energy meV/atom, force eV/Å)


# --------------------------------------------------------------------------- data

def eam_label(frames, calc):
    """Copies of ``frames`` with EAM labels in ``info["energy"]`` and ``arrays["force"]``."""
    out = []
    for atoms in frames:
        a = atoms.copy()
        a.calc = calc
        a.info["energy"] = float(a.get_potential_energy())
        a.arrays["force"] = np.array(a.get_forces())
        a.calc = None
        out.append(a)
    return out


def zr_dataset(n_pool: int, n_test: int) -> Dataset | None:
    if not EAM_FILE.exists():
        print(f"skipped Zr: {EAM_FILE} not found", file=sys.stderr)
        return None
    from ase.calculators.eam import EAM

    from mlipdoe.generate import generate_strained

    calc = EAM(potential=str(EAM_FILE))
    common = {"rattle": 0.05, "supercell": (2, 2, 2)}
    pool = eam_label(generate_strained("Zr", n_frames=n_pool, max_strain=0.03, seed=11, **common), calc)
    test_in = eam_label(generate_strained("Zr", n_frames=n_test, max_strain=0.03, seed=12, **common), calc)
    test_off = eam_label(generate_strained("Zr", n_frames=n_test, min_strain=0.03, max_strain=0.05, seed=13,
                                           config_type="strain_3-5", **common), calc)
    return Dataset("Zr", pool, {"in": test_in, "strain 3–5 %": test_off},
                   f"hcp Zr, EAM labels: pool {n_pool} frames (16 atoms, strain ≤ 3 %, rattle 0.05 Å, seed 11); "
                   f"tests {n_test} frames in-sample (seed 12) and {n_test} at strain 3–5 % (seed 13)")


def zuo_dataset(element: str) -> Dataset | None:
    train, test = ZUO / f"{element}_train.xyz", ZUO / f"{element}_test.xyz"
    if not (train.exists() and test.exists()):
        print(f"skipped {element}: {train} or {test} not found", file=sys.stderr)
        return None
    import ase.io

    pool, tests = ase.io.read(train, ":"), ase.io.read(test, ":")
    return Dataset(element, pool, {"test": tests},
                   f"Zuo et al. 2020 {element}: pool = train split ({len(pool)} frames, "
                   f"{sum(len(a) for a in pool)} atoms), test split {len(tests)} frames")


# --------------------------------------------------------------------------- errors

def rmse(prediction, labels) -> tuple[float, float]:
    """Energy RMSE per atom (meV/atom) and force-component RMSE (eV/Å)."""
    e = (prediction.energy - labels.energy) / labels.n_atoms
    f = np.concatenate([(p - r).ravel() for p, r in zip(prediction.forces, labels.forces)])
    return 1e3 * float(np.sqrt(np.mean(e ** 2))), float(np.sqrt(np.mean(f ** 2)))


# --------------------------------------------------------------------------- one data set

def run_dataset(ds: Dataset, *, fractions, n_random: int, twojmax: int) -> dict:
    """Rows, designs, fits and test errors of one data set."""
    from mlipdoe.api import design
    from mlipdoe.bench import LabelVault
    from mlipdoe.budget import Budget
    from mlipdoe.fit import fit_from_rows, predict_rows, read_labels
    from mlipdoe.hypers import DesignConfig, ModelConfig, Noise
    from mlipdoe.model.linear import SnapBasis
    from mlipdoe.model.linear_model import DEFAULT_PRIOR_PRECISION, build_linear_model

    obs_ef = ("energy", "forces")
    vault = LabelVault(ds.pool)
    frames = vault.frames  # label-free copies: all the selectors ever see
    basis = SnapBasis(twojmax=twojmax, rcutfac=CUTOFF[ds.name], radelem=RADELEM)
    noise = Noise()
    timings = {}

    t0 = time.perf_counter()
    model_ef = build_linear_model(frames, basis, prior_precision=DEFAULT_PRIOR_PRECISION, noise=noise,
                                  observations=obs_ef)
    timings["model E+F rows"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model_e = build_linear_model(frames, basis, prior_precision=DEFAULT_PRIOR_PRECISION, noise=noise,
                                 observations=("energy",))
    timings["model E rows"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pool_rows = model_ef.observation_rows(frames, observations=obs_ef)  # the fit's rows, computed once
    timings["pool fit rows"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    test_rows = {name: model_ef.observation_rows(test, observations=obs_ef) for name, test in ds.tests.items()}
    test_labels = {name: read_labels(test) for name, test in ds.tests.items()}
    timings["test rows"] = time.perf_counter() - t0

    def evaluate(strategy, n, selected, seconds) -> Result:
        frozen = vault.freeze(strategy, selected)
        labels = vault.labels(frozen)
        beta, e0 = fit_from_rows([pool_rows[i] for i in frozen.selected], labels)
        res = Result(strategy, n, list(frozen.selected), seconds)
        for name in ds.tests:
            res.errors[name] = rmse(predict_rows(test_rows[name], beta, e0), test_labels[name])
        return res

    def designed(criterion, n, model, seed=0):
        config = DesignConfig(model=ModelConfig(seed=seed), criterion=criterion, budget=Budget("count", n)).validate()
        t0 = time.perf_counter()
        result = design(frames, config, model=model)
        return result.selected, time.perf_counter() - t0

    N = len(frames)
    budgets = sorted({max(2, round(f * N)) for f in fractions})
    results = []
    for n in budgets:
        for label, criterion, model in (("d (E+F)", "d", model_ef), ("i (E+F)", "i", model_ef),
                                        ("d (E)", "d", model_e), ("fps", "fps", model_e)):
            selected, seconds = designed(criterion, n, model)
            results.append(evaluate(label, n, selected, seconds))
        for seed in range(n_random):
            selected, seconds = designed("random", n, model_e, seed=seed)
            results.append(evaluate("random", n, selected, seconds))
    results.append(evaluate("full pool", N, list(range(N)), 0.0))
    return {"dataset": ds, "timings": timings, "results": results, "budgets": budgets, "M": model_ef.M,
            "twojmax": int(twojmax),
            "cutoff": basis.cutoff(model_ef.species), "n_atoms_pool": int(sum(len(a) for a in frames))}


# --------------------------------------------------------------------------- tables

STRATEGIES = ("d (E+F)", "i (E+F)", "d (E)", "fps", "random")


def _fmt(x: float, digits: int) -> str:
    return f"{x:.{digits}f}"


def _cell(values, digits: int, best: bool = False) -> str:
    values = np.asarray(values, dtype=float)
    if len(values) == 1:
        s = _fmt(values[0], digits)
    else:
        s = f"{_fmt(np.median(values), digits)} ({_fmt(values.min(), digits)}–{_fmt(values.max(), digits)})"
    return f"**{s}**" if best else s


def markdown(run: dict) -> str:
    ds = run["dataset"]
    results = run["results"]
    tests = list(ds.tests)
    n_seeds = sum(r.strategy == "random" for r in results if r.n == run["budgets"][0])
    note = (f"SNAP 2J = {run['twojmax']}, cutoff {run['cutoff']:.2f} Å, M = {run['M']} coefficients; test RMSE "
            f"of energy (meV/atom) and force components (eV/Å); random: median (min–max) of {n_seeds} seeds; "
            f"[k]: random seeds (of {n_seeds}) with a lower RMSE than the design; bold: best median "
            "at that budget; atoms: atoms in the design (random: median (min–max)).")
    lines = [f"### {ds.name}: {ds.description}", "", note, ""]
    head = "| n | strategy | " + " | ".join(f"E {t} | F {t}" for t in tests) + " | atoms | select (s) |"
    lines += [head, "|" + "---|" * (2 * len(tests) + 4)]
    for n in run["budgets"]:
        by = {s: [r for r in results if r.n == n and r.strategy == s] for s in STRATEGIES}
        med = {s: {t: [float(np.median([r.errors[t][k] for r in rs])) for k in (0, 1)] for t in tests}
               for s, rs in by.items()}
        for s in STRATEGIES:
            rs = by[s]
            cells = []
            for t in tests:
                for k, digits in ((0, 3 if ds.name == "Zr" else 2), (1, 4)):
                    best = med[s][t][k] <= min(med[o][t][k] for o in STRATEGIES)
                    cell = _cell([r.errors[t][k] for r in rs], digits, best)
                    if s != "random":
                        beaten = sum(r.errors[t][k] < rs[0].errors[t][k] for r in by["random"])
                        cell += f" [{beaten}]"
                    cells.append(cell)
            atoms = [sum(len(ds.pool[i]) for i in r.selected) for r in rs]
            secs = float(np.median([r.seconds for r in rs]))
            lines.append(f"| {n} | {s} | " + " | ".join(cells) + f" | {_cell(atoms, 0)} | {secs:.2f} |")
    full = next(r for r in results if r.strategy == "full pool")
    cells = [f"{_fmt(full.errors[t][0], 3 if ds.name == 'Zr' else 2)} | {_fmt(full.errors[t][1], 4)}" for t in tests]
    lines.append(f"| {full.n} | full pool | " + " | ".join(cells) + f" | {run['n_atoms_pool']} | – |")
    return "\n".join(lines)


def timing_table(runs) -> str:
    keys = ("model E+F rows", "model E rows", "pool fit rows", "test rows")
    lines = ["| data set | pool frames / atoms | " + " | ".join(f"{k} (s)" for k in keys) + " |",
             "|" + "---|" * (len(keys) + 2)]
    for run in runs:
        ds = run["dataset"]
        lines.append(f"| {ds.name} | {len(ds.pool)} / {run['n_atoms_pool']} | "
                     + " | ".join(f"{run['timings'][k]:.2f}" for k in keys) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="Zr pool 120 frames (tests 40 each) and Mo only, 5 random seeds")
    parser.add_argument("--datasets", default=None, help="comma-separated subset of Zr,Mo,Cu,Ni,Li "
                                                         "(default Zr,Mo,Cu,Ni,Li; --quick: Zr,Mo)")
    parser.add_argument("--fractions", default="0.1,0.2", help="budgets as fractions of the pool")
    parser.add_argument("--n-random", type=int, default=None, help="random seeds (default 10; --quick: 5)")
    parser.add_argument("--n-pool-zr", type=int, default=None, help="Zr pool frames (default 300; --quick: 120)")
    parser.add_argument("--n-test-zr", type=int, default=None, help="Zr frames per test set (default 100; --quick: 40)")
    parser.add_argument("--twojmax", type=int, default=6)
    args = parser.parse_args(argv)
    names = (args.datasets or ("Zr,Mo" if args.quick else "Zr,Mo,Cu,Ni,Li")).split(",")
    n_random = args.n_random if args.n_random is not None else (5 if args.quick else 10)
    n_pool = args.n_pool_zr if args.n_pool_zr is not None else (120 if args.quick else 300)
    n_test = args.n_test_zr if args.n_test_zr is not None else (40 if args.quick else 100)
    fractions = [float(f) for f in args.fractions.split(",")]
    command = " ".join(["OPENBLAS_NUM_THREADS=1 python benchmarks/linear_models.py"] + [
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])])
    if os.environ.get("OPENBLAS_NUM_THREADS") != "1":
        print("note: OPENBLAS_NUM_THREADS is not 1; timings are not comparable", file=sys.stderr)
    t_start = time.perf_counter()
    runs = []
    for name in names:
        name = name.strip()
        t0 = time.perf_counter()
        ds = zr_dataset(n_pool, n_test) if name == "Zr" else zuo_dataset(name)
        if ds is None:
            continue
        t_data = time.perf_counter() - t0
        run = run_dataset(ds, fractions=fractions, n_random=n_random, twojmax=args.twojmax)
        run["seconds"] = time.perf_counter() - t0
        run["data_seconds"] = t_data
        runs.append(run)
        print(f"{name}: {run['seconds']:.1f} s (data {t_data:.1f} s)", file=sys.stderr, flush=True)
    total = time.perf_counter() - t_start
    print(f"Command: `{command}` (total wall time {total:.0f} s)\n")
    for run in runs:
        print(markdown(run) + "\n")
    print("Row stage (wall time, s): the E+F model (energy + force rows of every pool frame, compressed "
          "factors), the energy-only model, the fit rows of the pool (recomputed once, indexed per "
          "design) and the test rows.\n")
    print(timing_table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
