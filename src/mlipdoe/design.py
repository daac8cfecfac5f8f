"""The design record (``design.json``, docs/information-model.md section 4): build, write, read.

Its layout is fixed by ``mlipdoe/schemas/design-record.schema.json`` (JSON Schema draft
2020-12); :func:`read_record` and :func:`write_record` validate against it and refuse an
invalid record with one line naming the field.

Format versions: ``mlipdoe.design/2`` adds ``notes`` (what the tool changed or ignored);
``mlipdoe.design/3`` adds gap_fit models (``descriptor = {"backend": "quippy", "gap_fit": …}``,
``kernel = {"type": "gap_fit"}``, sparse points as ``[descriptor, frame, instance]``).
Records of format ``mlipdoe.design/1`` are read with ``notes = []``; other formats are refused.
"""

from __future__ import annotations

import json
import math
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import schemas
from .atomic import atomic_output
from .exceptions import InputError

FORMAT_NAME = "mlipdoe.design"
FORMAT_VERSION = 3
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
READABLE_VERSIONS = (1, 2, 3)
REQUIRED = (
    "format", "pool", "descriptor", "kernel", "noise", "observations", "sparse_points", "criterion",
    "optimizer", "seed", "budget", "fixed", "selected", "gains", "value", "log_det_K_MM", "timings_s", "versions",
    "notes",
)
_FORMAT_RE = re.compile(rf"^{re.escape(FORMAT_NAME)}/([0-9]+)$")


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
    """In-memory form of ``design.json``; ``to_dict`` gives exactly the documented layout
    (required fields first, then any extras such as ``jitter`` or ``optimizer_details``).

    ``notes`` holds one sentence for each thing the tool changed or ignored while making
    the design (sparse points dropped as duplicates, environments sampled for the sparse
    points, ...), so that nothing is changed silently.
    """

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
    notes: list = field(default_factory=list)
    extras: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"format": FORMAT}
        for name in REQUIRED[1:]:
            d[name] = getattr(self, name)
        d.update(self.extras)
        return json_ready(d)

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "design record") -> DesignRecord:
        """Check ``data`` (format version, then the schema) and build the record.

        A ``mlipdoe.design/1`` record is upgraded (``notes = []``); any other format, a
        newer one included, raises :class:`InputError` naming both versions. ``source``
        starts the error message (e.g. the file name).
        """
        data = upgrade(data, source=source)
        schemas.check(data, "design-record", source)
        kwargs = {k: data[k] for k in REQUIRED[1:]}
        extras = {k: v for k, v in data.items() if k not in REQUIRED}
        return cls(**kwargs, extras=extras)


def format_version(data) -> int | None:
    """The version number of a design record's ``format`` (None if it is not one)."""
    fmt = data.get("format") if isinstance(data, dict) else None
    match = _FORMAT_RE.match(fmt) if isinstance(fmt, str) else None
    return int(match.group(1)) if match else None


def upgrade(data: dict, *, source: str = "design record") -> dict:
    """``data`` in the current format: a copy with the fields added since its version set
    to their defaults, or ``data`` itself if it is current. Unreadable versions raise
    :class:`InputError`."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: not a JSON object")
    version = format_version(data)
    if version is None:
        raise InputError(f"{source}: not a design record (format is {data.get('format')!r}, expected {FORMAT!r})")
    if version > FORMAT_VERSION:
        raise InputError(f"{source}: format {FORMAT_NAME}/{version} is newer than the newest this mlipdoe reads "
                         f"({FORMAT}); upgrade mlipdoe")
    if version not in READABLE_VERSIONS:
        raise InputError(f"{source}: format {FORMAT_NAME}/{version} is not one this mlipdoe reads "
                         f"(it reads {', '.join(f'{FORMAT_NAME}/{v}' for v in READABLE_VERSIONS)})")
    if version < FORMAT_VERSION:  # 2 → 3 adds only a model kind
        data = {**data, "format": FORMAT}
        data.setdefault("notes", [])
    return data


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
    """Validate the record against the schema, then write ``design.json`` atomically.

    An invalid record raises :class:`InputError` and leaves ``path`` untouched.
    """
    data = record.to_dict()
    schemas.check(data, "design-record", f"refusing to write design record {path}")
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def read_record(path) -> DesignRecord:
    """Read a design record, upgrade an older format, validate it against the schema.

    Raises :class:`InputError` (one line naming the file and the field) for a missing or
    unreadable file, an unknown format version or a schema violation.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"design record not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"cannot read design record {path}: {exc}") from None
    return DesignRecord.from_dict(data, source=f"design record {path}")
