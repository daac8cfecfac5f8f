"""Commands: generate, select, verify, demo."""

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


@app.command()
def select(
    pool: List[Path] = typer.Argument(..., help="Candidate configurations: any file(s) ASE reads; all frames used."),
    n: int = typer.Option(..., "-n", help="Number of frames to select."),
    output: Path = typer.Option(Path("train.xyz"), "-o", "--output", help="extxyz file of the selected frames."),
    record: Optional[Path] = typer.Option(Path("design.json"), "--record", help="Design record (JSON) to write."),
    criterion: str = typer.Option("d", help="d (D-optimal) or random."),
    n_sparse: int = typer.Option(100, help="Sparse points per centre species."),
    sparse_method: str = typer.Option("cur", help="Sparse points by cur (leverage scores) or fps."),
    zeta: float = typer.Option(4, help="Kernel power ζ."),
    delta: float = typer.Option(1.0, help="Kernel scale δ."),
    sigma_energy: float = typer.Option(0.001, help="Energy noise σ_E (eV/atom)."),
    threshold: Optional[float] = typer.Option(None, help="Stop when the best gain falls below this."),
    seed: int = typer.Option(0, help="Random seed (sparse points, random baseline)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars."),
    soap_cutoff: float = SOAP_OPTS["soap_cutoff"],
    soap_width: float = SOAP_OPTS["soap_width"],
    n_max: int = SOAP_OPTS["n_max"],
    l_max: int = SOAP_OPTS["l_max"],
    atom_sigma: float = SOAP_OPTS["atom_sigma"],
):
    """Select the frames to compute with DFT and write them with a design record."""
    from ..api import select as run_select
    from ..information import Noise
    from ..kernels import Kernel
    from ..pool import read_pool

    frames = read_pool([str(p) for p in pool])
    result = run_select(
        frames, n=n, criterion=criterion, soap=_soap(soap_cutoff, soap_width, n_max, l_max, atom_sigma),
        kernel=Kernel(zeta=zeta, delta=delta), noise=Noise(energy=sigma_energy), n_sparse=n_sparse,
        sparse_method=sparse_method, seed=seed, threshold=threshold, progress=_progress(quiet),
    )
    _write_outputs(result, output, record)
    _print_picks(result)
    out.print(f"wrote {output}" + (f" and {record}" if record else ""))


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


