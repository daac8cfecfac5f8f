"""Command: ``mlipdoe store build`` (resumable on-disk rows for large pools)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

from . import SOAP_OPTS, _progress, _soap, app, out

store_app = typer.Typer(no_args_is_help=True, help="Resumable on-disk store of the rows of large pools.")
app.add_typer(store_app, name="store")


@store_app.command("build")
def build(
    pool: List[Path] = typer.Argument(..., help="Candidate configurations: any file(s) ASE reads."),
    store: Path = typer.Option(..., "--store", help="Store directory (created, or resumed if it matches)."),
    memory_limit: Optional[str] = typer.Option(None, "--memory-limit", help="Peak RSS cap, e.g. 4GB."),
    scheduler: str = typer.Option("serial", help="serial, local (Dask threads) or tcp://host:port (Dask cluster)."),
    chunk_size: Optional[int] = typer.Option(None, help="Frames per chunk (default: ≤100, fitted to the limit)."),
    sparse_sample: Optional[int] = typer.Option(50_000, help="Environments sampled for the sparse points; 0 = exact."),
    dtype: str = typer.Option("float64", help="Row precision: float64 or float32."),
    n_sparse: int = typer.Option(100, help="Sparse points per centre species."),
    sparse_method: str = typer.Option("cur", help="Sparse points by cur (leverage scores) or fps."),
    zeta: float = typer.Option(4, help="Kernel power ζ."),
    delta: float = typer.Option(1.0, help="Kernel scale δ."),
    seed: int = typer.Option(0, help="Random seed (sparse points, sample)."),
    blas_threads: Optional[int] = typer.Option(
        None, "--blas-threads", help="Limit BLAS threads (1 is much faster on a busy, shared machine)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars."),
    soap_cutoff: float = SOAP_OPTS["soap_cutoff"],
    soap_width: float = SOAP_OPTS["soap_width"],
    n_max: int = SOAP_OPTS["n_max"],
    l_max: int = SOAP_OPTS["l_max"],
    atom_sigma: float = SOAP_OPTS["atom_sigma"],
):
    """Build (or resume) the row store of a pool; a second run with the same inputs only loads it."""
    from ..model.kernels import Kernel
    from ..pool_index import POOL_INDEX, index_pool, read_pool_indexed
    from ..store import build_model_stored

    progress = _progress(quiet)
    frames = read_pool_indexed([str(p) for p in pool], Path(store) / POOL_INDEX, progress=progress)
    with _blas_limit(blas_threads):
        model = build_model_stored(
            frames.frames, store=store, soap=_soap(soap_cutoff, soap_width, n_max, l_max, atom_sigma),
            kernel=Kernel(zeta=zeta, delta=delta), n_sparse=n_sparse, sparse_method=sparse_method, seed=seed,
            chunk_size=chunk_size, memory_limit=memory_limit, scheduler=scheduler,
            sparse_sample=sparse_sample or None, dtype=dtype, config_types=frames.config_types,
            pool_sha256=[f.sha256 for f in frames.files], n_atoms=frames.n_atoms, species=frames.species,
            progress=progress,
        )
    index_pool(frames, store)
    info = model.store_info
    out.print(f"store {info['path']}: N = {model.n_frames} frames, M = {model.M}, {info['n_chunks']} chunks of "
              f"{info['chunk_size']} ({info['chunks_computed']} computed now), {info['dtype']}")
    out.print("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in model.timings.items()))
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

