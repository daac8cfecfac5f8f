"""A pool index for warm runs: read a validated extxyz pool again without parsing it.

Parsing and validating 10⁵ extxyz frames with ASE takes about 25 s, longer than a
D-optimal selection from a warm row store. After a pool has been read and validated
once, :func:`write_pool_index` records, per frame, the byte offset in its file and the
metadata the pipeline needs (atom count, species, config_type), plus the duplicate
pairs, keyed by each file's sha256 and the ``min_distance`` of the validation.
:func:`read_pool_indexed` checks the sha256s (a full read of the bytes, ~0.5 s per
200 MB) and, when they match, returns a :class:`~mlipdoe.pool.Pool` whose frames are
parsed on access (:class:`LazyFrames`), each with ASE's extxyz reader on that frame's
text: the same Atoms as a full read. Anything else (other formats, changed files, a
missing or unreadable index) falls back to :func:`~mlipdoe.pool.read_pool`.

The index is JSON (never a pickle) and is written atomically.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import ase.io
from ase import Atoms
from ase.io.formats import filetype

from .design import atomic_write_text
from .pool import FrameInfo, Pool, PoolFile, read_pool, sha256_file, warn_duplicates
from .progress import NULL_PROGRESS

INDEX_FORMAT = "mlipdoe-pool-index-1"
#: File name of the index inside a row-store directory.
POOL_INDEX = "pool-index.json"

__all__ = ["POOL_INDEX", "LazyFrames", "index_pool", "read_pool_indexed", "write_pool_index"]


class LazyFrames(Sequence):
    """Frames of extxyz files parsed on access from their byte offsets.

    Indexing parses one frame; slicing parses each frame of the slice; iteration reads
    the files in order with :func:`ase.io.iread`. :attr:`n_parsed` counts the frames
    parsed so far.
    """

    def __init__(self, paths: Sequence[str], file_of: Sequence[int], offsets: Sequence[int],
                 n_atoms: Sequence[int]):
        self.paths = list(paths)
        self.file_of = list(file_of)
        self.offsets = list(offsets)
        self.n_atoms = list(n_atoms)
        self.n_parsed = 0

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self._parse(i) for i in range(*k.indices(len(self)))]
        k = int(k)
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(f"frame {k} out of range for {len(self)} frames")
        return self._parse(k)

    def __iter__(self):
        for path in self.paths:
            for atoms in ase.io.iread(path, index=":", format="extxyz"):
                self.n_parsed += 1
                yield atoms

    def _parse(self, k: int) -> Atoms:
        with open(self.paths[self.file_of[k]], "rb") as fh:
            fh.seek(self.offsets[k])
            lines = [fh.readline() for _ in range(self.n_atoms[k] + 2)]
        self.n_parsed += 1
        return ase.io.read(io.StringIO(b"".join(lines).decode()), format="extxyz")


def _extxyz_offsets(path: str) -> tuple[list[int], list[int]] | None:
    """Byte offset and atom count of every frame of an (ext)xyz file; None if unsure."""
    offsets, counts = [], []
    pos = 0
    with open(path, "rb") as fh:
        while True:
            line = fh.readline()
            if not line:
                return offsets, counts
            if not line.strip():
                pos += len(line)
                continue
            try:
                n = int(line.split()[0])
            except ValueError:
                return None
            offsets.append(pos)
            counts.append(n)
            pos += len(line)
            for _ in range(n + 1):
                row = fh.readline()
                if not row:
                    return None
                pos += len(row)


def _indexable(path: str) -> bool:
    try:
        return filetype(path, guess=False) == "extxyz"
    except Exception:  # ASE raises several types for files it cannot classify
        return False


def write_pool_index(pool: Pool, index_path, *, min_distance: float = 0.5) -> bool:
    """Record ``pool`` (read from extxyz files and validated) for :func:`read_pool_indexed`.

    Returns False (and writes nothing) when the pool is not made of extxyz files or a
    file's frames do not line up with its atom-count lines.
    """
    paths = [f.path for f in pool.files]
    if not paths or not all(os.path.isfile(p) and _indexable(p) for p in paths):
        return False
    offsets, file_of = [], []
    for k, (f, path) in enumerate(zip(pool.files, paths)):
        scanned = _extxyz_offsets(path)
        if scanned is None or len(scanned[0]) != f.n_frames:
            return False
        offsets += scanned[0]
        file_of += [k] * f.n_frames
        if [fi.n_atoms for fi in pool.info[len(file_of) - f.n_frames:len(file_of)]] != scanned[1]:
            return False
    data = {
        "format": INDEX_FORMAT,
        "min_distance": float(min_distance),
        "files": [{"sha256": f.sha256, "n_frames": f.n_frames, "size": os.path.getsize(p)}
                  for f, p in zip(pool.files, paths)],
        "offsets": offsets,
        "file_of": file_of,
        "n_atoms": [fi.n_atoms for fi in pool.info],
        "config_type": [fi.config_type for fi in pool.info],
        "species": [list(fi.species) for fi in pool.info],
        "duplicates": [list(map(int, d)) for d in pool.duplicates],
    }
    atomic_write_text(Path(index_path), json.dumps(data, separators=(",", ":")))
    return True


def index_pool(pool: Pool, store) -> bool:
    """Write the index of ``pool`` into the row-store directory ``store`` (after the store
    is built), unless the pool was itself read through the index."""
    if isinstance(pool.frames, LazyFrames):
        return False
    return write_pool_index(pool, Path(store) / POOL_INDEX)


def read_pool_indexed(paths, index_path, *, min_distance: float = 0.5, progress=NULL_PROGRESS) -> Pool:
    """:func:`~mlipdoe.pool.read_pool`, without parsing when ``index_path`` matches.

    The index matches when it exists, has this format and ``min_distance``, and lists
    the same number of files with the same sha256 each. Returns a Pool whose ``frames``
    is a :class:`LazyFrames`; otherwise the pool as :func:`~mlipdoe.pool.read_pool`
    reads it (the index is not written here: see :func:`write_pool_index`).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    data = _load_index(index_path)
    if data is None or data["min_distance"] != float(min_distance) or len(data["files"]) != len(paths):
        return read_pool(paths, min_distance=min_distance, progress=progress)
    for entry, path in zip(data["files"], paths):
        # the size check avoids hashing a file that has obviously changed
        if not os.path.isfile(path) or os.path.getsize(path) != entry["size"] or sha256_file(path) != entry["sha256"]:
            return read_pool(paths, min_distance=min_distance, progress=progress)
    files = [PoolFile(path=p, n_frames=int(e["n_frames"]), sha256=e["sha256"]) for p, e in zip(paths, data["files"])]
    info, k_in_file, last = [], 0, None
    for k, (f, n, ct, sp) in enumerate(zip(data["file_of"], data["n_atoms"], data["config_type"], data["species"])):
        k_in_file = k_in_file + 1 if f == last else 0
        last = f
        info.append(FrameInfo(index=k, source=paths[f], index_in_file=k_in_file, config_type=ct, n_atoms=int(n),
                              species=tuple(int(z) for z in sp)))
    frames = LazyFrames(paths, data["file_of"], data["offsets"], data["n_atoms"])
    duplicates = [(int(d), int(f)) for d, f in data["duplicates"]]
    warn_duplicates(duplicates)
    return Pool(frames=frames, info=info, files=files, duplicates=duplicates)


def _load_index(index_path) -> dict | None:
    try:
        data = json.loads(Path(index_path).read_text())
    except (OSError, ValueError):
        return None
    keys = ("min_distance", "files", "offsets", "file_of", "n_atoms", "config_type", "species", "duplicates")
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or any(k not in data for k in keys):
        return None
    n = len(data["offsets"])
    if any(len(data[k]) != n for k in ("file_of", "n_atoms", "config_type", "species")):
        return None
    return data
