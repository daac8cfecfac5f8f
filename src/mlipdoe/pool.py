"""Reading and validating a candidate pool of atomic configurations.

A pool is the list of frames a design is chosen from. Frame identity is the
*global* index across all files, in the order the files were given; every
other module refers to frames by that index.

Reading always uses ``ase.io.read(path, index=":")`` so that every frame of a
trajectory is kept (ASE's default returns only the last one).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence, Union

import ase.io
import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list

from .exceptions import InputError
from .progress import NULL_PROGRESS

__all__ = [
    "DuplicateFramesWarning",
    "FrameInfo",
    "Pool",
    "PoolFile",
    "pool_from_frames",
    "read_frames",
    "read_pool",
]

PathLike = Union[str, "os.PathLike[str]"]

# Two frames are duplicates when numbers, pbc match and positions/cell agree
# to this absolute tolerance (Å).
DUPLICATE_TOLERANCE = 1e-8
# Hash key resolution (Å); coarser than the tolerance so that frames within
# tolerance almost always share a key. Candidates are then compared exactly.
_HASH_DECIMALS = 6
# How many duplicate pairs the warning lists.
_N_PAIRS_SHOWN = 5


class DuplicateFramesWarning(UserWarning):
    """The pool contains frames that are identical to an earlier frame."""


@dataclass(frozen=True)
class PoolFile:
    """One source of frames.

    Attributes
    ----------
    path : str
        The path as given (or ``source`` for in-memory pools).
    n_frames : int
        Number of frames read from it.
    sha256 : str
        Hex SHA-256 of the file bytes; for in-memory pools, of the frames'
        canonical arrays (see :func:`pool_from_frames`).
    """

    path: str
    n_frames: int
    sha256: str

    def to_dict(self) -> dict:
        """Plain-dict form, for design records."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PoolFile":
        """Inverse of :meth:`to_dict`."""
        return cls(path=str(data["path"]), n_frames=int(data["n_frames"]), sha256=str(data["sha256"]))


@dataclass(frozen=True)
class FrameInfo:
    """Metadata of one pool frame.

    Attributes
    ----------
    index : int
        Global index in the pool.
    source : str
        Path of the file it came from (or the in-memory source label).
    index_in_file : int
        Position of the frame inside ``source``.
    config_type : str or None
        ``atoms.info["config_type"]`` as a string, if present.
    n_atoms : int
        Number of atoms.
    species : tuple of int
        Sorted unique atomic numbers.
    """

    index: int
    source: str
    index_in_file: int
    config_type: str | None
    n_atoms: int
    species: tuple[int, ...]

    def to_dict(self) -> dict:
        """Plain-dict form (``species`` as a list)."""
        data = asdict(self)
        data["species"] = list(self.species)
        return data

    @property
    def label(self) -> str:
        """Human-readable ``source:index_in_file``."""
        return f"{self.source}:{self.index_in_file}"


@dataclass
class Pool:
    """A validated candidate pool.

    Attributes
    ----------
    frames : list of ase.Atoms
        The frames, exactly as ASE returned them, in global order.
    info : list of FrameInfo
        Metadata, ``info[k].index == k``.
    files : list of PoolFile
        The sources, in the order given.
    duplicates : list of (int, int)
        ``(duplicate index, first index)`` for every frame identical to an
        earlier one. Duplicates are kept in ``frames``; criteria may skip them.
    """

    frames: list[Atoms]
    info: list[FrameInfo]
    files: list[PoolFile]
    duplicates: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def species(self) -> tuple[int, ...]:
        """Sorted union of atomic numbers over all frames."""
        return tuple(sorted(set().union(*(fi.species for fi in self.info))))

    @property
    def n_atoms(self) -> np.ndarray:
        """Atoms per frame, shape ``(n_frames,)``, integer."""
        return np.array([fi.n_atoms for fi in self.info], dtype=int)

    @property
    def config_types(self) -> list[str | None]:
        """``config_type`` of each frame (None where absent)."""
        return [fi.config_type for fi in self.info]

    def subset(self, indices: Iterable[int]) -> list[Atoms]:
        """Frames at the given global indices, in the order given.

        Raises
        ------
        InputError
            If an index is not in ``[0, len(self))``.
        """
        out = []
        n = len(self.frames)
        for i in indices:
            k = int(i)
            if not 0 <= k < n:
                raise InputError(f"frame index {k} out of range for a pool of {n} frames")
            out.append(self.frames[k])
        return out


