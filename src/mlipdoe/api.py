"""The notebook-sized public API: pool → model → selection → record."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms

from .criteria import make_criterion
from .descriptors import SOAP
from .design import DesignRecord, read_record
from .exceptions import ConfigurationError, InputError
from .information import InformationModel, Noise, build_model
from .kernels import Kernel
from .optimizers import greedy
from .pool import Pool, pool_from_frames, read_pool
from .progress import NULL_PROGRESS, Progress


def as_pool(pool) -> Pool:
    """A :class:`Pool` from a Pool, a list of Atoms, or one or several file paths."""
    if isinstance(pool, Pool):
        return pool
    if isinstance(pool, (str, Path)):
        return read_pool([pool])
    if isinstance(pool, Sequence) and pool and all(isinstance(a, Atoms) for a in pool):
        return pool_from_frames(list(pool))
    if isinstance(pool, Sequence) and pool and all(isinstance(p, (str, Path)) for p in pool):
        return read_pool(list(pool))
    raise InputError("pool must be a Pool, a list of ase.Atoms or file path(s)")


def build_information_model(pool, *, soap: SOAP = SOAP(), kernel: Kernel = Kernel(), noise: Noise = Noise(),
                            observations: Sequence[str] = ("energy",), n_sparse=100, sparse_method: str = "cur",
                            seed: int = 0, chunk_size: int = 100, progress: Progress = NULL_PROGRESS,
                            sparse_locations=None) -> InformationModel:
    """:func:`mlipdoe.information.build_model` on a pool (see there)."""
    pool = as_pool(pool)
    return build_model(
        pool.frames, soap=soap, kernel=kernel, noise=noise, observations=observations, n_sparse=n_sparse,
        sparse_method=sparse_method, seed=seed, chunk_size=chunk_size, config_types=pool.config_types,
        sparse_locations=sparse_locations, progress=progress,
    )


@dataclass
class SelectionResult:
    """What :func:`select` returns.

    Attributes
    ----------
    selected : list of int
        Pool indices in selection order.
    gains : list of float
        Realised criterion increment of each pick.
    value : float
        Criterion value of fixed + selected frames.
    values : list of float
        Value after each pick (the design curve).
    """

    selected: list[int]
    gains: list[float]
    value: float
    values: list[float]
    record: DesignRecord
    model: InformationModel
    pool: Pool
    stopped_by: str = "n"
    extra: dict = field(default_factory=dict)


def select(pool, *, n: int, criterion: str = "d", soap: SOAP = SOAP(), kernel: Kernel = Kernel(),
           noise: Noise = Noise(), n_sparse=100, sparse_method: str = "cur", seed: int = 0,
           threshold: float | None = None, fixed: Sequence[int] = (), model: InformationModel | None = None,
           chunk_size: int = 100, progress: Progress = NULL_PROGRESS) -> SelectionResult:
    """Choose ``n`` frames of ``pool`` that maximise ``criterion``.

    Parameters
    ----------
    pool : Pool, list of ase.Atoms, path or list of paths
    n : int
        Number of frames to pick (besides ``fixed``).
    criterion : str
        ``"d"`` (D-optimal) or ``"random"``.
    threshold : float, optional
        Stop early when the best gain falls below it.
    fixed : sequence of int
        Pool frames already in the training set: they enter F(S) first.
    model : InformationModel, optional
        Reuse a model built by :func:`build_information_model` on the same pool.
    """
    pool = as_pool(pool)
    if not isinstance(n, (int, np.integer)) or n <= 0:
        raise InputError(f"n must be a positive number of frames, got {n}")
    fixed = [int(f) for f in fixed]
    bad = [f for f in fixed if not 0 <= f < len(pool)]
    if bad:
        raise InputError(f"fixed frame index {bad[0]} is outside the pool ({len(pool)} frames)")
    available = np.ones(len(pool), dtype=bool)
    available[fixed] = False
    if n > int(available.sum()):
        raise InputError(f"n = {n} exceeds the {int(available.sum())} frames available in the pool")
    crit = make_criterion(criterion)
    if model is None:
        model = build_information_model(pool, soap=soap, kernel=kernel, noise=noise, n_sparse=n_sparse,
                                        sparse_method=sparse_method, seed=seed, chunk_size=chunk_size,
                                        progress=progress)
    t0 = time.perf_counter()
    crit.initialize(model, fixed=fixed, seed=seed)
    run = greedy(crit, int(n), available=available, threshold=threshold, progress=progress)
    timings = dict(model.timings, selection=time.perf_counter() - t0)
    record = DesignRecord(
        pool=[f.to_dict() for f in pool.files],
        descriptor=model.soap.to_dict(),
        kernel=model.kernel.to_dict(),
        noise=model.noise.to_dict(),
        observations=list(model.observations),
        sparse_points=model.sparse.location_list(),
        criterion=criterion,
        optimizer="greedy",
        seed=int(seed),
        budget={"kind": "count", "value": int(n)},
        fixed=fixed,
        selected=run.selected,
        gains=run.gains,
        value=float(crit.value()),
        log_det_K_MM=model.log_det_K_MM,
        timings_s={k: round(v, 6) for k, v in timings.items()},
        extras={
            "sparse_method": model.sparse_method,
            "n_sparse": n_sparse if isinstance(n_sparse, int) else dict(n_sparse),
            "jitter": model.jitter,
            "sparse_points_dropped": model.sparse.dropped,
            "threshold": threshold,
            "stopped_by": run.stopped_by,
            "n_gain_evaluations": run.n_evaluations,
        },
    )
    return SelectionResult(run.selected, run.gains, float(crit.value()), run.values, record, model, pool,
                           run.stopped_by)


def model_from_record(record: DesignRecord | str | Path, pool, *, progress: Progress = NULL_PROGRESS) -> InformationModel:
    """Rebuild the information model a record was computed on (same sparse points)."""
    if not isinstance(record, DesignRecord):
        record = read_record(record)
    pool = as_pool(pool)
    check_pool_matches(record, pool)
    return build_information_model(
        pool, soap=SOAP.from_dict(record.descriptor), kernel=Kernel.from_dict(record.kernel),
        noise=Noise.from_dict(record.noise), observations=record.observations,
        sparse_locations=record.sparse_points, progress=progress,
    )


def check_pool_matches(record: DesignRecord, pool: Pool) -> None:
    """Refuse a pool whose files differ from the record's (by sha256 and frame count)."""
    theirs = [(p.get("n_frames"), p.get("sha256")) for p in record.pool]
    ours = [(f.n_frames, f.sha256) for f in pool.files]
    if theirs != ours:
        raise InputError("the pool files do not match the design record (different sha256 or frame counts)")


