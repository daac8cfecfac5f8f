"""Commands: generate, select, score, verify, demo."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..exceptions import InputError, MlipdoeError
from . import (
    _print_picks,
    _progress,
    _write_outputs,
    app,
    out,
    pool_for_record,
    print_notes,
)
from .options import ModelOptions, given_options, model_options, split_list

#: The options of ``select`` used only with --store / --optimizer exchange / --budget-cost.
_STORE_ONLY = ("memory_limit", "scheduler", "sparse_sample")
_EXCHANGE_ONLY = ("restarts", "max_iter")


@app.command()
def generate(
    output: Path = typer.Option(..., "-o", "--output", help="extxyz file to write."),
    base: str = typer.Option("Zr", help="Element symbol (built with ase.build.bulk) or a structure file."),
    structure: str = typer.Option("hcp", help="Crystal structure for ase.build.bulk."),
    n_frames: int = typer.Option(200, "-n", "--n-frames", help="Number of configurations."),
    max_strain: float = typer.Option(0.02, help="Largest |Voigt strain component|."),
    min_strain: float = typer.Option(0.0, help="Smallest largest-|component| (an off-sample shell)."),
    supercell: str = typer.Option("2,2,2", help="Supercell repetition, e.g. 3,3,2."),
    rattle: float = typer.Option(0.0, help="Gaussian rattle of positions (Å)."),
    vacancies: int = typer.Option(0, help="Atoms removed at random per frame."),
    method: str = typer.Option("sobol", help="sobol or lhs."),
    seed: int = typer.Option(0, help="Random seed."),
):
    """Generate candidate configurations: strained (optionally rattled) bulk crystals."""
    from ..atomic import check_output
    from ..generate import generate_strained, write_frames

    check_output(output, what="-o")
    try:
        reps = tuple(int(x) for x in supercell.split(","))
    except ValueError:
        raise MlipdoeError(f"--supercell must look like 2,2,2, got {supercell!r}") from None
    frames = generate_strained(base, structure=structure, n_frames=n_frames, max_strain=max_strain,
                               min_strain=min_strain, supercell=reps, rattle=rattle, vacancies=vacancies,
                               method=method.strip().lower(), seed=seed)
    write_frames(frames, output, what="-o")
    out.print(f"wrote {len(frames)} frames of {len(frames[0])} atoms to {output}")


def _only_with(given: list[str], what: str) -> None:
    if given:
        raise InputError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} only used with {what}; "
                         f"drop {'it' if len(given) == 1 else 'them'}")


def _check_select_options(ctx: typer.Context, model: ModelOptions, *, criterion: str, optimizer: str,
                          store, budget_cost, existing) -> None:
    """Refuse, in one line, an option the chosen criterion, optimizer or budget would ignore."""
    from ..criteria import CRITERIA, OPTIONS

    if criterion not in CRITERIA:
        raise InputError(f"unknown criterion {criterion!r} (available: {', '.join(CRITERIA)})")
    accepts = OPTIONS[criterion]
    if "target" not in accepts and given_options(ctx, ["target"]):
        users = [c for c in CRITERIA if "target" in OPTIONS[c]]
        raise InputError(f"--target is not used by criterion {criterion} (only by {', '.join(users)}); drop it")
    if "force_moment" not in accepts and given_options(ctx, ["target_observable"]):
        users = [c for c in CRITERIA if "force_moment" in OPTIONS[c]]
        raise InputError(f"--target-observable is not used by criterion {criterion} (only by {', '.join(users)}); "
                         f"drop it")
    if "existing" not in accepts and existing is not None:
        raise InputError(f"--existing is not used by criterion {criterion}; drop it")
    if optimizer != "exchange":
        _only_with(given_options(ctx, _EXCHANGE_ONLY), "--optimizer exchange")
    if budget_cost is None:
        _only_with(given_options(ctx, ["cost_power"]), "--budget-cost")
    if store is None:
        _only_with(given_options(ctx, _STORE_ONLY), "--store")
    observations = model.observations
    if "forces" not in observations:
        model.refuse(["--sigma-force"], "without forces in --observe")
    if "virials" not in observations:
        model.refuse(["--sigma-virial"], "without virials in --observe")


@app.command()
@model_options("soap", "kernel", "sparse", "noise", "gap", "linear", "observe")
def select(
    ctx: typer.Context,
    pool: List[Path] = typer.Argument(..., help="Candidate configurations: any file(s) ASE reads; all frames used."),
    n: Optional[int] = typer.Option(None, "-n", "--n-frames", help="Number of frames to select (count budget)."),
    budget_atoms: Optional[int] = typer.Option(None, "--budget-atoms", help="Budget: total atoms of the new frames."),
    budget_cost: Optional[float] = typer.Option(
        None, "--budget-cost", help="Budget: total DFT cost, cost(s) = n_s^p or info['cost']."),
    cost_power: float = typer.Option(3.0, "--cost-power", help="With --budget-cost: p in cost(s) = n_s^p."),
    output: Path = typer.Option(Path("train.xyz"), "-o", "--output", help="extxyz file of the selected frames."),
    record: Path = typer.Option(Path("design.json"), "--record", help="Design record (JSON) to write."),
    criterion: Optional[str] = typer.Option(
        None, help="d, a, i, g, e, maximin, random, fps, cur or quests (all maximised; any case, e.g. D). Default, "
        "with no --observe either: i on energy + force rows, the measured best with gap_fit training "
        "(docs/benchmarks.md: test energy error 2-4x below random's median at 5-20 % of the pool on Cu, Ni, Mo, "
        "Li and Zr, ties to small wins on forces); energy rows for --features-key and --store. With "
        "--criterion alone: energy rows."),
    optimizer: str = typer.Option("greedy", help="greedy (lazy for d) or exchange (greedy + Fedorov exchange)."),
    restarts: int = typer.Option(0, help="With --optimizer exchange: random restarts."),
    max_iter: int = typer.Option(100, "--max-iter", help="With --optimizer exchange: most swaps per run."),
    target: Optional[Path] = typer.Option(
        None, "--target", help="Frames where the potential will be used (criteria i and g; default the pool)."),
    target_observable: str = typer.Option(
        "energy", "--target-observable", help="i criterion: energy (per-atom variance), forces (mean force-component "
        "variance) or energy,forces (their sum in units of σ_E² and σ_F², as gap_fit weighs them)."),
    existing: Optional[Path] = typer.Option(None, "--existing", help="Training set already computed (kept, fixed)."),
    include: Optional[List[str]] = typer.Option(
        None, "--include", help="Pool frames forced in: indices and/or config_types, comma-separated, repeatable."),
    exclude: Optional[List[str]] = typer.Option(
        None, "--exclude", help="Pool frames never chosen: indices and/or config_types, comma-separated."),
    threshold: Optional[float] = typer.Option(None, help="Stop when the best gain falls below this."),
    seed: int = typer.Option(0, help="Random seed (sparse points, random baseline, restarts)."),
    store: Optional[Path] = typer.Option(
        None, "--store", help="Resumable on-disk row store for large pools (energy rows); reused when inputs match."),
    memory_limit: Optional[str] = typer.Option(None, "--memory-limit", help="With --store: peak RSS cap, e.g. 4GB."),
    scheduler: str = typer.Option("serial", help="With --store: serial, local, processes or tcp://host:port (Dask)."),
    sparse_sample: int = typer.Option(
        50_000, help="With --store: environments sampled for the sparse points; 0 = exact choice."),
    export: Optional[Path] = typer.Option(
        None, "--export", help="With --gap-fit-args: folder for gap_fit's inputs (sparse-point files and "
        "gap_fit_args.txt; created, its parent must exist)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars."),
    model: ModelOptions = None,
):
    """Select the frames to compute with DFT and write them with a design record."""
    from ..api import design, make_budget
    from ..atomic import check_output
    from ..hypers import DesignConfig

    default_note = None
    if criterion is None:
        criterion = "i"
        if "--observe" not in model.given and model.values.get("features_key") is None and store is None:
            model.values["observe"] = "energy,forces"
            default_note = "default design: i-optimal on energy + force rows (docs/benchmarks.md)"
        elif store is not None and "--observe" not in model.given:
            default_note = ("default criterion: i, on energy rows with --store (force factors of a large pool "
                            "take ~145 kB per frame: ask for them with --observe energy,forces)")
        else:
            default_note = "default criterion: i"
    _check_select_options(ctx, model, criterion=criterion.strip().lower(), optimizer=optimizer.strip().lower(),
                          store=store, budget_cost=budget_cost, existing=existing)
    config = DesignConfig(
        model=model.config(seed), criterion=criterion, optimizer=optimizer, restarts=restarts, max_iter=max_iter,
        threshold=threshold, target_observable=target_observable,
        budget=make_budget(n=n, budget_atoms=budget_atoms, budget_cost=budget_cost, cost_power=cost_power),
    ).validate()
    check_output(output, what="-o")
    check_output(record, what="--record")
    if export is not None:
        if config.model.gap is None:
            raise InputError("--export writes gap_fit's inputs for a design on --gap-fit-args; give them "
                             "(a featomic design is not the model gap_fit trains)")
        check_output(export, what="--export", folder=True)
    progress = _progress(quiet)
    frames, built = _pool_and_model([str(p) for p in pool], config, store=store, memory_limit=memory_limit,
                                    scheduler=scheduler, sparse_sample=sparse_sample, progress=progress)
    result = design(frames, config, target=str(target) if target else None,
                    existing=str(existing) if existing else None, include=split_list(include),
                    exclude=split_list(exclude), model=built, progress=progress)
    _write_outputs(result, output, record)
    if export is not None:
        from ..atomic import atomic_folder
        from ..export import ARGS_FILE, write_gap_fit_inputs

        with atomic_folder(export, what="--export") as tmp:
            write_gap_fit_inputs(result.model, tmp, referenced_from=Path(export).resolve())
    _print_picks(result)
    print_notes(result.record)
    if default_note is not None:
        out.print(f"note: {default_note}")
    details = result.extra
    if details.get("lazy"):
        out.print(f"lazy greedy: {details['n_gain_evaluations']} gain evaluations "
                  f"({100 * details['saved_fraction']:.1f}% fewer than plain greedy)")
    if "exchange" in details:
        ex = details["exchange"]
        out.print(f"exchange: greedy {ex['greedy_value']:.6g} → {ex['value']:.6g} in {ex['n_swaps']} swaps "
                  f"({ex['restarts']} restarts)")
    if result.record.budget["kind"] != "count":
        b = result.record.budget
        out.print(f"budget ({b['kind']}): spent {b['spent']:g} of {b['value']:g}")
    out.print(f"wrote {output} and {record}")
    if export is not None:
        out.print(f"wrote gap_fit's inputs to {export}/: train with "
                  f"gap_fit $(cat {export}/{ARGS_FILE}) at_file=<labelled {output}> gp_file=gp.xml")


def _pool_and_model(paths, config, *, store, memory_limit, scheduler, sparse_sample, progress):
    """The pool, and with ``--store`` its model from the resumable row store (else None: built in memory)."""
    from ..atomic import check_output
    from ..pool import read_pool

    if store is None:
        return read_pool(paths, progress=progress), None
    from ..pool_index import POOL_INDEX, index_pool, read_pool_indexed
    from ..store import build_model_stored

    check_output(store, what="--store", folder=True)
    if config.model.gap is not None or config.model.linear is not None:
        raise InputError("--store holds featomic rows; a design on --gap-fit-args, --model snap or --features-key "
                         "is computed in memory: drop --store")
    if "virials" in config.model.observations:
        raise InputError("--store holds energy and force rows; drop virials from --observe with --store")
    frames = read_pool_indexed(paths, Path(store) / POOL_INDEX, progress=progress)  # warm: no parsing
    m = config.model
    built = build_model_stored(
        frames.frames, store=store, soap=m.soap, kernel=m.kernel, noise=m.noise, observations=m.observations,
        n_sparse=m.n_sparse,
        sparse_method=m.sparse_method, seed=m.seed, memory_limit=memory_limit, scheduler=scheduler,
        sparse_sample=sparse_sample or None, config_types=frames.config_types,
        pool_sha256=[f.sha256 for f in frames.files], n_atoms=frames.n_atoms, species=frames.species,
        progress=progress,
    )
    index_pool(frames, store)
    return frames, built


@app.command()
def score(
    record: Path = typer.Option(..., "--record", help="Design record (JSON) whose fixed + selected frames to score."),
    pool: Optional[List[Path]] = typer.Option(
        None, "--pool", help="The record's pool file(s) (default: the files the record names, if unchanged)."),
    target: Optional[Path] = typer.Option(None, "--target", help="Target frames for i and g (default: the pool)."),
    existing: Optional[Path] = typer.Option(None, "--existing", help="Training frames outside the pool."),
):
    """Evaluate every criterion on a design's frames (compare designs on equal terms)."""
    from rich.table import Table

    from ..api import score as run_score
    from ..design import read_record

    rec = read_record(record)
    result = run_score(pool_for_record(rec, pool), design=rec,
                       target=str(target) if target else None, existing=str(existing) if existing else None)
    table = Table(title=f"{result['n_frames']} frames, {result['n_atoms']} atoms, M = {result['M']}")
    table.add_column("criterion")
    table.add_column("value (maximised)", justify="right")
    for name, value in result["criteria"].items():
        table.add_row(name, f"{value:.10g}")
    out.print(table)
    print_notes(rec)
    if "mean_target_variance" in result:
        out.print(f"target variance per atom: mean {result['mean_target_variance']:.4g}, "
                  f"max {result['max_target_variance']:.4g} eV²/atom²")


