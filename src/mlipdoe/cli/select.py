"""Commands: generate, select, score, verify, demo."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..exceptions import MlipdoeError
from . import SOAP_OPTS, _print_picks, _progress, _soap, _write_outputs, app, out


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
    from ..generate import generate_strained, write_frames

    try:
        reps = tuple(int(x) for x in supercell.split(","))
    except ValueError:
        raise MlipdoeError(f"--supercell must look like 2,2,2, got {supercell!r}") from None
    base_arg = base if not Path(base).is_file() else str(base)
    frames = generate_strained(base_arg, structure=structure, n_frames=n_frames, max_strain=max_strain,
                               min_strain=min_strain, supercell=reps, rattle=rattle, vacancies=vacancies,
                               method=method, seed=seed)
    write_frames(frames, output)
    out.print(f"wrote {len(frames)} frames of {len(frames[0])} atoms to {output}")


def _split(values: Optional[List[str]]) -> list[str]:
    """Repeatable, comma-separated option values → flat list of tokens."""
    out: list[str] = []
    for v in values or []:
        out.extend(t.strip() for t in str(v).split(",") if t.strip())
    return out


@app.command()
def select(
    pool: List[Path] = typer.Argument(..., help="Candidate configurations: any file(s) ASE reads; all frames used."),
    n: Optional[int] = typer.Option(None, "-n", help="Number of frames to select (count budget)."),
    budget_atoms: Optional[int] = typer.Option(None, "--budget-atoms", help="Budget: total atoms of the new frames."),
    budget_cost: Optional[float] = typer.Option(
        None, "--budget-cost", help="Budget: total DFT cost, cost(s) = n_s^p or info['cost']."),
    cost_power: float = typer.Option(3.0, "--cost-power", help="p in cost(s) = n_s^p."),
    output: Path = typer.Option(Path("train.xyz"), "-o", "--output", help="extxyz file of the selected frames."),
    record: Optional[Path] = typer.Option(Path("design.json"), "--record", help="Design record (JSON) to write."),
    criterion: str = typer.Option("d", help="d, a, i, g, e, maximin, random, fps or cur (all maximised)."),
    optimizer: str = typer.Option("greedy", help="greedy (lazy for d) or exchange (greedy + Fedorov exchange)."),
    restarts: int = typer.Option(0, help="Random restarts of the exchange optimizer."),
    max_iter: int = typer.Option(100, "--max-iter", help="Most swaps per exchange run."),
    target: Optional[Path] = typer.Option(None, "--target", help="Frames where the potential will be used (i, g)."),
    target_observable: str = typer.Option(
        "energy", "--target-observable", help="i criterion: energy (per-atom variance) or forces (mean force variance)."),
    existing: Optional[Path] = typer.Option(None, "--existing", help="Training set already computed (kept, fixed)."),
    include: Optional[List[str]] = typer.Option(
        None, "--include", help="Pool frames forced in: indices and/or config_types, comma-separated, repeatable."),
    exclude: Optional[List[str]] = typer.Option(
        None, "--exclude", help="Pool frames never chosen: indices and/or config_types, comma-separated."),
    observe: str = typer.Option(
        "energy", "--observe",
        help="Observations: energy[,forces][,virials]. Measured best on DFT data: --criterion i --observe "
        "energy,forces (docs/benchmarks.md); d on force rows starves the energies at small budgets."),
    n_sparse: int = typer.Option(100, help="Sparse points per centre species."),
    sparse_method: str = typer.Option("cur", help="Sparse points by cur (leverage scores) or fps."),
    zeta: float = typer.Option(4, help="Kernel power ζ."),
    delta: float = typer.Option(1.0, help="Kernel scale δ."),
    sigma_energy: float = typer.Option(0.001, help="Energy noise σ_E (eV/atom)."),
    sigma_force: float = typer.Option(0.1, "--sigma-force", help="Force noise σ_F (eV/Å)."),
    sigma_virial: float = typer.Option(0.05, "--sigma-virial", help="Virial noise σ_V (eV/atom)."),
    threshold: Optional[float] = typer.Option(None, help="Stop when the best gain falls below this."),
    seed: int = typer.Option(0, help="Random seed (sparse points, random baseline, restarts)."),
    store: Optional[Path] = typer.Option(
        None, "--store", help="Resumable on-disk row store for large pools (energy rows); reused when inputs match."),
    memory_limit: Optional[str] = typer.Option(None, "--memory-limit", help="With --store: peak RSS cap, e.g. 4GB."),
    scheduler: str = typer.Option("serial", help="With --store: serial, local or tcp://host:port (Dask)."),
    sparse_sample: int = typer.Option(
        50_000, help="With --store: environments sampled for the sparse points; 0 = exact choice."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars."),
    soap_cutoff: float = SOAP_OPTS["soap_cutoff"],
    soap_width: float = SOAP_OPTS["soap_width"],
    n_max: int = SOAP_OPTS["n_max"],
    l_max: int = SOAP_OPTS["l_max"],
    atom_sigma: float = SOAP_OPTS["atom_sigma"],
):
    """Select the frames to compute with DFT and write them with a design record."""
    from ..api import select as run_select
    from ..hypers import Noise
    from ..model.kernels import Kernel
    from ..pool import read_pool

    observations = tuple(_split([observe]))
    progress = _progress(quiet)
    paths = [str(p) for p in pool]
    if store is not None:  # a warm store: read the pool through its index (no parsing)
        from ..pool_index import POOL_INDEX, index_pool, read_pool_indexed

        frames = read_pool_indexed(paths, Path(store) / POOL_INDEX, progress=progress)
    else:
        frames = read_pool(paths, progress=progress)
    soap = _soap(soap_cutoff, soap_width, n_max, l_max, atom_sigma)
    kernel = Kernel(zeta=zeta, delta=delta)
    noise = Noise(energy=sigma_energy, force=sigma_force, virial=sigma_virial)
    model = None
    if store is not None:
        if observations != ("energy",):
            raise MlipdoeError("--store holds energy rows only; use --observe energy with --store")
        from ..store import build_model_stored

        model = build_model_stored(
            frames.frames, store=store, soap=soap, kernel=kernel, noise=noise, n_sparse=n_sparse,
            sparse_method=sparse_method, seed=seed, memory_limit=memory_limit, scheduler=scheduler,
            sparse_sample=sparse_sample or None, config_types=frames.config_types,
            pool_sha256=[f.sha256 for f in frames.files], n_atoms=frames.n_atoms, species=frames.species,
            progress=progress,
        )
        index_pool(frames, store)
    result = run_select(
        frames, n=n, budget_atoms=budget_atoms, budget_cost=budget_cost, cost_power=cost_power,
        criterion=criterion, optimizer=optimizer, restarts=restarts, max_iter=max_iter,
        target=str(target) if target else None, target_observable=target_observable,
        existing=str(existing) if existing else None,
        include=_split(include), exclude=_split(exclude), observations=observations,
        soap=soap, kernel=kernel, noise=noise, n_sparse=n_sparse, sparse_method=sparse_method, seed=seed,
        threshold=threshold, model=model, progress=progress,
    )
    _write_outputs(result, output, record)
    _print_picks(result)
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
    out.print(f"wrote {output}" + (f" and {record}" if record else ""))


@app.command()
def score(
    pool: List[Path] = typer.Argument(..., help="The pool file(s) the design refers to."),
    design: Path = typer.Option(..., "--design", help="Design record (JSON) whose fixed + selected frames to score."),
    target: Optional[Path] = typer.Option(None, "--target", help="Target frames for i and g (default: the pool)."),
    existing: Optional[Path] = typer.Option(None, "--existing", help="Training frames outside the pool."),
):
    """Evaluate every criterion on a design's frames (compare designs on equal terms)."""
    from rich.table import Table

    from ..api import score as run_score
    from ..pool import read_pool

    result = run_score(read_pool([str(p) for p in pool]), design=design,
                       target=str(target) if target else None, existing=str(existing) if existing else None)
    table = Table(title=f"{result['n_frames']} frames, {result['n_atoms']} atoms, M = {result['M']}")
    table.add_column("criterion")
    table.add_column("value (maximised)", justify="right")
    for name, value in result["criteria"].items():
        table.add_row(name, f"{value:.10g}")
    out.print(table)
    if "mean_target_variance" in result:
        out.print(f"target variance per atom: mean {result['mean_target_variance']:.4g}, "
                  f"max {result['max_target_variance']:.4g} eV²/atom²")