# --------------------------------------------------------------------- reading


def read_frames(path: PathLike, format: str | None = None, progress=NULL_PROGRESS) -> list[Atoms]:
    """Read every frame of ``path`` with ASE.

    Parameters
    ----------
    path : str or os.PathLike
        Any file ASE can read.
    format : str, optional
        ASE format name; guessed from the file when None.
    progress : Progress
        Receives a ``read`` stage of unknown length, advanced per frame.

    Returns
    -------
    list of ase.Atoms
        All frames (``index=":"``); a single structure gives a one-element
        list, an empty (0-byte) file an empty list.

    Raises
    ------
    InputError
        If the file is missing or ASE cannot parse it.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise InputError(f"pool file not found: {p}")
    if os.path.isdir(p):
        raise InputError(f"pool file is a directory, not a structure file: {p}")
    if os.path.getsize(p) == 0:
        return []  # ASE cannot guess the format of an empty file; it has no frames
    frames = []
    try:
        with progress.stage("read", None) as advance:
            for atoms in ase.io.iread(p, index=":", format=format):
                frames.append(atoms)
                advance(1, len(atoms))
    except Exception as exc:  # ASE raises many types; wrap them all
        raise InputError(f"cannot read pool file {p}: {_short_reason(exc)}") from exc
    return frames


def read_pool(
    paths: PathLike | Sequence[PathLike],
    *,
    min_distance: float = 0.5,
    format: str | None = None,
    progress=NULL_PROGRESS,
) -> Pool:
    """Read and validate a candidate pool from one or more files.

    Parameters
    ----------
    paths : path or sequence of paths
        Structure files in any format ASE reads; all frames of each are used.
        Global frame indices run over the files in the order given.
    min_distance : float, default 0.5
        Smallest allowed interatomic distance in Å, periodic images included.
        ``0`` disables the check.
    format : str, optional
        ASE format for all files; guessed per file when None.
    progress : Progress
        Shows reading progress (frames/s, atoms/s) per file.

    Returns
    -------
    Pool

    Raises
    ------
    InputError
        Missing or unparseable file, empty pool, frame without atoms,
        non-finite positions or cell, or atoms closer than ``min_distance``.

    Warns
    -----
    DuplicateFramesWarning
        Once, if some frames duplicate earlier ones (see ``Pool.duplicates``).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise InputError("no pool files given; pass at least one structure file")

    frames: list[Atoms] = []
    origins: list[tuple[str, int]] = []
    files: list[PoolFile] = []
    for p in paths:
        file_frames = read_frames(p, format=format, progress=progress)
        files.append(PoolFile(path=p, n_frames=len(file_frames), sha256=sha256_file(p)))
        frames.extend(file_frames)
        origins.extend((p, k) for k in range(len(file_frames)))
    if not frames:
        raise InputError(f"empty pool: no frames in {', '.join(paths)}")
    return _build_pool(frames, origins, files, min_distance)


def pool_from_frames(
    frames: Sequence[Atoms],
    *,
    source: str = "<memory>",
    min_distance: float = 0.5,
) -> Pool:
    """Validate in-memory frames as a pool.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        The frames; the objects themselves are kept (not copied).
    source : str, default "<memory>"
        Label used as ``FrameInfo.source`` and ``PoolFile.path``.
    min_distance : float, default 0.5
        As in :func:`read_pool`.

    Returns
    -------
    Pool
        With one :class:`PoolFile` whose ``sha256`` hashes the frames'
        numbers, positions, cell and pbc (float64/int64 bytes, in order).

    Raises
    ------
    InputError
        As in :func:`read_pool`.
    """
    if isinstance(frames, Atoms):
        frames = [frames]
    frames = list(frames)
    if not frames:
        raise InputError(f"empty pool: no frames in {source}")
    for k, atoms in enumerate(frames):
        if not isinstance(atoms, Atoms):
            raise InputError(f"pool frame {k} is a {type(atoms).__name__}, not an ase.Atoms")
    files = [PoolFile(path=source, n_frames=len(frames), sha256=frames_sha256(frames))]
    origins = [(source, k) for k in range(len(frames))]
    return _build_pool(frames, origins, files, min_distance)


# ------------------------------------------------------------------ internals


