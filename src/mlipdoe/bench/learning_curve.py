"""Learning-curve benchmark: select (labels hidden) → fit → evaluate, per strategy and budget.

One information model (descriptors, sparse points, whitened rows) is built once on the
label-free pool and shared by every strategy; the observation rows of pool and test
frames are computed once, so each fit is a single M × M Cholesky solve.

Greedy designs are nested, so each strategy is run once to the largest budget and the
smaller budgets are its prefixes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from ase import Atoms

from ..atomic import output_folder
from ..criteria import make_criterion, mean_pooled_descriptors
from ..descriptors import SOAP
from ..design import atomic_write_text
from ..exceptions import ConfigurationError, InputError
from ..fit import Labels, fit_from_rows, read_labels
from ..hypers import Noise
from ..model import build_model
from ..model.kernels import Kernel
from ..optimizers import greedy
from .vault import LabelVault

DEFAULT_STRATEGIES = ("random", "fps", "cur", "d", "i", "maximin", "d_forces", "i_forces")
FORCE_SUFFIX = "_forces"


@dataclass
class BenchmarkConfig:
    """What a benchmark run does.

    budgets : list of int, frames per design. strategies : names (``random`` is run
    with ``n_random`` seeds; ``<name>_forces`` runs criterion ``name`` on energy +
    force rows). ``use_forces``: fit on forces as well as energies.
    """

    budgets: Sequence[int]
    strategies: Sequence[str] = DEFAULT_STRATEGIES
    n_random: int = 5
    soap: SOAP = SOAP()
    kernel: Kernel = Kernel()
    noise: Noise = field(default_factory=Noise)
    n_sparse: int = 100
    sparse_method: str = "cur"
    seed: int = 0
    use_forces: bool = True
    include_full: bool = True


@dataclass
class BenchmarkResult:
    """All results: one row per (strategy, seed, n, test set); notes on skipped strategies."""

    rows: list
    notes: list
    timings: dict
    config: BenchmarkConfig
    n_pool: int
    M: int
    test_sets: list = field(default_factory=list)
    #: (strategy, seed) -> pool indices in selection order (largest budget)
    designs: dict = field(default_factory=dict)


def select_design(strategy: str, model, n: int, *, seed: int = 0, force_model=None, frames=None,
                  vectors=None) -> list[int]:
    """Pool indices of an ``n``-frame design by ``strategy`` (selection order).

    Only the label-free information model (and, for the descriptor baselines ``fps``/``cur``,
    the label-free ``frames`` or their mean-pooled ``vectors``) is used. Raises
    ConfigurationError when the strategy is not available in this build.
    """
    base = strategy[: -len(FORCE_SUFFIX)] if strategy.endswith(FORCE_SUFFIX) else strategy
    use = model
    if strategy.endswith(FORCE_SUFFIX):
        if force_model is None:
            raise ConfigurationError(f"{strategy}: no force-row information model available")
        use = force_model
    crit = make_criterion(base, lenient=True, frames=frames, vectors=vectors)
    crit.initialize(use, seed=seed)
    run = greedy(crit, n, available=np.ones(use.n_frames, dtype=bool))
    return list(run.selected)


def _rows(model, frames, use_forces: bool):
    """The model layer's whitened rows of each frame (energy, and forces when fitted)."""
    return model.observation_rows(frames, observations=("energy", "forces") if use_forces else ("energy",))


def _errors(rows, beta, e0, labels: Labels, use_forces: bool) -> dict:
    pred = np.array([r.psi[0] @ beta for r in rows]) + e0 * labels.n_atoms
    de = (pred - labels.energy) / labels.n_atoms
    out = {"energy_rmse": float(np.sqrt(np.mean(de**2))), "energy_mae": float(np.mean(np.abs(de)))}
    if use_forces and labels.forces is not None:
        d = np.concatenate([r.psi[r.kind == "force"] @ beta - f.reshape(-1) for r, f in zip(rows, labels.forces)])
        out["force_rmse"] = float(np.sqrt(np.mean(d**2)))
        out["force_mae"] = float(np.mean(np.abs(d)))
    else:
        out["force_rmse"] = out["force_mae"] = float("nan")
    return out