def verify_record(record, pool, *, rtol: float = 1e-6) -> dict:
    """Recompute log det F̃ of fixed + selected from scratch and compare with the record.

    Only meaningful for criteria whose recorded value is the `d` value (``d``,
    ``random``). Returns ``{"recorded", "recomputed", "ok"}``.
    """
    if not isinstance(record, DesignRecord):
        record = read_record(record)
    model = model_from_record(record, pool)
    if record.criterion not in ("d", "random"):
        raise ConfigurationError(f"verify recomputes the d value; criterion {record.criterion!r} is not supported")
    value = model.d_value(list(record.fixed) + list(record.selected))
    ok = bool(np.isclose(value, record.value, rtol=rtol, atol=1e-9))
    return {"recorded": record.value, "recomputed": value, "ok": ok}


def selected_frames(result: SelectionResult) -> list[Atoms]:
    """Copies of the selected frames with ``mlipdoe_rank`` (1-based), ``mlipdoe_gain``
    and ``pool_index`` in ``info``."""
    out = []
    for rank, (index, gain) in enumerate(zip(result.selected, result.gains), start=1):
        atoms = result.pool.frames[index].copy()
        atoms.calc = None
        atoms.info["mlipdoe_rank"] = rank
        atoms.info["mlipdoe_gain"] = float(gain)
        atoms.info["pool_index"] = int(index)
        out.append(atoms)
    return out