def _build_pool(
    frames: list[Atoms],
    origins: list[tuple[str, int]],
    files: list[PoolFile],
    min_distance: float,
) -> Pool:
    """Validate every frame, collect metadata, find duplicates."""
    min_distance = float(min_distance)
    if not np.isfinite(min_distance) or min_distance < 0:
        raise InputError(f"min_distance must be a finite number >= 0, got {min_distance}")
    names = [f"frame {k} ({source}:{k_file})" for k, (source, k_file) in enumerate(origins)]
    for atoms, name in zip(frames, names):
        _validate_frame(atoms, name)
    if min_distance > 0:
        _check_contacts(frames, names, min_distance)
    info = []
    for k, (atoms, (source, k_file)) in enumerate(zip(frames, origins)):
        ct = atoms.info.get("config_type")
        info.append(
            FrameInfo(
                index=k,
                source=source,
                index_in_file=k_file,
                config_type=None if ct is None else str(ct),
                n_atoms=len(atoms),
                species=tuple(int(z) for z in np.unique(atoms.numbers)),
            )
        )
    duplicates = _find_duplicates(frames)
    warn_duplicates(duplicates, stacklevel=4)
    return Pool(frames=frames, info=info, files=files, duplicates=duplicates)


def warn_duplicates(duplicates: Sequence[tuple[int, int]], stacklevel: int = 3) -> None:
    """Warn once (:class:`DuplicateFramesWarning`) if the pool has duplicate frames."""
    if duplicates:
        shown = ", ".join(f"{d}=={f}" for d, f in duplicates[:_N_PAIRS_SHOWN])
        more = " ..." if len(duplicates) > _N_PAIRS_SHOWN else ""
        warnings.warn(
            f"{len(duplicates)} duplicate frame(s) in the pool (duplicate==first): {shown}{more}; "
            "they are kept and listed in Pool.duplicates",
            DuplicateFramesWarning,
            stacklevel=stacklevel,
        )


def _validate_frame(atoms: Atoms, name: str) -> None:
    """Raise InputError if a frame is empty, non-finite or periodic with a degenerate cell."""
    if len(atoms) == 0:
        raise InputError(f"{name} has no atoms; remove it from the pool")
    pos = atoms.get_positions()
    if not np.all(np.isfinite(pos)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(pos), axis=1))[0])
        raise InputError(f"{name} has non-finite (NaN/inf) position for atom {bad}; fix or remove the frame")
    cell = np.asarray(atoms.cell.array, dtype=float)
    if not np.all(np.isfinite(cell)):
        raise InputError(f"{name} has a non-finite (NaN/inf) cell; fix or remove the frame")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any():
        # Periodic directions need non-degenerate cell vectors.
        periodic_vectors = cell[pbc]
        if np.linalg.matrix_rank(periodic_vectors, tol=1e-10) < int(pbc.sum()):
            raise InputError(
                f"{name} is periodic along {''.join('xyz'[i] for i in np.flatnonzero(pbc))} "
                "but its cell is zero or degenerate there; set a valid cell or pbc=False"
            )


#: Frames with more atoms than this use ASE's O(n) neighbour list for the contact check.
_PAIRWISE_MAX_ATOMS = 256


def _check_contacts(frames: list[Atoms], names: list[str], min_distance: float) -> None:
    """Raise InputError naming the first frame with two atoms closer than ``min_distance``.

    Frames that are fully periodic with every cell width (distance between lattice
    planes) above 2 × min_distance, or fully non-periodic, are checked in batches of
    equal size with all pair distances; other frames (mixed pbc, tiny cells, many
    atoms) with :func:`ase.neighborlist.neighbor_list`. The batched check is exact: with
    fractional differences wrapped into [−½, ½], an image shifted by a lattice vector
    n ≠ 0 lies at least ½ width away along some direction, so only the wrapped
    difference can be closer than min_distance.
    """
    groups: dict[tuple, list[int]] = {}
    slow = []
    for k, atoms in enumerate(frames):
        n, pbc = len(atoms), tuple(bool(p) for p in atoms.pbc)
        if n < 2 and not any(pbc):
            continue
        if n > _PAIRWISE_MAX_ATOMS or (any(pbc) and not all(pbc)):
            slow.append(k)
            continue
        if all(pbc):
            widths = 1.0 / np.linalg.norm(np.linalg.inv(atoms.cell.array), axis=0)
            if widths.min() <= 2 * min_distance:
                slow.append(k)
                continue
        groups.setdefault((n, pbc[0]), []).append(k)
    first = None  # (frame, (atom i, atom j, distance))
    for (n, periodic), members in groups.items():
        hit = _first_contact_batched([frames[k] for k in members], periodic, min_distance)
        if hit is not None and (first is None or members[hit[0]] < first[0]):
            first = (members[hit[0]], hit[1:])
    for k in slow:
        if first is not None and k > first[0]:
            break
        try:
            i, j, d = neighbor_list("ijd", frames[k], min_distance)
        except Exception as exc:
            raise InputError(f"{names[k]}: neighbour search failed: {_short_reason(exc)}") from exc
        if len(d):
            m = int(np.argmin(d))
            first = (k, (int(i[m]), int(j[m]), float(d[m])))
            break
    if first is not None:
        k, (a, b, d) = first
        pair = f"atom {a} and its periodic image" if a == b else f"atoms {a} and {b}"
        raise InputError(
            f"{names[k]}: {pair} are {d:.4f} Å apart, closer than min_distance={min_distance:g} Å; "
            "remove or fix the frame (the check is read_pool's min_distance in the Python API)"
        )


