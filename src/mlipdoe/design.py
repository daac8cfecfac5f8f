"""The design record (``design.json``, spec section 4): build, write, read, verify."""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_output
from .exceptions import InputError

FORMAT = "mlipdoe.design/1"
REQUIRED = (
    "format", "pool", "descriptor", "kernel", "noise", "observations", "sparse_points", "criterion",
    "optimizer", "seed", "budget", "fixed", "selected", "gains", "value", "log_det_K_MM", "timings_s", "versions",
)


def versions() -> dict:
    """Versions of mlipdoe and of the libraries every number depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("mlipdoe", "numpy", "scipy", "ase", "featomic", "metatensor-core"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class DesignRecord:
    """In-memory form of ``design.json``; ``to_dict`` gives exactly the spec layout
    (required fields first, then any extras such as ``jitter`` or ``options``)."""

    pool: list
    descriptor: dict
    kernel: dict
    noise: dict
    observations: list
    sparse_points: list
    criterion: str
    optimizer: str
    seed: int
    budget: dict
    fixed: list
    selected: list
    gains: list
    value: float
    log_det_K_MM: float
    timings_s: dict = field(default_factory=dict)
    versions: dict = field(default_factory=versions)
    extras: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"format": FORMAT}
        for name in REQUIRED[1:]:
            d[name] = getattr(self, name)
        d.update(self.extras)
        return json_ready(d)

    @classmethod
    def from_dict(cls, data: dict) -> "DesignRecord":
        if data.get("format") != FORMAT:
            raise InputError(f"not a design record: format is {data.get('format')!r}, expected {FORMAT!r}")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise InputError(f"design record is missing fields: {', '.join(missing)}")
        kwargs = {k: data[k] for k in REQUIRED[1:]}
        extras = {k: v for k, v in data.items() if k not in REQUIRED}
        return cls(**kwargs, extras=extras)


def json_ready(obj):
    """JSON-ready copy: numpy scalars/arrays to Python, tuples to lists, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`mlipdoe.atomic.atomic_output`)."""
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text)


def write_record(record: DesignRecord, path) -> None:
    """Write ``design.json`` atomically."""
    atomic_write_text(path, json.dumps(record.to_dict(), indent=2) + "\n")


def read_record(path) -> DesignRecord:
    """Read and check a design record; bad files raise :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"design record not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read design record {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"design record {path} is not a JSON object")
    return DesignRecord.from_dict(data)
