"""Resumable on-disk store of whitened energy rows, bounded memory and Dask.

:func:`build_model_stored` is :func:`mlipdoe.model.gap_featomic.build_model` for pools of
10^5–10^6 frames. It streams the pool in chunks of frames and keeps on disk, under
one directory,

``manifest.json``
    the *key*: sha256 of the pool content and of every input the stored numbers
    depend on (SOAP, kernel, observations, n_sparse, sparse method, seed, sparse
    sample, dtype), plus the layout (chunk size, number of frames). Written first,
    atomically. A store whose key differs from the request is refused with
    :class:`~mlipdoe.exceptions.StoreMismatchError` — never silently reused.
``sparse.h5``
    the sparse points (vectors, ``[frame, atom]`` locations), the Cholesky factor L
    of K_MM + jitter·I and the jitter.
``chunks/c{index:07d}.h5``
    one file per chunk of frames: whitened rows Ψ = Φ L⁻ᵀ (n_chunk × M), atoms per
    frame and mean-pooled descriptors (for baselines such as FPS on frames).

Every file is written to a temporary name, fsynced and renamed into place
(``os.replace`` is atomic on POSIX), so a chunk file either exists complete or not at
all: a run killed at any point (kill -9) resumes from the chunks present and, because
every chunk is computed by the same function from the same inputs and the same
stored sparse points, the result is bit-identical to an uninterrupted run.

What is *not* in the key: the noise model and config types. They only scale rows at
load time (σ_E² n_s), so changing σ_E reuses the store, correctly.

Precision: rows are stored in float64 by default (criteria tests compare gains to
1e-8); ``dtype="float32"`` halves disk and the O(N·M) selection working set (the
criteria upcast each 8192-row block to float64 when they use it).

Memory (``memory_limit``): the selection needs Ψ in memory, N·M·itemsize bytes (never
N_atoms·M: rows are summed per frame inside each chunk), plus O(M²) for F̃⁻¹. The row
stage holds, per chunk in flight, the chunk's per-atom descriptors and its
(n_atoms_chunk × M) kernel block; the chunk size is chosen so that the resident set
plus the chunks in flight stay under the limit (:func:`plan_chunk_size`).

Sparse points at scale (``sparse_sample``): exact CUR (:func:`~mlipdoe.model.kernels.cur_sparse_points`)
streams all pool environments twice (Gram pass + leverage/reservoir pass), i.e. two
extra descriptor passes over the whole pool when its descriptors do not fit in
memory. With ``sparse_sample = S`` environments, CUR/FPS runs on a deterministic,
species-stratified random sample of whole frames holding ≈ S environments (frames
drawn without replacement from ``numpy.random.default_rng([seed, 7])``; every pool
species gets at least one frame). The approximation: leverage scores are those of the
sample's Gram matrix and the points can only be sample environments; its effect on the
final D value is measured by ``benchmarks/scale.py --compare-exact`` (docs/scale.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms

from .atomic import output_folder
from .descriptors import SOAP, make_descriptor
from .exceptions import ConfigurationError, InputError, StoreMismatchError
from .hypers import Noise
from .model import DescriptorSource, InformationModel, resolve_species
from .model.gap_featomic import chunk_energy_rows, segment_sums
from .model.kernels import (
    Kernel,
    SparsePoints,
    cholesky_with_jitter,
    choose_sparse_points,
    sparse_point_notes,
)
from .model.rows import whiten
from .pool import frames_sha256
from .progress import NULL_PROGRESS, Progress

STORE_FORMAT = 2  # 2: integral floats canonicalised in the key
#: featomic is fastest on chunks of ~100 frames; larger chunks only cost memory.
MAX_CHUNK_FRAMES = 100
#: Default number of environments sampled for the sparse-point choice.
DEFAULT_SPARSE_SAMPLE = 50_000
#: Bytes per atom per float of the descriptor stage (featomic tensor, property move,
#: float64 copy, normalised copy, kernel input): a conservative multiple.
_DESCRIPTOR_COPIES = 6
#: Copies of the (n_atoms_chunk × M) kernel block (X Zᵀ, its power base, reduceat).
_KERNEL_COPIES = 3

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(value) -> int:
    """Bytes from ``4GB``, ``500MB``, ``2GiB``, ``1.5e9`` or an int."""
    if value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise InputError(f"cannot read memory limit {value!r}: use e.g. 4GB, 500MB or 2GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def current_rss() -> int:
    """Resident set size of this process now (bytes)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - non-Linux
        return peak_rss()