@app.command()
def verify(
    record: Path = typer.Option(..., "--record", help="Design record to check."),
    pool: Optional[List[Path]] = typer.Option(
        None, "--pool", help="The record's pool file(s) (default: the files the record names, if unchanged)."),
):
    """Recompute a design's criterion value from scratch and compare it with the record (exit 1 on a mismatch)."""
    from ..api import verify_record
    from ..design import read_record

    rec = read_record(record)
    check = verify_record(rec, pool_for_record(rec, pool))
    out.print(f"recorded {check['recorded']:.10g}  recomputed {check['recomputed']:.10g}  "
              f"{'OK' if check['ok'] else 'MISMATCH'}")
    if not check["ok"]:
        raise typer.Exit(1)


@app.command()
def demo(
    output_dir: Path = typer.Option(Path("mlipdoe-demo"), "-o", "--output-dir",
                                    help="Folder for the outputs (created; its parent must exist)."),
    pool_size: int = typer.Option(300, "--pool-size", help="Frames in the generated pool."),
    n: int = typer.Option(20, "-n", "--n-frames", help="Frames to select."),
    n_sparse: int = typer.Option(50, "--n-sparse", help="Sparse points."),
    seed: int = typer.Option(0, help="Random seed."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars."),
):
    """The built-in example: deformed hcp Zr → D-optimal training set (no DFT, no downloads)."""
    from ..api import select as run_select
    from ..api import selected_frames
    from ..atomic import atomic_folder
    from ..design import write_record
    from ..generate import write_frames, zr_example
    from ..pool import read_pool

    if not 0 < n <= pool_size:
        raise InputError(f"-n must be between 1 and --pool-size ({pool_size}), got {n}")
    with atomic_folder(output_dir, what="-o") as tmp:
        pool_path = tmp / "pool.xyz"
        write_frames(zr_example(pool_size, seed=seed), pool_path)
        pool = read_pool([str(pool_path)])
        progress = _progress(quiet)
        result = run_select(pool, n=n, criterion="d", n_sparse=n_sparse, seed=seed, progress=progress)
        baseline = run_select(pool, n=n, criterion="random", model=result.model, seed=seed)
        result.record.pool[0]["path"] = str(output_dir / "pool.xyz")  # where the same bytes will be
        write_frames(selected_frames(result), tmp / "train.xyz")
        write_record(result.record, tmp / "design.json")
        _gain_curve(result, baseline, tmp / "gain_curve.png")
    out.print(f"generated {pool_size} deformed hcp Zr frames → {output_dir / 'pool.xyz'}")
    _print_picks(result)
    print_notes(result.record)
    out.print(f"random {n} frames (same pool, seed {seed}): d = {baseline.value:.4f} vs D-optimal {result.value:.4f}")
    out.print(f"outputs in {output_dir}/: pool.xyz, train.xyz, design.json, gain_curve.png")


def _gain_curve(result, baseline, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plots import save_figure

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(range(1, len(result.values) + 1), result.values, "o-", label="D-optimal greedy")
    ax.plot(range(1, len(baseline.values) + 1), baseline.values, "s--", label="random")
    ax.set_xlabel("frames selected")
    ax.set_ylabel("log det F(S) − log det K_MM")
    ax.legend()
    save_figure(fig, path)


