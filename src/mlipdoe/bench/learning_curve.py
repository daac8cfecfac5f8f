"""Learning-curve benchmark: select (labels hidden) → fit → evaluate, per strategy and budget.

One information model is built once on the label-free pool and shared by every strategy:
the built-in featomic GAP, or — with ``BenchmarkConfig.gap_fit`` — exactly the GAP of the
user's gap_fit arguments. Each design is then trained by one of two engines:

- ``builtin``: the posterior mean on the model's rows (one M × M solve per fit);
- ``gap_fit``: the real gap_fit, as a user runs it, in two variants of sparse points:
  ``gap_fit`` (gap_fit chooses its own among the training frames, the user's arguments as
  they are) and ``design`` (the design model's sparse points, exported as ``select --export``
  does). Predictions on the test frames come from quippy.

Greedy designs are nested, so each strategy is run once to the largest budget and the
smaller budgets are its prefixes. Every error is also kept per test frame, for bootstrap
confidence intervals over the test frames.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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
from ..fit import Labels, Prediction, fit_from_rows, gap_fit_e0, predict_rows, read_labels
from ..hypers import Noise
from ..model import build_model
from ..model.kernels import Kernel
from ..optimizers import greedy
from .vault import LabelVault

DEFAULT_STRATEGIES = ("random", "fps", "cur", "quests", "d", "i", "maximin", "d_forces", "i_forces")
FORCE_SUFFIX = "_forces"
#: strategy suffix → the i criterion's target observable (after ``_forces``: e.g. ``i_forces_mix``)
TARGET_SUFFIXES = {"_mix": "energy,forces", "_ftarget": "forces"}
ENGINES = ("builtin", "gap_fit")
#: gap_fit engine: whose sparse points the trained GAP uses.
SPARSE_VARIANTS = ("gap_fit", "design")


@dataclass
class BenchmarkConfig:
    """What a benchmark run does.

    budgets : list of int, frames per design. strategies : names (``random`` is run
    with ``n_random`` seeds; ``<name>_forces`` runs criterion ``name`` on energy +
    force rows; ``i_forces_mix`` / ``i_forces_ftarget``: i with the energy+forces or the
    forces target observable). ``use_forces``: fit on forces as well as energies.
    ``gap_fit``: a :class:`~mlipdoe.gap_spec.GapFitSpec`; designs are then computed on that
    GAP, and ``engine="gap_fit"`` trains them with gap_fit in each of ``sparse_variants``
    (``workers`` gap_fit runs at a time). ``n_bootstrap`` resamples of the test frames give
    the 95 % intervals.
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
    gap_fit: object = None
    engine: str = "builtin"
    sparse_variants: Sequence[str] = ("gap_fit",)
    workers: int = 1
    n_bootstrap: int = 1000

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ConfigurationError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine == "gap_fit" and self.gap_fit is None:
            raise ConfigurationError("the gap_fit engine trains the user's gap_fit model: give its arguments "
                                     "(--gap-fit-args or --gap-fit-args-file)")
        bad = [v for v in self.sparse_variants if v not in SPARSE_VARIANTS]
        if bad or not self.sparse_variants:
            raise ConfigurationError(f"sparse variants must be among {', '.join(SPARSE_VARIANTS)}, got "
                                     f"{list(self.sparse_variants)}")
        if self.workers < 1 or self.n_bootstrap < 0:
            raise ConfigurationError("workers must be ≥ 1 and n_bootstrap ≥ 0")

    @property
    def variants(self) -> tuple[str, ...]:
        """The fit variants run: the sparse variants for gap_fit, one "" for the built-in fit."""
        return tuple(self.sparse_variants) if self.engine == "gap_fit" else ("",)


@dataclass
class BenchmarkResult:
    """All results: one row per (strategy, seed, n, fit variant, test set); notes on skipped strategies."""

    rows: list
    notes: list
    timings: dict
    config: BenchmarkConfig
    n_pool: int
    M: int
    test_sets: list = field(default_factory=list)
    #: (strategy, seed) -> pool indices in selection order (largest budget)
    designs: dict = field(default_factory=dict)
    #: (strategy, seed, n, variant, test set) -> FrameErrors
    frame_errors: dict = field(default_factory=dict)