def _first_contact_batched(frames: list[Atoms], periodic: bool, min_distance: float, *,
                           max_bytes: float = 5e7):
    """(position in ``frames``, atom i, atom j, distance) of the first close pair, or None."""
    n = len(frames[0])
    first, second = np.triu_indices(n, 1)
    per_frame = len(first) * 3 * 8 * 3
    step = max(1, int(max_bytes // max(per_frame, 1)))
    for start in range(0, len(frames), step):
        part = frames[start : start + step]
        pos = np.stack([a.positions for a in part])  # (F, n, 3)
        if periodic:
            cell = np.stack([a.cell.array for a in part])  # (F, 3, 3), rows = lattice vectors
            frac = np.einsum("fni,fij->fnj", pos, np.linalg.inv(cell))
            df = frac[:, second] - frac[:, first]
            df -= np.round(df)
            diff = np.einsum("fpi,fij->fpj", df, cell)
        else:
            diff = pos[:, second] - pos[:, first]
        d2 = np.einsum("fpi,fpi->fp", diff, diff)
        close = d2 < min_distance**2
        if close.any():
            f = int(np.flatnonzero(close.any(axis=1))[0])
            p = int(np.argmin(d2[f]))
            return start + f, int(first[p]), int(second[p]), float(np.sqrt(d2[f, p]))
    return None


def _find_duplicates(frames: list[Atoms]) -> list[tuple[int, int]]:
    """``(duplicate, first)`` pairs via a hash of rounded arrays, O(N)."""
    buckets: dict[bytes, list[int]] = {}
    pairs = []
    for k, atoms in enumerate(frames):
        key = frame_key(atoms)
        candidates = buckets.setdefault(key, [])
        for first in candidates:
            if _same_frame(frames[first], atoms):
                pairs.append((k, first))
                break
        else:
            candidates.append(k)
    return pairs


def frame_key(atoms: Atoms) -> bytes:
    """Hash key: numbers, pbc, rounded positions and cell."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=np.bool_).tobytes())
    for arr in (atoms.get_positions(), atoms.cell.array):
        r = np.round(np.asarray(arr, dtype=float), _HASH_DECIMALS) + 0.0  # +0.0 folds -0.0
        h.update(r.tobytes())
    return h.digest()


def _same_frame(a: Atoms, b: Atoms) -> bool:
    return (
        len(a) == len(b)
        and np.array_equal(a.numbers, b.numbers)
        and np.array_equal(a.pbc, b.pbc)
        and np.allclose(a.get_positions(), b.get_positions(), rtol=0, atol=DUPLICATE_TOLERANCE)
        and np.allclose(a.cell.array, b.cell.array, rtol=0, atol=DUPLICATE_TOLERANCE)
    )


def sha256_file(path: str) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def frames_sha256(frames: Sequence[Atoms]) -> str:
    """sha256 of the frames' numbers, positions, cells and pbc (content of an in-memory pool)."""
    h = hashlib.sha256()
    for atoms in frames:
        h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(atoms.get_positions(), dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(atoms.cell.array, dtype=np.float64).tobytes())
        h.update(np.asarray(atoms.pbc, dtype=np.bool_).tobytes())
    return h.hexdigest()


def _short_reason(exc: BaseException) -> str:
    """One-line reason: exception type and the first line of its message."""
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else ""
    if len(first) > 200:
        first = first[:197] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