def run_benchmark(pool: Sequence[Atoms], test_sets: Mapping[str, Sequence[Atoms]], config: BenchmarkConfig, *,
                  energy_key: str = "energy", forces_key: str = "force", log=print) -> BenchmarkResult:
    """Learning curves of every strategy on every test set.

    Parameters
    ----------
    pool : list of ase.Atoms
        Labelled candidate pool; the selectors see only label-free copies (LabelVault).
    test_sets : mapping name -> list of ase.Atoms
        Labelled held-out sets ("test", and optional off-sample sets).
    """
    t_start = time.perf_counter()
    vault = LabelVault(pool, energy_key=energy_key, forces_key=forces_key)
    budgets = sorted({int(b) for b in config.budgets})
    if not budgets or budgets[0] < 1 or budgets[-1] > len(vault):
        raise InputError(f"budgets must be within 1..{len(vault)} (pool size), got {list(config.budgets)}")
    use_forces = config.use_forces and vault.has_forces
    notes: list[str] = []
    if config.use_forces and not vault.has_forces:
        notes.append("pool has no force labels: fits use energies only")
    timings: dict = {}
    t0 = time.perf_counter()
    cts = [a.info.get("config_type") for a in vault.frames]
    model = build_model(vault.frames, soap=config.soap, kernel=config.kernel, noise=config.noise,
                        n_sparse=config.n_sparse, sparse_method=config.sparse_method, seed=config.seed,
                        config_types=cts)
    timings["model"] = time.perf_counter() - t0
    log(f"model: {len(vault)} frames, M = {model.M} ({timings['model']:.1f} s)")
    # rows of the pool (label free) and the test frames, once: the pool's force rows serve
    # both the fits and the force-aware designs
    t0 = time.perf_counter()
    want_force_model = any(s.endswith(FORCE_SUFFIX) for s in config.strategies)
    pool_rows = _rows(model, vault.frames, use_forces or want_force_model)
    force_model = None
    if want_force_model:
        force_model = dataclasses.replace(model)
        force_model.set_pool_rows(enumerate(pool_rows), observations=("energy", "forces"))
    if not use_forces:
        pool_rows = [r.select(("energy",)) for r in pool_rows]
    test_rows, test_labels = {}, {}
    for name, frames in test_sets.items():
        test_labels[name] = read_labels(frames, energy_key=energy_key, forces_key=forces_key)
        test_rows[name] = _rows(model, frames, use_forces and test_labels[name].forces is not None)
    timings["rows"] = time.perf_counter() - t0
    log(f"rows of pool and test sets ({timings['rows']:.1f} s)")

    vectors = None
    if any(s in ("fps", "cur") for s in config.strategies):
        vectors = mean_pooled_descriptors(vault.frames, model.soap)
    designs: list[tuple[str, int, list[int], float]] = []
    for strategy in config.strategies:
        seeds = range(config.n_random) if strategy == "random" else [config.seed]
        for seed in seeds:
            t0 = time.perf_counter()
            try:
                order = select_design(strategy, model, budgets[-1], seed=seed, force_model=force_model,
                                      frames=vault.frames, vectors=vectors)
            except ConfigurationError as exc:
                notes.append(f"{strategy}: skipped ({exc})")
                log(f"{strategy}: skipped ({exc})")
                break
            dt = time.perf_counter() - t0
            designs.append((strategy, seed, order, dt))
            log(f"{strategy} seed {seed}: {budgets[-1]} picks in {dt:.1f} s")
    if config.include_full:
        designs.append(("full", 0, list(range(len(vault))), 0.0))

    rows = []
    t0 = time.perf_counter()
    for strategy, seed, order, sel_seconds in designs:
        ns = [len(order)] if strategy == "full" else budgets
        for n in ns:
            design = vault.freeze(strategy, order[:n])          # design fixed before labels are read
            labels = vault.labels(design)
            tf = time.perf_counter()
            beta, e0 = fit_from_rows([pool_rows[i] for i in design.selected], labels)
            fit_seconds = time.perf_counter() - tf
            for name in test_sets:
                err = _errors(test_rows[name], beta, e0, test_labels[name], use_forces)
                rows.append({"strategy": strategy, "seed": seed, "n": n, "fraction": n / len(vault),
                             "n_atoms": int(labels.n_atoms.sum()), "test_set": name, **err,
                             "select_seconds": round(sel_seconds, 3), "fit_seconds": round(fit_seconds, 3)})
    timings["fits"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    return BenchmarkResult(rows, notes, timings, config, len(vault), model.M, list(test_sets),
                           {(s, seed): list(order) for s, seed, order, _ in designs})


# ---------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------
COLUMNS = ["strategy", "seed", "n", "fraction", "n_atoms", "test_set", "energy_rmse", "energy_mae", "force_rmse",
           "force_mae", "select_seconds", "fit_seconds"]


def results_csv(result: BenchmarkResult) -> str:
    """CSV text of all rows (energies in eV/atom, forces in eV/Å)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for row in result.rows:
        writer.writerow({k: row[k] for k in COLUMNS})
    return buf.getvalue()


def _aggregate(result: BenchmarkResult, test_set: str, strategy: str, n: int, key: str):
    vals = [r[key] for r in result.rows if r["test_set"] == test_set and r["strategy"] == strategy and r["n"] == n]
    if not vals:
        return None
    vals = np.array(vals)
    return float(np.median(vals)), float(vals.min()), float(vals.max()), len(vals)


def strategies_run(result: BenchmarkResult) -> list[str]:
    seen = []
    for r in result.rows:
        if r["strategy"] not in seen and r["strategy"] != "full":
            seen.append(r["strategy"])
    return seen


def summary_markdown(result: BenchmarkResult, *, title: str = "", command: str = "") -> str:
    """Markdown tables: test energy RMSE (meV/atom) and force RMSE (eV/Å) per budget and strategy."""
    lines = []
    if title:
        lines += [f"## {title}", ""]
    if command:
        lines += ["Generated by:", "", "```", command, "```", ""]
    cfg = result.config
    lines += [f"Pool {result.n_pool} frames, M = {result.M} sparse points ({cfg.sparse_method}), SOAP cutoff "
              f"{cfg.soap.cutoff} n_max {cfg.soap.n_max} l_max {cfg.soap.l_max} σ_atom {cfg.soap.atom_sigma}, "
              f"ζ = {cfg.kernel.zeta}, σ_E = {cfg.noise.energy} eV/atom, σ_F = {cfg.noise.force} eV/Å, "
              f"fit on {'energies + forces' if any(not np.isnan(r['force_rmse']) for r in result.rows) else 'energies'}. "
              f"random: median [min–max] over {cfg.n_random} seeds. Wall time {result.timings['total']:.0f} s.", ""]
    strategies = strategies_run(result)
    budgets = sorted({r["n"] for r in result.rows if r["strategy"] != "full"})
    full = [r for r in result.rows if r["strategy"] == "full"]
    for test_set in result.test_sets:
        for key, unit, scale, fmt in (("energy_rmse", "meV/atom", 1000.0, "{:.2f}"), ("force_rmse", "eV/Å", 1.0, "{:.3f}")):
            if all(np.isnan(r[key]) for r in result.rows if r["test_set"] == test_set):
                continue
            lines += [f"**{test_set}: {key.replace('_', ' ')} ({unit})**", ""]
            lines.append("| n (% pool) | " + " | ".join(strategies) + " |")
            lines.append("|---|" + "---|" * len(strategies))
            for n in budgets:
                cells = []
                for s in strategies:
                    agg = _aggregate(result, test_set, s, n, key)
                    if agg is None:
                        cells.append("")
                    elif agg[3] > 1:
                        cells.append(f"{fmt.format(agg[0] * scale)} [{fmt.format(agg[1] * scale)}–{fmt.format(agg[2] * scale)}]")
                    else:
                        cells.append(fmt.format(agg[0] * scale))
                lines.append(f"| {n} ({100 * n / result.n_pool:.0f} %) | " + " | ".join(cells) + " |")
            fr = [r for r in full if r["test_set"] == test_set]
            if fr:
                lines.append(f"| full ({fr[0]['n']}) | " + fmt.format(fr[0][key] * scale) + " |" + " |" * (len(strategies) - 1))
            lines.append("")
    # DFT cost of each design: atoms in the training set
    t0 = result.test_sets[0]
    lines += ["**atoms in the design (DFT cost; random: median)**", "",
              "| n | " + " | ".join(strategies) + " |", "|---|" + "---|" * len(strategies)]
    for n in budgets:
        cells = []
        for s in strategies:
            agg = _aggregate(result, t0, s, n, "n_atoms")
            cells.append("" if agg is None else f"{agg[0]:.0f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("")
    if full:
        lines.append("Full-pool MAE: " + "; ".join(
            f"{r['test_set']}: {1000 * r['energy_mae']:.2f} meV/atom, {r['force_mae']:.3f} eV/Å" for r in full) + ".")
        lines.append("")
    if result.notes:
        lines += ["Notes: " + "; ".join(result.notes) + ".", ""]
    return "\n".join(lines)


def plot_learning_curves(result: BenchmarkResult, path, *, test_set: str, title: str = "") -> None:
    """Energy and force RMSE vs n (log–log), one line per strategy; random = median with min–max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plots import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    budgets = sorted({r["n"] for r in result.rows if r["strategy"] != "full"})
    for ax, key, unit, scale in ((axes[0], "energy_rmse", "meV/atom", 1000.0), (axes[1], "force_rmse", "eV/Å", 1.0)):
        for s in strategies_run(result):
            aggs = [(n, _aggregate(result, test_set, s, n, key)) for n in budgets]
            aggs = [(n, a) for n, a in aggs if a is not None and not np.isnan(a[0])]
            if not aggs:
                continue
            ns = [n for n, _ in aggs]
            med = [a[0] * scale for _, a in aggs]
            line, = ax.plot(ns, med, "o-", label=s)
            if aggs[0][1][3] > 1:
                ax.fill_between(ns, [a[1] * scale for _, a in aggs], [a[2] * scale for _, a in aggs],
                                color=line.get_color(), alpha=0.2)
        full = [r for r in result.rows if r["strategy"] == "full" and r["test_set"] == test_set]
        if full and not np.isnan(full[0][key]):
            ax.axhline(full[0][key] * scale, color="k", ls="--", lw=0.8, label=f"full pool ({full[0]['n']})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training frames n")
        ax.set_ylabel(f"test {key.replace('_', ' ')} ({unit})")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or test_set)
    save_figure(fig, path)