def peak_rss() -> int:
    """Peak resident set size of this process so far (bytes).

    Linux: VmHWM of /proc/self/status. ``ru_maxrss`` is not used there because it keeps
    the high-water mark of the process image *before* exec (a child of a large parent
    reports the parent's size).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - non-Linux
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# ---------------------------------------------------------------------------
# memory planning
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ChunkPlan:
    """Chunk size chosen for a memory limit, with the estimate behind it (bytes)."""

    chunk_size: int
    resident_bytes: int
    per_chunk_bytes: int
    in_flight: int
    limit_bytes: int | None
    #: Largest chunk (frames) the limit allows; None without a limit.
    max_chunk_size: int | None = None
    baseline_bytes: int = 0

    def bytes_for(self, chunk_size: int) -> int:
        """Planned peak RSS with chunks of ``chunk_size`` frames."""
        per_frame = self.per_chunk_bytes / max(self.chunk_size, 1)
        return int(self.baseline_bytes + self.resident_bytes + self.in_flight * chunk_size * per_frame)


def plan_chunk_size(*, memory_limit: int | None, baseline_bytes: int, n_frames: int, mean_atoms: float,
                    dimension: int, M: int, itemsize: int, in_flight: int = 1,
                    chunk_size: int | None = None) -> ChunkPlan:
    """Frames per chunk such that baseline + resident + in_flight × chunk ≤ limit.

    Resident: the selection's Ψ (N·M·itemsize) plus ~6 M² float64 (F̃, F̃⁻¹, L, update
    temporaries) plus one 8192-row float64 gain block. Per chunk of c frames with
    a = c·mean_atoms atoms: a·D·8·6 (descriptors) + a·M·8·3 (kernel block) + c·M·8·3
    (rows, whitened rows, written copy).
    """
    per_atom = dimension * 8 * _DESCRIPTOR_COPIES + M * 8 * _KERNEL_COPIES
    per_frame = mean_atoms * per_atom + M * 8 * 3
    resident = n_frames * M * itemsize + 6 * M * M * 8 + 2 * min(n_frames, 8192) * M * 8
    if memory_limit is None:
        size = chunk_size or MAX_CHUNK_FRAMES
        return ChunkPlan(int(size), int(resident), int(size * per_frame), in_flight, None, None, int(baseline_bytes))
    budget = memory_limit - baseline_bytes - resident
    fit = int(budget // (in_flight * per_frame)) if budget > 0 else 0
    if fit < 1:
        need = baseline_bytes + resident + in_flight * per_frame
        hint = " or dtype float32" if itemsize == 8 else ""
        raise ConfigurationError(
            f"memory limit {memory_limit / 1e9:.3g} GB is too small for this pool: at least "
            f"{need / 1e9:.3g} GB needed (process {baseline_bytes / 1e9:.3g} GB + rows N×M "
            f"{n_frames * M * itemsize / 1e9:.3g} GB + one chunk); raise --memory-limit{hint} or lower n_sparse"
        )
    size = min(fit, chunk_size or MAX_CHUNK_FRAMES, max(n_frames, 1))
    return ChunkPlan(int(size), int(resident), int(size * per_frame), in_flight, int(memory_limit), fit,
                     int(baseline_bytes))


# ---------------------------------------------------------------------------
# the row task: one chunk of frames → whitened rows (serial path and Dask tasks)
# ---------------------------------------------------------------------------

_local = threading.local()


def _descriptor_for(soap: SOAP):
    """One featomic calculator per thread (and per worker process), reused across tasks."""
    cache = getattr(_local, "descriptors", None)
    if cache is None:
        cache = _local.descriptors = {}
    if soap not in cache:
        cache[soap] = make_descriptor(soap)
    return cache[soap]


def chunk_rows(frames: Sequence[Atoms], soap: SOAP, sparse: SparsePoints, kernel: Kernel, L: np.ndarray) -> dict:
    """Whitened energy rows and mean-pooled descriptors of one chunk of frames.

    The rows are the model layer's (:func:`~mlipdoe.model.gap_featomic.chunk_energy_rows`,
    whitened by :func:`~mlipdoe.model.rows.whiten`); the pooled descriptors are the
    per-species means of the unit vectors, for the descriptor baselines.

    Returns
    -------
    dict with ``psi`` (n, M) float64, ``n_atoms`` (n,) int64, ``mean_descriptor``
    (n, S·D) float64 (per-species mean of unit vectors, species ascending, 0 when a
    frame has none of a species), ``seconds_descriptors``, ``seconds_rows``.
    """
    t0 = time.perf_counter()
    # arrays unpickled on a Dask worker can sit at unaligned addresses, where numpy's
    # matmul skips BLAS and rounds differently: align them (serial results, bit for bit)
    L = np.require(L, requirements="A")
    desc = _descriptor_for(soap).compute(list(frames))
    t1 = time.perf_counter()
    n = len(frames)
    D = desc.dimension
    species = soap.species
    psi = whiten(L, chunk_energy_rows(desc, sparse, kernel))
    pooled = np.zeros((n, len(species) * D))
    for k, z in enumerate(species):
        block = desc.blocks.get(z)
        if block is None:
            continue
        present, starts = np.unique(block.frame, return_index=True)  # featomic orders samples by frame
        counts = np.diff(np.append(starts, len(block.frame)))
        pooled[present, k * D:(k + 1) * D] = segment_sums(block.values, starts, counts) / counts[:, None]
    t2 = time.perf_counter()
    return {
        "psi": psi,
        "n_atoms": np.array([len(a) for a in frames], dtype=np.int64),
        "mean_descriptor": pooled,
        "seconds_descriptors": t1 - t0,
        "seconds_rows": t2 - t1,
    }


def _fsync_replace(tmp: Path, final: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    try:
        dfd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - directories not fsync-able on some systems
        pass


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def _only_leftovers(path: Path) -> bool:
    """True if ``path`` holds nothing but what a creation killed before its manifest
    was in place can leave: our temporaries and an empty ``chunks`` directory."""
    for entry in path.iterdir():
        if entry.is_file() and entry.name.startswith(".") and entry.name.endswith(".tmp"):
            continue
        if entry.name == "chunks" and entry.is_dir() and not any(entry.iterdir()):
            continue
        return False
    return True


class RowStore:
    """A directory holding the key, the sparse points and the row chunks.

    Use :meth:`open` (creates or validates); do not construct directly.
    """

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest

    # -- opening -------------------------------------------------------------
    @classmethod
    def open(cls, path, inputs: dict, *, n_frames: int, chunk_size: int, dtype: str) -> "RowStore":
        """Create the store at ``path`` for ``inputs`` or open the matching existing one.

        Raises :class:`StoreMismatchError` if ``path`` holds a store of other inputs,
        :class:`InputError` if it is a non-empty directory that is not a store.
        """
        path = Path(path)
        key = store_key(inputs)
        manifest_path = path / "manifest.json"
        if manifest_path.exists():
            try:
                manifest = json.loads(manifest_path.read_text())
            except (OSError, ValueError) as exc:
                raise StoreMismatchError(f"{manifest_path} is unreadable ({exc}); delete the store directory") from None
            if manifest.get("format") != STORE_FORMAT:
                raise StoreMismatchError(
                    f"store {path} has format {manifest.get('format')}, this mlipdoe writes format {STORE_FORMAT}; "
                    f"delete it (or use another --store directory) and rebuild"
                )
            if manifest.get("key") != key:
                diff = _describe_difference(manifest.get("inputs", {}), inputs)
                raise StoreMismatchError(
                    f"store {path} was built from other inputs ({diff}); use another --store directory "
                    f"or delete this one"
                )
            store = cls(path, manifest)
            store._clean_temporaries()
            return store
        if path.exists() and (not path.is_dir() or not _only_leftovers(path)):
            raise InputError(f"{path} exists and is not an mlipdoe store (no manifest.json); choose an empty or new directory")
        output_folder(path, what="store")
        (path / "chunks").mkdir(exist_ok=True)
        manifest = {
            "format": STORE_FORMAT,
            "key": key,
            "inputs": inputs,
            "layout": {"n_frames": int(n_frames), "chunk_size": int(chunk_size), "dtype": dtype},
        }
        tmp = _tmp_name(manifest_path)
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        _fsync_replace(tmp, manifest_path)
        store = cls(path, manifest)
        store._clean_temporaries()  # leftovers of a creation killed before its manifest
        return store

    def _clean_temporaries(self) -> None:
        for p in list(self.path.glob(".*.tmp")) + list((self.path / "chunks").glob(".*.tmp")):
            try:
                p.unlink()
            except OSError:
                pass

    # -- layout --------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        return int(self.manifest["layout"]["n_frames"])

    @property
    def chunk_size(self) -> int:
        return int(self.manifest["layout"]["chunk_size"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest["layout"]["dtype"])

    @property
    def n_chunks(self) -> int:
        return -(-self.n_frames // self.chunk_size)

    def chunk_range(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.n_frames)

    def _chunk_path(self, index: int) -> Path:
        return self.path / "chunks" / f"c{index:07d}.h5"

    def completed_chunks(self) -> list[int]:
        return [i for i in range(self.n_chunks) if self._chunk_path(i).exists()]

    def missing_chunks(self) -> list[int]:
        return [i for i in range(self.n_chunks) if not self._chunk_path(i).exists()]

    @property
    def complete(self) -> bool:
        return self.has_sparse and not self.missing_chunks()

    # -- sparse points -------------------------------------------------------
    @property
    def has_sparse(self) -> bool:
        return (self.path / "sparse.h5").exists()

    def write_sparse(self, sparse: SparsePoints, L: np.ndarray, jitter: float) -> None:
        import h5py

        final = self.path / "sparse.h5"
        tmp = _tmp_name(final)
        with h5py.File(tmp, "w") as h:
            h.attrs["key"] = self.manifest["key"]
            h.attrs["species"] = np.array(sparse.species, dtype=np.int64)
            h.attrs["jitter"] = float(jitter)
            h.attrs["dropped"] = json.dumps(sparse.dropped)
            h.create_dataset("L", data=L)
            for z in sparse.species:
                h.create_dataset(f"vectors/{z}", data=sparse.vectors[z])
                h.create_dataset(f"locations/{z}", data=sparse.locations[z])
        _fsync_replace(tmp, final)

    def read_sparse(self) -> tuple[SparsePoints, np.ndarray, float]:
        import h5py

        with h5py.File(self.path / "sparse.h5", "r") as h:
            if h.attrs["key"] != self.manifest["key"]:
                raise StoreMismatchError(f"{self.path}/sparse.h5 belongs to another store; delete the directory")
            species = tuple(int(z) for z in h.attrs["species"])
            vectors = {z: h[f"vectors/{z}"][()] for z in species}
            locations = {z: h[f"locations/{z}"][()] for z in species}
            dropped = json.loads(h.attrs["dropped"])
            return SparsePoints(species, vectors, locations, dropped), h["L"][()], float(h.attrs["jitter"])

    # -- chunks --------------------------------------------------------------
    def write_chunk(self, index: int, result: dict) -> None:
        import h5py

        start, stop = self.chunk_range(index)
        if len(result["psi"]) != stop - start:
            raise ValueError(f"chunk {index} has {len(result['psi'])} rows, expected {stop - start}")
        final = self._chunk_path(index)
        tmp = _tmp_name(final)
        with h5py.File(tmp, "w") as h:
            h.attrs["key"] = self.manifest["key"]
            h.attrs["start"] = start
            h.attrs["stop"] = stop
            h.create_dataset("psi", data=result["psi"].astype(self.dtype, copy=False))
            h.create_dataset("n_atoms", data=result["n_atoms"])
            h.create_dataset("mean_descriptor", data=result["mean_descriptor"].astype(np.float32))
        _fsync_replace(tmp, final)

    def _iter_chunk_files(self):
        import h5py

        for i in range(self.n_chunks):
            start, stop = self.chunk_range(i)
            path = self._chunk_path(i)
            if not path.exists():
                raise StoreMismatchError(f"store {self.path} is incomplete (chunk {i} missing); rebuild to resume it")
            with h5py.File(path, "r") as h:
                if h.attrs["key"] != self.manifest["key"] or (int(h.attrs["start"]), int(h.attrs["stop"])) != (start, stop):
                    raise StoreMismatchError(f"{path} belongs to another store; delete the store directory")
                yield start, stop, h

    def load_rows(self, M: int) -> tuple[np.ndarray, np.ndarray]:
        """Ψ (N, M) in the store dtype and atoms per frame (N,), read in place."""
        psi = np.empty((self.n_frames, M), dtype=self.dtype)
        n_atoms = np.empty(self.n_frames, dtype=np.int64)
        for start, stop, h in self._iter_chunk_files():
            h["psi"].read_direct(psi, dest_sel=np.s_[start:stop])
            n_atoms[start:stop] = h["n_atoms"][()]
        return psi, n_atoms

    def load_mean_descriptors(self) -> np.ndarray:
        """Mean-pooled descriptors (N, S·D) float32, e.g. for FPS over frames."""
        out = None
        for start, stop, h in self._iter_chunk_files():
            ds = h["mean_descriptor"]
            if out is None:
                out = np.empty((self.n_frames, ds.shape[1]), dtype=np.float32)
            ds.read_direct(out, dest_sel=np.s_[start:stop])
        return out


def store_key(inputs: dict) -> str:
    """sha256 of the canonical JSON of ``inputs`` (integral floats as ints: ζ = 4 and
    ζ = 4.0, as the CLI passes it, are the same store)."""
    return hashlib.sha256(json.dumps(_canonical(inputs), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _canonical(obj):
    if isinstance(obj, dict):
        return {k: _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    return obj


def _describe_difference(old: dict, new: dict) -> str:
    """Human-readable list of the inputs that differ between two key dicts."""

    def walk(a, b, prefix):
        if isinstance(a, dict) and isinstance(b, dict):
            out = []
            for k in sorted(set(a) | set(b)):
                out += walk(a.get(k), b.get(k), f"{prefix}{k}.")
            return out
        if a != b:
            sa, sb = (str(x)[:24] for x in (a, b))
            return [f"{prefix[:-1]}: stored {sa} vs requested {sb}"]
        return []

    diffs = walk(old, new, "")
    return "; ".join(diffs) if diffs else "different store format"


# ---------------------------------------------------------------------------
# sparse points from a sample
# ---------------------------------------------------------------------------

def sample_frames_for_sparse(frames: Sequence[Atoms], n_environments: int, *, seed: int = 0) -> np.ndarray:
    """Sorted indices of whole frames holding ≈ ``n_environments`` environments.

    Frames are drawn without replacement in the order of
    ``default_rng([seed, 7]).permutation(N)`` until the sample holds at least
    ``n_environments`` atoms; then, for each pool species absent from the sample, the
    first frame of that permutation containing it is added (stratification by species).
    """
    n_atoms = np.fromiter((len(a) for a in frames), dtype=np.int64, count=len(frames))
    order = np.random.default_rng([seed, 7]).permutation(len(frames))
    take = int(np.searchsorted(np.cumsum(n_atoms[order]), n_environments)) + 1
    chosen = set(order[:take].tolist())
    seen = {int(z) for i in chosen for z in np.unique(frames[i].numbers)}
    pool_species = {int(z) for a in frames for z in np.unique(a.numbers)}
    for z in sorted(pool_species - seen):
        for i in order[take:]:
            if z in set(frames[int(i)].numbers.tolist()):
                chosen.add(int(i))
                break
    return np.array(sorted(chosen), dtype=np.int64)


def choose_sparse_sampled(frames: Sequence[Atoms], descriptor, species, n_sparse, *, method: str, kernel: Kernel,
                          seed: int, n_environments: int, chunk_size: int = 100, cache_limit_bytes: float = 5e8,
                          progress: Progress = NULL_PROGRESS) -> SparsePoints:
    """CUR/FPS sparse points chosen among a frame sample (:func:`sample_frames_for_sparse`).

    Locations are pool indices ``[frame, atom]``. With ``n_environments`` ≥ the pool's
    atoms the sample is the whole pool and the choice equals the exact one.
    """
    idx = sample_frames_for_sparse(frames, n_environments, seed=seed)
    subset = [frames[int(i)] for i in idx]
    source = DescriptorSource(descriptor, subset, chunk_size=chunk_size, cache_limit_bytes=cache_limit_bytes,
                              progress=progress, spill=False)
    sparse = choose_sparse_points(source, species, n_sparse, method=method, kernel=kernel, seed=seed)
    locations = {}
    for z in sparse.species:
        loc = np.array(sparse.locations[z], dtype=np.int64).copy()
        loc[:, 0] = idx[loc[:, 0]]
        locations[z] = loc
    dropped = [[int(idx[f]), int(a)] for f, a in sparse.dropped]
    return SparsePoints(sparse.species, sparse.vectors, locations, dropped)


# ---------------------------------------------------------------------------
# schedulers
# ---------------------------------------------------------------------------

def _make_client(scheduler):
    """(client, owned, n_in_flight) for ``scheduler``; client None means serial."""
    if scheduler is None or scheduler == "serial":
        return None, False, 1
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover
        raise ConfigurationError("the dask scheduler needs dask[distributed]: pip install 'dask[distributed]'") from None
    if isinstance(scheduler, Client):
        client, owned = scheduler, False
    elif scheduler == "local":
        cluster = LocalCluster(n_workers=1, threads_per_worker=os.cpu_count() or 1, processes=False,
                               dashboard_address=None)
        client, owned = Client(cluster), True
    elif isinstance(scheduler, str) and re.match(r"^(tcp|tls|inproc|ucx)://", scheduler):
        try:
            client, owned = Client(scheduler, timeout="20s"), True
        except OSError as exc:
            raise InputError(f"cannot connect to the Dask scheduler {scheduler}: {exc}") from None
    else:
        raise ConfigurationError(f"scheduler must be serial, local or an address like tcp://host:8786, got {scheduler!r}")
    threads = sum(client.nthreads().values()) or 1
    return client, owned, 2 * threads


def _close_client(client, owned) -> None:
    if client is not None and owned:
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None:
            cluster.close()


# ---------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------

def build_model_stored(
    frames: Sequence[Atoms],
    *,
    store,
    soap: SOAP = SOAP(),
    kernel: Kernel = Kernel(),
    noise: Noise = Noise(),
    n_sparse=100,
    sparse_method: str = "cur",
    seed: int = 0,
    chunk_size: int | None = None,
    memory_limit=None,
    scheduler=None,
    sparse_sample: int | None = DEFAULT_SPARSE_SAMPLE,
    dtype: str = "float64",
    config_types: Sequence | None = None,
    pool_sha256: str | Sequence[str] | None = None,
    n_atoms: Sequence[int] | None = None,
    species: Sequence[int] | None = None,
    progress: Progress = NULL_PROGRESS,
) -> InformationModel:
    """Whitened energy rows of a large pool through a resumable on-disk store.

    Same model as :func:`mlipdoe.model.gap_featomic.build_model` (energy observations), built
    chunk by chunk: sparse points → K_MM = L Lᵀ → for each chunk of frames,
    descriptors → Φ_chunk = Σ_atoms k(x, Z) → Ψ_chunk = Φ_chunk L⁻ᵀ, written to
    ``store`` as it completes. A complete store is only loaded.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        The pool (N frames).
    store : path
        Store directory (created if absent; see the module docstring).
    chunk_size : int, optional
        Frames per chunk (≤ 100 by default, fewer under ``memory_limit``). Fixed at
        store creation: a resumed store keeps its own.
    memory_limit : int or str, optional
        Peak RSS cap for this process, e.g. ``"4GB"`` (:func:`plan_chunk_size`).
    scheduler : None, "serial", "local", "tcp://host:port" or dask.distributed.Client
        Where the descriptor + row tasks (one per chunk) run. Results are identical
        to the serial path.
    sparse_sample : int or None
        Environments sampled for the sparse-point choice; ``None`` = exact choice over
        the whole pool (two extra streaming passes).
    dtype : {"float64", "float32"}
        Storage and in-memory precision of Ψ.
    pool_sha256 : str or list of str, optional
        Content hash(es) of the pool (e.g. the pool files' sha256); computed from the
        frames' arrays when omitted.
    n_atoms, species : sequences of int, optional
        Atoms per frame and the pool's species, when known without reading every frame
        (``Pool.n_atoms``, ``Pool.species``; a pool read through
        :func:`mlipdoe.pool_index.read_pool_indexed`). With both given and a complete
        store, only the first frame is read.

    Returns
    -------
    InformationModel
        ``timings`` holds seconds per stage: ``hash``, ``sparse_points`` (with its
        sample's descriptors), ``kernel_matrix``, ``descriptors`` and ``rows`` (summed
        over tasks), ``row_stage`` (wall), ``store_load``, ``build_total``; stages
        skipped thanks to the store are absent. ``model.store_info`` (dict) holds the
        store path, key, chunk size, chunks computed in this run and peak RSS.
    """
    t_start = time.perf_counter()
    timings: dict = {}
    kernel.validate()
    noise.validate()
    if dtype not in ("float64", "float32"):
        raise ConfigurationError(f"dtype must be float64 or float32, got {dtype!r}")
    if len(frames) == 0:
        raise InputError("the pool is empty")
    if sparse_method not in ("cur", "fps"):
        raise ConfigurationError(f"unknown sparse-point method {sparse_method!r} (use cur or fps)")
    limit = parse_memory(memory_limit)
    soap, pool_species = resolve_species(soap, frames, species=species)
    soap.validate()
    N = len(frames)
    n_atoms = np.array([len(a) for a in frames] if n_atoms is None else n_atoms, dtype=np.int64)
    n_atoms_total = int(n_atoms.sum())

    t = time.perf_counter()
    if pool_sha256 is None:
        pool_sha256 = frames_sha256(frames)
    timings["hash"] = time.perf_counter() - t
    exact = sparse_sample is None or int(sparse_sample) >= n_atoms_total
    inputs = {
        "pool": {"sha256": pool_sha256 if isinstance(pool_sha256, str) else list(pool_sha256),
                 "n_frames": N, "n_atoms": n_atoms_total},
        "soap": soap.to_dict(),
        "kernel": kernel.to_dict(),
        "observations": ["energy"],
        "n_sparse": n_sparse if isinstance(n_sparse, int) else {str(k): int(v) for k, v in dict(n_sparse).items()},
        "sparse_method": sparse_method,
        "sparse_sample": None if exact else int(sparse_sample),
        "seed": int(seed),
        "dtype": dtype,
    }

    client, owned, in_flight = _make_client(scheduler)
    try:
        descriptor = make_descriptor(soap)
        atom_dimension = descriptor.compute(frames[:1]).dimension
        dimension = len(soap.species) * atom_dimension  # conservative per-atom size for planning
        M_total = (sum(dict(n_sparse).values()) if not isinstance(n_sparse, int) else n_sparse * len(pool_species))
        baseline = current_rss()
        plan = plan_chunk_size(memory_limit=limit, baseline_bytes=baseline, n_frames=N,
                               mean_atoms=n_atoms_total / N, dimension=dimension, M=M_total,
                               itemsize=np.dtype(dtype).itemsize, in_flight=in_flight if client else 1,
                               chunk_size=chunk_size)
        rs = RowStore.open(store, inputs, n_frames=N, chunk_size=plan.chunk_size, dtype=dtype)
        _check_resumable_under(plan, rs)
        cache_limit = 5e8 if limit is None else max(0.0, (limit - baseline - plan.resident_bytes) * 0.5)

        # -- sparse points and K_MM ------------------------------------------
        if rs.has_sparse:
            t = time.perf_counter()
            sparse, L, jitter = rs.read_sparse()
            timings["store_load_sparse"] = time.perf_counter() - t
        else:
            t = time.perf_counter()
            if exact:
                source = DescriptorSource(descriptor, frames, chunk_size=rs.chunk_size,
                                          cache_limit_bytes=cache_limit, progress=progress, spill=False)
                sparse = choose_sparse_points(source, pool_species, n_sparse, method=sparse_method,
                                              kernel=kernel, seed=seed)
            else:
                sparse = choose_sparse_sampled(frames, descriptor, pool_species, n_sparse, method=sparse_method,
                                               kernel=kernel, seed=seed, n_environments=int(sparse_sample),
                                               chunk_size=rs.chunk_size, cache_limit_bytes=cache_limit,
                                               progress=progress)
            timings["sparse_points"] = time.perf_counter() - t
            t = time.perf_counter()
            L, jitter = cholesky_with_jitter(sparse.kernel_matrix(kernel))
            timings["kernel_matrix"] = time.perf_counter() - t
            rs.write_sparse(sparse, L, jitter)
            sparse, L, jitter = rs.read_sparse()  # resumed runs use these exact bits too

        # -- rows, chunk by chunk --------------------------------------------
        missing = rs.missing_chunks()
        if missing:
            t = time.perf_counter()
            sec = _run_chunks(rs, missing, frames, soap, sparse, kernel, L, client, in_flight, progress)
            timings["row_stage"] = time.perf_counter() - t
            timings["descriptors"], timings["rows"] = sec
    finally:
        _close_client(client, owned)

    t = time.perf_counter()
    psi, stored_atoms = rs.load_rows(sparse.n_points)
    timings["store_load"] = time.perf_counter() - t
    if not np.array_equal(stored_atoms, n_atoms):
        raise StoreMismatchError(f"store {store} does not match the frames' atom counts; delete it and rebuild")
    timings["build_total"] = time.perf_counter() - t_start
    model = InformationModel(
        soap=soap, kernel=kernel, noise=noise, observations=("energy",), sparse=sparse,
        sparse_method=sparse_method, seed=int(seed), psi=psi, n_atoms=n_atoms,
        energy_variance=noise.energy_variance(n_atoms, config_types), L=L, jitter=jitter, timings=timings,
        config_types=list(config_types) if config_types is not None else None,
        notes=sparse_point_notes(sparse, n_sparse, sampled_environments=None if exact else int(sparse_sample),
                                 pool_environments=n_atoms_total),
    )
    # facts about the store run (not seconds, so not in ``timings``)
    model.store_info = {
        "path": str(rs.path), "key": rs.manifest["key"], "chunk_size": rs.chunk_size, "n_chunks": rs.n_chunks,
        "chunks_computed": len(missing), "dtype": str(rs.dtype), "peak_rss_bytes": peak_rss(),
        "memory_limit_bytes": limit, "planned_resident_bytes": plan.resident_bytes,
        "planned_chunk_bytes": plan.per_chunk_bytes, "sparse_sample": inputs["sparse_sample"],
    }
    return model


def _check_resumable_under(plan: ChunkPlan, rs: "RowStore") -> None:
    """Refuse to finish a store whose fixed chunk size no longer fits the memory limit.

    The chunk layout is fixed when a store is created (bit-identical resumes), so a run
    resumed under a lower ``memory_limit`` cannot shrink its chunks.
    """
    if plan.max_chunk_size is None or rs.chunk_size <= plan.max_chunk_size or rs.complete:
        return
    need = plan.bytes_for(rs.chunk_size)
    raise ConfigurationError(
        f"store {rs.path} was started with chunks of {rs.chunk_size} frames; finishing its "
        f"{len(rs.missing_chunks())} missing chunks needs about {need / 1e9:.3g} GB, over the memory limit "
        f"{plan.limit_bytes / 1e9:.3g} GB (chunks of at most {plan.max_chunk_size} frames fit); raise "
        f"--memory-limit to {need / 1e9:.3g}GB or use a new --store directory"
    )


def _run_chunks(rs: RowStore, indices, frames, soap, sparse, kernel, L, client, in_flight, progress):
    """Compute and write the chunks ``indices``; returns summed (descriptor, row) seconds."""
    n_frames_todo = sum(rs.chunk_range(i)[1] - rs.chunk_range(i)[0] for i in indices)
    sec_desc = sec_rows = 0.0
    with progress.stage("rows", n_frames_todo) as advance:
        def done(index, result):
            nonlocal sec_desc, sec_rows
            rs.write_chunk(index, result)
            sec_desc += result["seconds_descriptors"]
            sec_rows += result["seconds_rows"]
            advance(len(result["psi"]), int(result["n_atoms"].sum()))

        if client is None:
            for i in indices:
                a, b = rs.chunk_range(i)
                done(i, chunk_rows(frames[a:b], soap, sparse, kernel, L))
            return sec_desc, sec_rows

        from dask.distributed import as_completed

        shared = client.scatter([soap, sparse, kernel, L], broadcast=True)
        todo = list(indices)
        futures = {}

        def submit(i):
            a, b = rs.chunk_range(i)
            fut = client.submit(chunk_rows, list(frames[a:b]), *shared, key=f"mlipdoe-rows-{rs.manifest['key'][:12]}-{i}",
                                pure=False)
            futures[fut] = i
            return fut

        queue = as_completed([submit(i) for i in todo[:in_flight]])
        next_i = in_flight
        for fut in queue:
            i = futures.pop(fut)
            result = fut.result()
            fut.release()
            done(i, result)
            if next_i < len(todo):
                queue.add(submit(todo[next_i]))
                next_i += 1
    return sec_desc, sec_rows


def open_store(path) -> RowStore:
    """An existing store, without checking inputs (for inspection and baselines)."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        raise InputError(f"{path} is not an mlipdoe store (no manifest.json)")
    return RowStore(path, json.loads(manifest_path.read_text()))


__all__ = [
    "ChunkPlan",
    "RowStore",
    "build_model_stored",
    "choose_sparse_sampled",
    "chunk_rows",
    "current_rss",
    "frames_sha256",
    "open_store",
    "parse_memory",
    "peak_rss",
    "plan_chunk_size",
    "sample_frames_for_sparse",
    "store_key",
]