@dataclass
class FrameErrors:
    """Test errors per frame: energy per atom (eV/atom) and sums over force components (eV/Å)."""

    de: np.ndarray
    f_sq: np.ndarray
    f_abs: np.ndarray
    f_n: np.ndarray

    def summary(self, idx=None) -> dict:
        """RMSE/MAE over the frames ``idx`` (all by default); forces per component, NaN without forces."""
        sl = slice(None) if idx is None else idx
        de, n = self.de[sl], self.f_n[sl].sum()
        out = {"energy_rmse": float(np.sqrt(np.mean(de**2))), "energy_mae": float(np.mean(np.abs(de)))}
        out["force_rmse"] = float(np.sqrt(self.f_sq[sl].sum() / n)) if n else float("nan")
        out["force_mae"] = float(self.f_abs[sl].sum() / n) if n else float("nan")
        return out

    def bootstrap(self, n_resamples: int, seed: int = 0) -> dict:
        """95 % percentile intervals of the energy and force RMSE over resampled test frames."""
        if n_resamples == 0:
            return {k: float("nan") for k in ("energy_rmse_lo", "energy_rmse_hi", "force_rmse_lo", "force_rmse_hi")}
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(self.de), size=(n_resamples, len(self.de)))
        e = np.sqrt(np.mean(self.de[idx] ** 2, axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            f = np.sqrt(self.f_sq[idx].sum(axis=1) / self.f_n[idx].sum(axis=1))
        lo, hi = np.percentile(e, [2.5, 97.5])
        out = {"energy_rmse_lo": float(lo), "energy_rmse_hi": float(hi)}
        if self.f_n.sum():
            flo, fhi = np.nanpercentile(f, [2.5, 97.5])
        else:
            flo = fhi = float("nan")
        out.update(force_rmse_lo=float(flo), force_rmse_hi=float(fhi))
        return out


def frame_errors(prediction: Prediction, labels: Labels, *, forces: bool = True) -> FrameErrors:
    """Per-frame errors of ``prediction`` against ``labels`` (forces only when both have them)."""
    n = np.asarray(labels.n_atoms, dtype=float)
    de = (np.asarray(prediction.energy) - labels.energy) / n
    k = len(de)
    f_sq, f_abs, f_n = np.zeros(k), np.zeros(k), np.zeros(k, dtype=np.int64)
    if forces and prediction.forces is not None and labels.forces is not None:
        for s, (p, r) in enumerate(zip(prediction.forces, labels.forces)):
            d = (np.asarray(p) - np.asarray(r)).reshape(-1)
            f_sq[s], f_abs[s], f_n[s] = float(d @ d), float(np.abs(d).sum()), d.size
    return FrameErrors(de, f_sq, f_abs, f_n)


def select_design(strategy: str, model, n: int, *, seed: int = 0, force_model=None, frames=None,
                  vectors=None) -> list[int]:
    """Pool indices of an ``n``-frame design by ``strategy`` (selection order).

    Only the label-free information model (and, for the model-free baselines, the
    label-free ``frames`` or their mean-pooled ``vectors``) is used. Raises
    ConfigurationError when the strategy is not available in this build.
    """
    name, observable = strategy, "energy"
    for suffix, obs in TARGET_SUFFIXES.items():
        if name.endswith(suffix):
            name, observable = name[: -len(suffix)], obs
    base = name[: -len(FORCE_SUFFIX)] if name.endswith(FORCE_SUFFIX) else name
    use = model
    if name.endswith(FORCE_SUFFIX):
        if force_model is None:
            raise ConfigurationError(f"{strategy}: no force-row information model available")
        use = force_model
    moment = None
    if observable != "energy":
        from ..api import target_moment

        if base != "i":
            raise ConfigurationError(f"{strategy}: a target observable is for the i criterion only")
        moment = target_moment(use, observable)
    crit = make_criterion(base, lenient=True, frames=frames, vectors=vectors, force_moment=moment)
    crit.initialize(use, seed=seed)
    run = greedy(crit, n, available=np.ones(use.n_frames, dtype=bool))
    return list(run.selected)


def _rows(model, frames, use_forces: bool):
    """The model layer's whitened rows of each frame (energy, and forces when fitted)."""
    return model.observation_rows(frames, observations=("energy", "forces") if use_forces else ("energy",))


class _GapFitRuns:
    """gap_fit trainings run ``workers`` at a time (each a separate gap_fit process)."""

    def __init__(self, config: BenchmarkConfig, model, use_forces: bool, root: Path):
        self.config, self.model, self.use_forces, self.root = config, model, use_forces, root
        self.pool = ThreadPoolExecutor(max_workers=config.workers)
        self.count = 0

    def submit(self, frames, labels: Labels, variant: str):
        from ..fit import fit_gap_fit_exact, fit_gap_fit_own

        self.count += 1
        out = self.root / f"fit{self.count:05d}"
        if variant == "design":
            return self.pool.submit(fit_gap_fit_exact, frames, labels, self.model, output=out,
                                    use_forces=self.use_forces)
        return self.pool.submit(fit_gap_fit_own, frames, labels, self.config.gap_fit, output=out,
                                use_forces=self.use_forces)


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
    if config.gap_fit is not None:
        from ..model.gap_quippy import build_gap_model

        model = build_gap_model(vault.frames, config.gap_fit, seed=config.seed, config_types=cts)
    else:
        model = build_model(vault.frames, soap=config.soap, kernel=config.kernel, noise=config.noise,
                            n_sparse=config.n_sparse, sparse_method=config.sparse_method, seed=config.seed,
                            config_types=cts)
    notes += list(getattr(model, "notes", []))
    timings["model"] = time.perf_counter() - t0
    log(f"model: {len(vault)} frames, M = {model.M} ({timings['model']:.1f} s)")
    # rows of the pool (label free) and the test frames, once: the pool's force rows serve
    # both the built-in fits and the force-aware designs
    t0 = time.perf_counter()
    builtin = config.engine == "builtin"
    want_force_model = any(FORCE_SUFFIX in s for s in config.strategies)
    pool_rows = None
    if builtin or want_force_model:
        pool_rows = _rows(model, vault.frames, (use_forces and builtin) or want_force_model)
    force_model = None
    if want_force_model:
        force_model = dataclasses.replace(model)
        force_model.set_pool_rows(enumerate(pool_rows), observations=("energy", "forces"))
    if builtin and not use_forces:
        pool_rows = [r.select(("energy",)) for r in pool_rows]
    test_rows, test_labels = {}, {}
    for name, frames in test_sets.items():
        test_labels[name] = read_labels(frames, energy_key=energy_key, forces_key=forces_key)
        if builtin:
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

    jobs = []      # (strategy, seed, n, variant, n_atoms, cost3, select seconds, fit result or future)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mlipdoe-bench-") as tmp:
        runs = None if builtin else _GapFitRuns(config, model, use_forces, Path(tmp))
        for strategy, seed, order, sel_seconds in designs:
            for n in ([len(order)] if strategy == "full" else budgets):
                design = vault.freeze(strategy, order[:n])          # design fixed before labels are read
                labels = vault.labels(design)
                atoms = labels.n_atoms.astype(np.int64)
                for variant in config.variants:
                    if builtin:
                        tf = time.perf_counter()
                        e0 = gap_fit_e0(model.spec, labels) if config.gap_fit is not None else None
                        fitted = fit_from_rows([pool_rows[i] for i in design.selected], labels, e0=e0)
                        fitted = (fitted, time.perf_counter() - tf)
                    else:
                        fitted = runs.submit([vault.frames[i] for i in design.selected], labels, variant)
                    jobs.append((strategy, seed, n, variant, int(atoms.sum()), float((atoms.astype(float) ** 3).sum()),
                                 sel_seconds, fitted))
        rows, frame_err = [], {}
        gap_notes: dict[str, int] = {}
        for strategy, seed, n, variant, n_atoms, cost3, sel_seconds, fitted in jobs:
            if builtin:
                (beta, e0), fit_seconds = fitted
                preds = {name: predict_rows(test_rows[name], beta, e0, forces=bool(use_forces and
                                            test_labels[name].forces is not None)) for name in test_sets}
            else:
                gm = fitted.result()
                fit_seconds = gm.meta["fit_seconds"]
                for note in gm.meta.get("notes", []):
                    gap_notes[note] = gap_notes.get(note, 0) + 1
                preds = {name: gm.predict(list(test_sets[name]), forces=use_forces) for name in test_sets}
                log(f"gap_fit {strategy} seed {seed} n {n} {variant}: {fit_seconds:.1f} s")
            for name in test_sets:
                fe = frame_errors(preds[name], test_labels[name], forces=use_forces)
                frame_err[(strategy, seed, n, variant, name)] = fe
                rows.append({"strategy": strategy, "seed": seed, "n": n, "fraction": n / len(vault),
                             "sparse": variant, "n_atoms": n_atoms, "cost3": cost3, "test_set": name,
                             **fe.summary(), **fe.bootstrap(config.n_bootstrap, seed=config.seed),
                             "select_seconds": round(sel_seconds, 3), "fit_seconds": round(fit_seconds, 3)})
        if runs is not None:
            runs.pool.shutdown()
    notes += [f"{note} ({k} fits)" for note, k in gap_notes.items()]
    timings["fits"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    return BenchmarkResult(rows, notes, timings, config, len(vault), model.M, list(test_sets),
                           {(s, seed): list(order) for s, seed, order, _ in designs}, frame_err)


# ---------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------
COLUMNS = ["strategy", "seed", "n", "fraction", "sparse", "n_atoms", "cost3", "test_set", "energy_rmse",
           "energy_rmse_lo", "energy_rmse_hi", "energy_mae", "force_rmse", "force_rmse_lo", "force_rmse_hi",
           "force_mae", "select_seconds", "fit_seconds"]


def results_csv(result: BenchmarkResult) -> str:
    """CSV text of all rows (energies in eV/atom, forces in eV/Å; ``_lo``/``_hi``: 95 % bootstrap interval)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for row in result.rows:
        writer.writerow({k: row[k] for k in COLUMNS})
    return buf.getvalue()


def _select(result: BenchmarkResult, test_set: str, strategy: str, n: int | None, variant: str) -> list:
    return [r for r in result.rows if r["test_set"] == test_set and r["strategy"] == strategy
            and (n is None or r["n"] == n) and r["sparse"] == variant]


def _aggregate(result: BenchmarkResult, test_set: str, strategy: str, n: int, key: str, variant: str = ""):
    """(median, min, max, count) of ``key`` over seeds, or None."""
    vals = [r[key] for r in _select(result, test_set, strategy, n, variant)]
    if not vals:
        return None
    vals = np.array(vals, dtype=float)
    return float(np.median(vals)), float(vals.min()), float(vals.max()), len(vals)


def strategies_run(result: BenchmarkResult) -> list[str]:
    seen = []
    for r in result.rows:
        if r["strategy"] not in seen and r["strategy"] != "full":
            seen.append(r["strategy"])
    return seen


def variants_run(result: BenchmarkResult) -> list[str]:
    return list(dict.fromkeys(r["sparse"] for r in result.rows))


def reference_budget(result: BenchmarkResult, fraction: float = 0.2) -> int:
    """The budget closest to ``fraction`` of the pool (the data-efficiency reference)."""
    budgets = sorted({r["n"] for r in result.rows if r["strategy"] != "full"})
    return min(budgets, key=lambda n: (abs(n / result.n_pool - fraction), n))


def data_efficiency(result: BenchmarkResult, strategy: str, key: str, *, test_set: str = "test", variant: str = "",
                    fraction: float = 0.2, cost: str = "n_atoms") -> tuple[str, float]:
    """DFT cost random needs for its median error at ``fraction`` of the pool, over the cost ``strategy`` needs.

    The strategy's learning curve (median over seeds, error against ``cost``: DFT atoms or
    Σ n³) is interpolated log–log between budgets. Returns ``(relation, ratio)``: ``"="`` when
    the curve crosses the reference error inside the budgets, ``"≥"`` when even the smallest
    budget is better (the ratio is then a lower bound), ``"<"`` when no budget reaches it.
    """
    ref_n = reference_budget(result, fraction)
    ref_err = _aggregate(result, test_set, "random", ref_n, key, variant)
    ref_cost = _aggregate(result, test_set, "random", ref_n, cost, variant)
    if ref_err is None or ref_cost is None or np.isnan(ref_err[0]):
        return "", float("nan")
    budgets = sorted({r["n"] for r in result.rows if r["strategy"] != "full"})
    pts = [(_aggregate(result, test_set, strategy, n, cost, variant), _aggregate(result, test_set, strategy, n, key,
                                                                                 variant)) for n in budgets]
    pts = [(c[0], e[0]) for c, e in pts if c is not None and e is not None]
    if not pts:
        return "", float("nan")
    if pts[0][1] <= ref_err[0]:
        return "≥", ref_cost[0] / pts[0][0]
    for (c0, e0), (c1, e1) in zip(pts, pts[1:]):
        if e1 <= ref_err[0]:
            t = np.log(ref_err[0] / e0) / np.log(e1 / e0) if e1 != e0 else 1.0
            c = float(np.exp(np.log(c0) + t * (np.log(c1) - np.log(c0))))
            return "=", ref_cost[0] / c
    return "<", ref_cost[0] / pts[-1][0]


def _cell(result, test_set, strategy, n, key, variant, fmt, scale) -> str:
    agg = _aggregate(result, test_set, strategy, n, key, variant)
    if agg is None or np.isnan(agg[0]):
        return ""
    if agg[3] > 1:
        return f"{fmt.format(agg[0] * scale)} [{fmt.format(agg[1] * scale)}–{fmt.format(agg[2] * scale)}]"
    (row,) = _select(result, test_set, strategy, n, variant)
    lo, hi = row[f"{key}_lo"], row[f"{key}_hi"]
    ci = "" if np.isnan(lo) else f" ({fmt.format(lo * scale)}–{fmt.format(hi * scale)})"
    return fmt.format(agg[0] * scale) + ci


def _variant_title(variant: str) -> str:
    return {"gap_fit": " — gap_fit, its own sparse points (from the training frames)",
            "design": " — gap_fit, the design's sparse points (exported)", "": ""}[variant]


def summary_markdown(result: BenchmarkResult, *, title: str = "", command: str = "") -> str:
    """Markdown tables per test set and fit variant: test energy RMSE (meV/atom) and force RMSE
    (eV/Å) per budget and strategy, the DFT cost of each design, and the data-efficiency ratios."""
    lines = []
    if title:
        lines += [f"## {title}", ""]
    if command:
        lines += ["Generated by:", "", "```", command, "```", ""]
    cfg = result.config
    fitted_on = "energies + forces" if any(not np.isnan(r["force_rmse"]) for r in result.rows) else "energies"
    if cfg.gap_fit is not None:
        model_text = (f"Designs on the GAP of the gap_fit arguments `{cfg.gap_fit.template_args()}` "
                      f"(M = {result.M} sparse points on the pool)")
    else:
        model_text = (f"Pool {result.n_pool} frames, M = {result.M} sparse points ({cfg.sparse_method}), SOAP cutoff "
                      f"{cfg.soap.cutoff} n_max {cfg.soap.n_max} l_max {cfg.soap.l_max} σ_atom {cfg.soap.atom_sigma}, "
                      f"ζ = {cfg.kernel.zeta}, σ_E = {cfg.noise.energy} eV/atom, σ_F = {cfg.noise.force} eV/Å")
    engine = "the real gap_fit" if cfg.engine == "gap_fit" else "the built-in sparse GPR"
    lines += [f"{model_text}; trained by {engine} on {fitted_on}; pool {result.n_pool} frames. random: median "
              f"[min–max] over {cfg.n_random} seeds; other strategies: value (95 % bootstrap interval over the "
              f"test frames). Wall time {result.timings['total']:.0f} s.", ""]
    strategies = strategies_run(result)
    budgets = sorted({r["n"] for r in result.rows if r["strategy"] != "full"})
    full = [r for r in result.rows if r["strategy"] == "full"]
    metrics = (("energy_rmse", "meV/atom", 1000.0, "{:.2f}"), ("force_rmse", "eV/Å", 1.0, "{:.3f}"))
    for variant in variants_run(result):
        for test_set in result.test_sets:
            for key, unit, scale, fmt in metrics:
                if all(np.isnan(r[key]) for r in result.rows if r["test_set"] == test_set):
                    continue
                lines += [f"**{test_set}: {key.replace('_', ' ')} ({unit}){_variant_title(variant)}**", ""]
                lines.append("| n (% pool) | " + " | ".join(strategies) + " |")
                lines.append("|---|" + "---|" * len(strategies))
                for n in budgets:
                    cells = [_cell(result, test_set, s, n, key, variant, fmt, scale) for s in strategies]
                    lines.append(f"| {n} ({100 * n / result.n_pool:.0f} %) | " + " | ".join(cells) + " |")
                fr = [r for r in full if r["test_set"] == test_set and r["sparse"] == variant]
                if fr:
                    lines.append(f"| full ({fr[0]['n']}) | " + fmt.format(fr[0][key] * scale) + " |"
                                 + " |" * (len(strategies) - 1))
                lines.append("")
            ref_n = reference_budget(result)
            lines += [f"**{test_set}: data-efficiency ratio{_variant_title(variant)}** — DFT atoms random needs for "
                      f"its median error at n = {ref_n} ({100 * ref_n / result.n_pool:.0f} %), over the atoms the "
                      "strategy needs (and the same in Σ n³, the cost of plane-wave DFT) (log–log interpolation; ≥: already better at the smallest budget; <: never "
                      "reached within the budgets)", "",
                      "| | " + " | ".join(strategies) + " |", "|---|" + "---|" * len(strategies)]
            for cost, cost_name in (("n_atoms", "atoms"), ("cost3", "Σ n³")):
                for key, unit, _, _ in metrics:
                    cells = []
                    for s in strategies:
                        rel, ratio = data_efficiency(result, s, key, test_set=test_set, variant=variant, cost=cost)
                        cells.append("" if np.isnan(ratio) else f"{'' if rel == '=' else rel}{ratio:.2f}")
                    lines.append(f"| {key.split('_')[0]} ({cost_name}) | " + " | ".join(cells) + " |")
            lines.append("")
    # DFT cost of each design: atoms, and Σ n³ (the cost of plane-wave DFT grows ~ n³)
    t0, v0 = result.test_sets[0], variants_run(result)[0]
    lines += ["**DFT cost of each design: atoms / Σ n³ in units of 10⁶ (random: median)**", "",
              "| n | " + " | ".join(strategies) + " |", "|---|" + "---|" * len(strategies)]
    for n in budgets:
        cells = []
        for s in strategies:
            a, c = _aggregate(result, t0, s, n, "n_atoms", v0), _aggregate(result, t0, s, n, "cost3", v0)
            cells.append("" if a is None else f"{a[0]:.0f} / {c[0] / 1e6:.2f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("")
    if full:
        lines.append("Full-pool MAE: " + "; ".join(
            f"{r['test_set']}{(' (' + r['sparse'] + ')') if r['sparse'] else ''}: {1000 * r['energy_mae']:.2f} "
            f"meV/atom, {r['force_mae']:.3f} eV/Å" for r in full) + ".")
        lines.append("")
    if result.notes:
        lines += ["Notes: " + "; ".join(result.notes) + ".", ""]
    return "\n".join(lines)


def plot_learning_curves(result: BenchmarkResult, path, *, test_set: str, title: str = "", variant: str | None = None,
                         x: str = "n") -> None:
    """Energy and force RMSE against ``x`` (``n`` frames or ``n_atoms``, the equal-cost view), log–log,
    one line per strategy; random = median with min–max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plots import save_figure

    variant = variants_run(result)[0] if variant is None else variant
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    budgets = sorted({r["n"] for r in result.rows if r["strategy"] != "full"})
    for ax, key, unit, scale in ((axes[0], "energy_rmse", "meV/atom", 1000.0), (axes[1], "force_rmse", "eV/Å", 1.0)):
        for s in strategies_run(result):
            aggs = [(_aggregate(result, test_set, s, n, x, variant), _aggregate(result, test_set, s, n, key, variant))
                    for n in budgets]
            aggs = [(xa[0], a) for xa, a in aggs if a is not None and not np.isnan(a[0])]
            if not aggs:
                continue
            xs = [xv for xv, _ in aggs]
            med = [a[0] * scale for _, a in aggs]
            line, = ax.plot(xs, med, "o-", label=s)
            if aggs[0][1][3] > 1:
                ax.fill_between(xs, [a[1] * scale for _, a in aggs], [a[2] * scale for _, a in aggs],
                                color=line.get_color(), alpha=0.2)
        full = [r for r in result.rows if r["strategy"] == "full" and r["test_set"] == test_set
                and r["sparse"] == variant]
        if full and not np.isnan(full[0][key]):
            ax.axhline(full[0][key] * scale, color="k", ls="--", lw=0.8, label=f"full pool ({full[0]['n']})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training frames n" if x == "n" else "DFT atoms in the training set")
        ax.set_ylabel(f"test {key.replace('_', ' ')} ({unit})")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle((title or test_set) + _variant_title(variant))
    save_figure(fig, path)


def write_outputs(result: BenchmarkResult, directory, *, title: str = "", command: str = "") -> dict:
    """results.csv, learning_curves_<test>.png and summary.md in ``directory``; returns the paths."""
    directory = output_folder(directory, what="benchmark folder")
    paths = {"csv": directory / "results.csv", "summary": directory / "summary.md"}
    atomic_write_text(paths["csv"], results_csv(result))
    for t in result.test_sets:
        for variant in variants_run(result):
            suffix = f"_{variant}" if variant else ""
            for x, stem in (("n", "learning_curves"), ("n_atoms", "cost_curves")):
                p = directory / f"{stem}_{t}{suffix}.png"
                plot_learning_curves(result, p, test_set=t, title=f"{title} — {t}" if title else t, variant=variant,
                                     x=x)
                paths[f"{'png' if x == 'n' else 'cost_png'}_{t}{suffix}"] = p
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