def write_outputs(result: BenchmarkResult, directory, *, title: str = "", command: str = "") -> dict:
    """results.csv, learning_curves_<test>.png and summary.md in ``directory``; returns the paths."""
    directory = output_folder(directory, what="benchmark folder")
    paths = {"csv": directory / "results.csv", "summary": directory / "summary.md"}
    atomic_write_text(paths["csv"], results_csv(result))
    for t in result.test_sets:
        p = directory / f"learning_curves_{t}.png"
        plot_learning_curves(result, p, test_set=t, title=f"{title} — {t}" if title else t)
        paths[f"png_{t}"] = p
    atomic_write_text(paths["summary"], summary_markdown(result, title=title, command=command))
    paths["designs"] = directory / "designs.json"
    import json

    atomic_write_text(paths["designs"], json.dumps(
        [{"strategy": s, "seed": seed, "selected": order} for (s, seed), order in result.designs.items()]))
    return paths


def update_markdown_section(path, section: str, text: str, *, header: str = "") -> None:
    """Replace (or append) the block between ``<!-- section:NAME -->`` markers in ``path``."""
    path = Path(path)
    old = path.read_text() if path.exists() else (header.rstrip() + "\n\n" if header else "")
    start, end = f"<!-- section:{section} -->", f"<!-- /section:{section} -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in old and end in old:
        before, rest = old.split(start, 1)
        _, after = rest.split(end, 1)
        new = before + block + after
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(path, new)
