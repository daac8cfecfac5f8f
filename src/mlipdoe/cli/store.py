"""Command: ``mlipdoe store build`` (resumable on-disk rows for large pools)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

from . import _progress, app, out
from ..exceptions import InputError
from .options import ModelOptions, given_options, model_options

store_app = typer.Typer(rich_markup_mode=None, help="Resumable on-disk store of the rows of large pools.")
app.add_typer(store_app, name="store")


@store_app.command("build")
@model_options("soap", "kernel", "sparse", "noise", "observe")
def build(
    ctx: typer.Context,
    pool: List[Path] = typer.Argument(..., help="Candidate configurations: any file(s) ASE reads."),
    store: Path = typer.Option(..., "--store", help="Store folder (created, or resumed if it matches)."),
    memory_limit: Optional[str] = typer.Option(None, "--memory-limit", help="Peak RSS cap, e.g. 4GB."),
    scheduler: str = typer.Option("serial", help="serial, local (Dask threads), processes (one Dask worker process per core) or tcp://host:port (Dask cluster)."),
    chunk_size: Optional[int] = typer.Option(None, help="Frames per chunk (default: ≤100, fitted to the limit)."),
    sparse_sample: int = typer.Option(50_000, help="Environments sampled for the sparse points; 0 = exact."),
    dtype: str = typer.Option("float64", help="Row precision: float64 or float32."),
    force_information: float = typer.Option(
        0.999, "--force-information", help="With --observe energy,forces: share of each frame's force information "
        "its stored factor keeps, at --sigma-force and above (1 = no truncation)."),
    seed: int = typer.Option(0, help="Random seed (sparse points, sample)."),
    blas_threads: Optional[int] = typer.Option(
        None, "--blas-threads", help="Limit BLAS threads (1 is much faster on a busy, shared machine)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars."),
    model: ModelOptions = None,
):
    """Build (or resume) the row store of a pool; a second run with the same inputs only loads it."""
    from ..atomic import check_output
    from ..pool_index import POOL_INDEX, index_pool, read_pool_indexed
    from ..store import build_model_stored

    check_output(store, what="--store", folder=True)
    model.refuse(["--sigma-energy", "--sigma-virial"], "by store build (the store keeps unscaled rows)")
    if "forces" not in model.observations:
        model.refuse(["--sigma-force"], "without forces in --observe")
        if given_options(ctx, ["force_information"]):
            raise InputError("--force-information is not used without forces in --observe; drop it")
    progress = _progress(quiet)
    frames = read_pool_indexed([str(p) for p in pool], Path(store) / POOL_INDEX, progress=progress)
    with _blas_limit(blas_threads):
        built = build_model_stored(
            frames.frames, store=store, soap=model.soap, kernel=model.kernel, n_sparse=model.n_sparse,
            noise=model.noise, observations=model.observations, force_information=force_information,
            sparse_method=model.sparse_method, seed=seed,
            chunk_size=chunk_size, memory_limit=memory_limit, scheduler=scheduler,
            sparse_sample=sparse_sample or None, dtype=dtype, config_types=frames.config_types,
            pool_sha256=[f.sha256 for f in frames.files], n_atoms=frames.n_atoms, species=frames.species,
            progress=progress,
        )
    index_pool(frames, store)
    info = built.store_info
    out.print(f"store {info['path']}: N = {built.n_frames} frames, M = {built.M}, {info['n_chunks']} chunks of "
              f"{info['chunk_size']} ({info['chunks_computed']} computed now), {info['dtype']}")
    if "force_rank_mean" in info:
        out.print(f"force factors: mean rank {info['force_rank_mean']:.1f} of {info['force_rows_mean']:.1f} rows, "
                  f"worst frame keeps {info['force_retained_min']:.5f} of its force information at "
                  f"σ_F = {info['force_sigma']:g}; {info['factor_bytes'] / built.n_frames / 1e3:.1f} kB per frame")
    out.print("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in built.timings.items()))
    out.print(f"peak RSS {info['peak_rss_bytes'] / 1e9:.2f} GB"
              + (f" (limit {info['memory_limit_bytes'] / 1e9:.2f} GB)" if info["memory_limit_bytes"] else ""))


@contextmanager
def _blas_limit(threads):
    if not threads:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        from ..exceptions import ConfigurationError

        raise ConfigurationError("--blas-threads needs threadpoolctl: pip install threadpoolctl") from None
    with threadpool_limits(limits=int(threads), user_api="blas"):
        yield