@app.command()
def verify(
    pool: List[Path] = typer.Argument(..., help="The pool file(s) the design was made on."),
    record: Path = typer.Option(..., "--record", help="Design record to check."),
):
    """Recompute a design's D value from scratch and compare it with the record."""
    from ..api import verify_record
    from ..pool import read_pool

    check = verify_record(record, read_pool([str(p) for p in pool]))
    out.print(f"recorded {check['recorded']:.10g}  recomputed {check['recomputed']:.10g}  "
              f"{'OK' if check['ok'] else 'MISMATCH'}")
    if not check["ok"]:
        raise typer.Exit(1)


@app.command()
def demo(
    output_dir: Path = typer.Option(Path("mlipdoe-demo"), "-o", "--output-dir", help="Folder for the outputs."),
    n_frames: int = typer.Option(300, help="Pool size."),
    n: int = typer.Option(20, "-n", help="Frames to select."),
    n_sparse: int = typer.Option(50, help="Sparse points."),
    seed: int = typer.Option(0, help="Random seed."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars."),
):
    """The built-in example: deformed hcp Zr → D-optimal training set (no DFT, no downloads)."""
    from ..api import select as run_select
    from ..generate import write_frames, zr_example
    from ..pool import read_pool

    output_dir.mkdir(parents=True, exist_ok=True)
    pool_path = output_dir / "pool.xyz"
    write_frames(zr_example(n_frames, seed=seed), pool_path)
    out.print(f"generated {n_frames} deformed hcp Zr frames → {pool_path}")
    pool = read_pool([str(pool_path)])
    progress = _progress(quiet)
    result = run_select(pool, n=n, criterion="d", n_sparse=n_sparse, seed=seed, progress=progress)
    baseline = run_select(pool, n=n, criterion="random", model=result.model, seed=seed)
    _write_outputs(result, output_dir / "train.xyz", output_dir / "design.json")
    _print_picks(result)
    _gain_curve(result, baseline, output_dir / "gain_curve.png")
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


