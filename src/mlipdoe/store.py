"""Resumable on-disk store of whitened energy rows (and force factors), bounded memory and Dask.

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
    frame and mean-pooled descriptors (for baselines such as FPS on frames); in a
    force store (``observations=("energy", "forces")``) also each frame's force factor
    R_s (below) as one ``force_factors`` (Σ k_s × M) dataset with ``force_offsets``
    (n_chunk + 1), the singular values of Ψ_F,s (``force_singular``, with
    ``singular_offsets``) and the chunk's Σ_s Ψ_F,sᵀΨ_F,s / (3 n_s) (``force_moment``).

Every file is written to a temporary name, fsynced and renamed into place
(``os.replace`` is atomic on POSIX), so a chunk file either exists complete or not at
all: a run killed at any point (kill -9) resumes from the chunks present and, because
every chunk is computed by the same function from the same inputs and the same
stored sparse points, the result is bit-identical to an uninterrupted run.

What is *not* in the key: the noise model and config types. They only scale rows at
load time (σ_E² n_s), so changing σ_E reuses the store, correctly.

Force factors. For frame s with whitened force rows Ψ_F,s (3 n_s × M, unscaled, from
:func:`~mlipdoe.model.gap_featomic.iter_observation_rows`), the store keeps the leading
k_s rows of R_s = :func:`~mlipdoe.model.rows.compress_rows` (Ψ_F,s), R_sᵀR_s = Ψ_F,sᵀΨ_F,s,
chosen by :func:`~mlipdoe.model.rows.information_rank` to hold ``force_information``
(default 0.999) of log det(I + R_sᵀR_s/σ_F²) at the floor σ_F = ``force_sigma``. At load
the frame's block is W_sᵀW_s = ψ_sψ_sᵀ/(σ_E² n_s) + R_sᵀR_s/σ_F(s)², and its factor W_s
the (1 + k_s) × M stack of both. The kept share only grows with σ_F and truncation costs
a larger block (energy row, design) no more than R_s alone, so every frame keeps at least
``force_information`` of log det(I + W_sᵀW_s), and its D gain at any design loses at most
(1 − ``force_information``) · log det(I + W_sᵀW_s), for any noise with σ_F ≥ the floor. The floor
and the fraction are in the key (``force_factors``); a request with a larger σ_F reuses
the store, one with a smaller σ_F is refused. ``force_information=1`` keeps every
singular value above :data:`~mlipdoe.model.rows.COMPRESSION_RTOL` (no truncation).

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
from .hypers import check_observations
from .model.gap_featomic import DEFAULT_GRADIENT_CHUNK_ATOMS, chunk_energy_rows, iter_observation_rows, segment_sums
from .model.kernels import (
    Kernel,
    SparsePoints,
    cholesky_with_jitter,
    choose_sparse_points,
    sparse_point_notes,
)
from .model.rows import _single_blas_thread, compress_rows, information_rank, whiten
from .pool import frames_sha256
from .progress import NULL_PROGRESS, Progress

STORE_FORMAT = 3  # 2: integral floats canonicalised in the key; 3: independent power-spectrum components
#: featomic is fastest on chunks of ~100 frames; larger chunks only cost memory.
MAX_CHUNK_FRAMES = 100
#: Default number of environments sampled for the sparse-point choice.
DEFAULT_SPARSE_SAMPLE = 50_000
#: Bytes per atom per float of the descriptor stage (featomic tensor, property move,
#: float64 copy, normalised copy, kernel input): a conservative multiple.
_DESCRIPTOR_COPIES = 6
#: Copies of the (n_atoms_chunk × M) kernel block (X Zᵀ, its power base, reduceat).
_KERNEL_COPIES = 3
#: Gradient samples per atom (neighbours within the cutoff, itself included) when not
#: measured: a conservative count for dense metals at a 5 Å cutoff.
_GRADIENT_NEIGHBOURS = 60
#: Copies of the (3 n_atoms_chunk × M) force rows per chunk (raw, whitened, compressed, written).
_FORCE_COPIES = 3
#: Default share of each frame's force information kept by the force factors.
DEFAULT_FORCE_INFORMATION = 0.999

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
    #: Atoms per featomic gradient call of a force store (None without forces).
    gradient_atoms: int | None = None

    def bytes_for(self, chunk_size: int) -> int:
        """Planned peak RSS with chunks of ``chunk_size`` frames."""
        per_frame = self.per_chunk_bytes / max(self.chunk_size, 1)
        return int(self.baseline_bytes + self.resident_bytes + self.in_flight * chunk_size * per_frame)


def plan_chunk_size(*, memory_limit: int | None, baseline_bytes: int, n_frames: int, mean_atoms: float,
                    dimension: int, M: int, itemsize: int, in_flight: int = 1,
                    chunk_size: int | None = None, forces: bool = False,
                    factor_rows: float = 0.0, gradient_samples: float = _GRADIENT_NEIGHBOURS) -> ChunkPlan:
    """Frames per chunk such that baseline + resident + in_flight × chunk ≤ limit.

    Resident: the selection's Ψ (N·M·itemsize) plus ~6 M² float64 (F̃, F̃⁻¹, L, update
    temporaries) plus one 8192-row float64 gain block. Per chunk of c frames with
    a = c·mean_atoms atoms: a·D·8·6 (descriptors) + a·M·8·3 (kernel block) + c·M·8·3
    (rows, whitened rows, written copy).

    With ``forces``: per chunk also a·3·M·8·3 (its force rows: raw, whitened, compressed
    factors and their written copy) plus, per chunk in flight, the gradient pass over
    ``gradient_atoms`` atoms at a time (counted as resident): ``gradient_samples`` per
    atom (neighbours, measured on the first frame) × 3 × (4 D + 4 M) float64 (featomic's
    gradients of two calls — the next is computed while this one's rows are formed — and
    their merged copies, the kernel-gradient block and its temporaries).
    ``gradient_atoms`` is :data:`~mlipdoe.model.gap_featomic.DEFAULT_GRADIENT_CHUNK_ATOMS`
    or, under a limit, what half the free budget holds (at least one frame). Resident
    also N·``factor_rows``·M·itemsize for the loaded factors, ``factor_rows`` the mean
    rows per frame (1 + k_s, measured on a store's chunks; 0 before any chunk exists,
    when the load checks the measured size against the limit itself).
    """
    per_atom = dimension * 8 * _DESCRIPTOR_COPIES + M * 8 * _KERNEL_COPIES
    per_frame = mean_atoms * per_atom + M * 8 * 3
    resident = n_frames * M * itemsize + 6 * M * M * 8 + 2 * min(n_frames, 8192) * M * 8
    gradient_atoms = None
    if forces:
        per_frame += mean_atoms * 3 * M * 8 * _FORCE_COPIES
        resident += n_frames * float(factor_rows) * M * itemsize
        per_gradient_atom = float(gradient_samples) * 3 * (4 * dimension + 4 * M) * 8
        gradient_atoms = DEFAULT_GRADIENT_CHUNK_ATOMS
        if memory_limit is not None:
            free = memory_limit - baseline_bytes - resident
            gradient_atoms = int(min(gradient_atoms, max(np.ceil(mean_atoms), 0.5 * free / (in_flight * per_gradient_atom))))
        resident += in_flight * min(gradient_atoms, max(n_frames, 1) * mean_atoms) * per_gradient_atom
    if memory_limit is None:
        size = chunk_size or MAX_CHUNK_FRAMES
        return ChunkPlan(int(size), int(resident), int(size * per_frame), in_flight, None, None, int(baseline_bytes),
                         gradient_atoms)
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
                     int(baseline_bytes), gradient_atoms)


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


def chunk_rows(frames: Sequence[Atoms], soap: SOAP, sparse: SparsePoints, kernel: Kernel, L: np.ndarray, *,
               forces: tuple | None = None) -> dict:
    """Whitened energy rows and mean-pooled descriptors of one chunk of frames (and with
    ``forces = (information, sigma_force, gradient_atoms)`` its force factors, :func:`chunk_force_factors`).

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
    out = {
        "psi": psi,
        "n_atoms": np.array([len(a) for a in frames], dtype=np.int64),
        "mean_descriptor": pooled,
        "seconds_descriptors": t1 - t0,
        "seconds_rows": t2 - t1,
    }
    if forces is not None:
        out.update(chunk_force_factors(frames, soap, sparse, kernel, L, information=forces[0], sigma_force=forces[1],
                                       gradient_atoms=forces[2]))
        out["seconds_forces"] = time.perf_counter() - t2
    return out


def chunk_force_factors(frames: Sequence[Atoms], soap: SOAP, sparse: SparsePoints, kernel: Kernel, L: np.ndarray, *,
                        information: float, sigma_force: float,
                        gradient_atoms: int = DEFAULT_GRADIENT_CHUNK_ATOMS) -> dict:
    """Truncated force factors R_s of one chunk of frames (module docstring).

    The force rows are the model layer's (:func:`~mlipdoe.model.gap_featomic.iter_observation_rows`,
    whitened, not noise-scaled), compressed by :func:`~mlipdoe.model.rows.compress_rows`
    and cut by :func:`~mlipdoe.model.rows.information_rank` at variance ``sigma_force²``;
    descriptor gradients are computed ``gradient_atoms`` atoms at a time.

    Returns
    -------
    dict with ``force_factors`` (Σ k_s, M) float64, ``force_offsets`` (n + 1,) int64,
    ``force_singular`` (Σ r_s,) the singular values of every Ψ_F,s (descending; the
    first k_s are kept), ``singular_offsets`` (n + 1,) and ``force_moment`` (M, M)
    = Σ_s Ψ_F,sᵀΨ_F,s / (3 n_s) of the chunk (untruncated).
    """
    L = np.require(L, requirements="A")
    M = sparse.n_points
    factors, singular, ranks, full_ranks = [], [], [], []
    moment = np.zeros((M, M))
    rows_of = iter_observation_rows(_descriptor_for(soap), list(frames), sparse=sparse, kernel=kernel, L=L,
                                    noise=Noise(), observations=("energy", "forces"), max_atoms=int(gradient_atoms))
    for _, rows in rows_of:
        f = rows.psi[rows.kind == "force"]
        R = compress_rows(f)
        if len(R):
            with _single_blas_thread():  # the same bits in every process (see rows.whiten)
                moment += R.T @ R / len(f)
        k = information_rank(R, sigma_force**2, information)
        factors.append(R[:k])
        singular.append(np.sqrt(np.einsum("ij,ij->i", R, R)))
        ranks.append(k)
        full_ranks.append(len(R))
    return {
        "force_factors": np.concatenate(factors) if factors else np.zeros((0, M)),
        "force_offsets": np.concatenate([[0], np.cumsum(ranks)]).astype(np.int64),
        "force_singular": np.concatenate(singular) if singular else np.zeros(0),
        "singular_offsets": np.concatenate([[0], np.cumsum(full_ranks)]).astype(np.int64),
        "force_moment": moment,
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
    def open(cls, path, inputs: dict, *, n_frames: int, chunk_size: int, dtype: str,
             gradient_atoms: int | None = None) -> "RowStore":
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
        if gradient_atoms is not None:
            manifest["layout"]["gradient_atoms"] = int(gradient_atoms)
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
    def gradient_atoms(self) -> int:
        """Atoms per featomic gradient call in the force rows (fixed at creation: resumes are bit-identical)."""
        return int(self.manifest["layout"].get("gradient_atoms", DEFAULT_GRADIENT_CHUNK_ATOMS))

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
            if "force_factors" in result:
                h.create_dataset("force_factors", data=result["force_factors"].astype(self.dtype, copy=False))
                for name in ("force_offsets", "force_singular", "singular_offsets", "force_moment"):
                    h.create_dataset(name, data=result[name])
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

    @property
    def has_forces(self) -> bool:
        return "forces" in self.manifest["inputs"].get("observations", [])

    def force_rank_sum(self) -> tuple[int, int]:
        """(Σ k_s over the completed chunks, frames in them): the loaded factors' size."""
        import h5py

        rows = frames = 0
        for i in self.completed_chunks():
            with h5py.File(self._chunk_path(i), "r") as h:
                rows += int(h["force_offsets"][-1])
                frames += len(h["force_offsets"]) - 1
        return rows, frames

    def load_factors(self, psi: np.ndarray, energy_scale: np.ndarray, force_scale: np.ndarray, *,
                     in_memory: bool = True) -> dict:
        """Every frame's factor W_s = [ψ_s·energy_scale_s ; R_s·force_scale_s].

        Returns a dict with ``factors`` (N factors, frame s's (1 + k_s) × M in the store
        dtype, energy row first: views into one stacked array, or with ``in_memory=False``
        a :class:`StoredFactors` that reads them from the chunk files when asked, with the
        same numbers), ``bytes`` (their size in memory), ``ranks`` k_s (N,), ``full_ranks``
        rank of Ψ_F,s (N,), ``retained`` (N,) the share of log det(I + R_sᵀR_s·force_scale_s²)
        the kept rows hold (from the stored singular values), and ``moment``
        Σ_s Ψ_F,sᵀΨ_F,s / (3 n_s) (M × M).
        """
        N, M = psi.shape
        ranks = np.empty(N, dtype=np.int64)
        full_ranks = np.empty(N, dtype=np.int64)
        retained = np.empty(N)
        moment = np.zeros((M, M))
        chunk_offsets = []
        for start, stop, h in self._iter_chunk_files():
            off = h["force_offsets"][()]
            chunk_offsets.append(off)
            ranks[start:stop] = np.diff(off)
            sv, soff = h["force_singular"][()], h["singular_offsets"][()]
            full_ranks[start:stop] = np.diff(soff)
            moment += h["force_moment"][()]
            for local in range(stop - start):
                sing = sv[soff[local] : soff[local + 1]]
                terms = np.log1p((sing * force_scale[start + local]) ** 2)
                total = terms.sum()
                retained[start + local] = terms[: ranks[start + local]].sum() / total if total > 0 else 1.0
        out = {"ranks": ranks, "full_ranks": full_ranks, "retained": retained, "moment": moment,
               "bytes": int((ranks.sum() + N) * M * self.dtype.itemsize)}
        if not in_memory:
            out["factors"] = StoredFactors(self, psi, energy_scale, force_scale, chunk_offsets)
            return out
        offsets = np.concatenate([[0], np.cumsum(ranks + 1)]).astype(np.int64)
        blocks = np.empty((int(offsets[-1]), M), dtype=self.dtype)
        energy_at = offsets[:-1]
        blocks[energy_at] = psi * energy_scale[:, None]
        for start, stop, h in self._iter_chunk_files():
            R = h["force_factors"][()]
            owner = np.repeat(np.arange(start, stop), ranks[start:stop])
            within = np.arange(len(R)) - np.repeat(h["force_offsets"][:-1], ranks[start:stop])
            blocks[offsets[owner] + 1 + within] = R * force_scale[owner, None]
        out["factors"] = [blocks[offsets[s] : offsets[s + 1]] for s in range(N)]
        return out

    def load_mean_descriptors(self) -> np.ndarray:
        """Mean-pooled descriptors (N, S·D) float32, e.g. for FPS over frames."""
        out = None
        for start, stop, h in self._iter_chunk_files():
            ds = h["mean_descriptor"]
            if out is None:
                out = np.empty((self.n_frames, ds.shape[1]), dtype=np.float32)
            ds.read_direct(out, dest_sel=np.s_[start:stop])
        return out


class StoredFactors(Sequence):
    """The frames' force-store factors, read from the chunk files when asked.

    ``factors[s]`` is W_s = [ψ_s·energy_scale_s ; R_s·force_scale_s] ((1 + k_s) × M, the
    store dtype), the same numbers :meth:`RowStore.load_factors` stacks in memory: only
    that frame's rows of its chunk's ``force_factors`` are read. Memory: the energy rows
    (held by the model anyway) and at most :attr:`max_open` open chunk files. Criteria
    ask for factors a batch of candidates at a time, so a gains sweep over the pool
    holds one batch of factors, whatever N.
    """

    #: Chunk files kept open (least recently used closed first).
    max_open = 64

    def __init__(self, store: RowStore, psi, energy_scale, force_scale, chunk_offsets):
        self._store, self._psi = store, psi
        self._energy_scale, self._force_scale = energy_scale, force_scale
        self._offsets = chunk_offsets
        self._open: dict = {}
        self.sizes = np.concatenate([np.diff(o) for o in chunk_offsets]).astype(np.int64) + 1 \
            if chunk_offsets else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._psi)

    def _file(self, chunk: int):
        import h5py

        h = self._open.pop(chunk, None)
        if h is None:
            if len(self._open) >= self.max_open:
                oldest = next(iter(self._open))
                self._open.pop(oldest).close()
            h = h5py.File(self._store._chunk_path(chunk), "r")
        self._open[chunk] = h  # most recent last
        return h

    def __getitem__(self, s):
        if isinstance(s, slice):
            return [self[k] for k in range(*s.indices(len(self)))]
        s = int(s)
        if not -len(self) <= s < len(self):
            raise IndexError(f"frame {s} is not in the pool of {len(self)}")
        s %= len(self)
        chunk = s // self._store.chunk_size
        local = s - chunk * self._store.chunk_size
        lo, hi = int(self._offsets[chunk][local]), int(self._offsets[chunk][local + 1])
        W = np.empty((1 + hi - lo, self._psi.shape[1]), dtype=self._store.dtype)
        W[0] = self._psi[s] * self._energy_scale[s]
        if hi > lo:
            W[1:] = self._file(chunk)["force_factors"][lo:hi] * self._force_scale[s]
        return W

    def close(self) -> None:
        for h in self._open.values():
            h.close()
        self._open.clear()

    def __del__(self):  # pragma: no cover - interpreter shutdown order
        try:
            self.close()
        except Exception:
            pass


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
    elif scheduler == "processes":
        # one single-threaded worker process per core: featomic, BLAS and OpenMP each get one
        # thread there (set before the worker imports them), so chunks run side by side
        one = {name: "1" for name in ("RAYON_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        cluster = LocalCluster(n_workers=os.cpu_count() or 1, threads_per_worker=1, processes=True,
                               dashboard_address=None, env=one)
        client, owned = Client(cluster), True
    elif isinstance(scheduler, str) and re.match(r"^(tcp|tls|inproc|ucx)://", scheduler):
        try:
            client, owned = Client(scheduler, timeout="20s"), True
        except OSError as exc:
            raise InputError(f"cannot connect to the Dask scheduler {scheduler}: {exc}") from None
    else:
        raise ConfigurationError("scheduler must be serial, local, processes or an address like tcp://host:8786, "
                                 f"got {scheduler!r}")
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
    observations: Sequence[str] = ("energy",),
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
    force_information: float = DEFAULT_FORCE_INFORMATION,
    force_sigma: float | None = None,
    factors_in_memory: bool | None = None,
) -> InformationModel:
    """Whitened energy rows (and force factors) of a large pool through a resumable on-disk store.

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
    scheduler : None, "serial", "local", "processes", "tcp://host:port" or dask.distributed.Client
        Where the descriptor + row tasks (one per chunk) run: "local" is one Dask worker
        with a thread per core, "processes" one single-threaded Dask worker process per
        core. Results are identical to the serial path.
    sparse_sample : int or None
        Environments sampled for the sparse-point choice; ``None`` = exact choice over
        the whole pool (two extra streaming passes).
    observations : ("energy",) or ("energy", "forces")
        With forces, every frame's truncated force factor is stored too and the model
        has ``factors`` and ``pool_force_moment`` like the in-memory force model.
    force_information : float
        Share of each frame's force information log det(I + R_sᵀR_s/σ_F²) its stored
        factor keeps (module docstring); 1 = no truncation.
    force_sigma : float, optional
        The σ_F floor (eV/Å) the truncation is chosen at: the store serves any noise
        with every σ_F ≥ it. Default: the smallest force σ of ``noise``.
    factors_in_memory : bool, optional
        Where the loaded force factors live: True in memory (refused in one line when they
        do not fit ``memory_limit``), False read from the chunk files when a criterion asks
        for them (:class:`StoredFactors`: same numbers, memory bounded by one batch of
        candidates), None (default) in memory unless they do not fit ``memory_limit``, then
        on disk with a note.
    dtype : {"float64", "float32"}
        Storage and in-memory precision of Ψ (and of the force factors).
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
        sample's descriptors), ``kernel_matrix``, ``descriptors``, ``rows`` and
        ``force_rows`` (summed over tasks), ``row_stage`` (wall), ``store_load``,
        ``build_total``; stages skipped thanks to the store are absent.
        ``model.store_info`` (dict) holds the store path, key, chunk size, chunks
        computed in this run and peak RSS; with forces also the mean factor rank
        ``force_rank_mean`` vs ``force_rows_mean`` (3 n_s), ``force_retained_min`` (the
        worst frame's kept share of its force information at this noise) and
        ``factor_bytes`` (the loaded factors).
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
    observations = check_observations(observations)
    if "virials" in observations:
        raise InputError("the store holds energy and force rows: drop virials from the observations "
                         "(virial designs are computed in memory)")
    forces = "forces" in observations
    if forces and not 0 < float(force_information) <= 1:
        raise ConfigurationError(f"force_information must be in (0, 1], got {force_information}")
    if forces and force_sigma is None:
        force_sigma = min([noise.force] + [float(t["force"]) for t in noise.per_config_type.values() if "force" in t])
    if forces and not float(force_sigma) > 0:
        raise ConfigurationError(f"force_sigma must be > 0, got {force_sigma}")
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
        "observations": list(observations),
        "n_sparse": n_sparse if isinstance(n_sparse, int) else {str(k): int(v) for k, v in dict(n_sparse).items()},
        "sparse_method": sparse_method,
        "sparse_sample": None if exact else int(sparse_sample),
        "seed": int(seed),
        "dtype": dtype,
    }
    if forces:
        inputs["force_factors"] = {"information": float(force_information), "sigma_force": float(force_sigma)}
        inputs = _reuse_force_floor(store, inputs)
    else:
        _refuse_other_observations(store, inputs)

    client, owned, in_flight = _make_client(scheduler)
    try:
        descriptor = make_descriptor(soap)
        first = descriptor.compute(frames[:1], gradients=["positions"] if forces else ())
        atom_dimension = first.dimension
        gradient_samples = (sum(len(b.gradients["positions"][1]) for b in first.blocks.values()) / len(frames[0])
                            if forces else 0.0)
        dimension = len(soap.species) * atom_dimension  # conservative per-atom size for planning
        M_total = (sum(dict(n_sparse).values()) if not isinstance(n_sparse, int) else n_sparse * len(pool_species))
        baseline = current_rss()
        plan = plan_chunk_size(memory_limit=limit, baseline_bytes=baseline, n_frames=N,
                               mean_atoms=n_atoms_total / N, dimension=dimension, M=M_total,
                               itemsize=np.dtype(dtype).itemsize, in_flight=in_flight if client else 1,
                               chunk_size=chunk_size, forces=forces,
                               factor_rows=_stored_factor_rows(store, forces) if factors_in_memory else 0.0,
                               gradient_samples=gradient_samples)
        rs = RowStore.open(store, inputs, n_frames=N, chunk_size=plan.chunk_size, dtype=dtype,
                           gradient_atoms=plan.gradient_atoms)
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
            force_args = (float(inputs["force_factors"]["information"]),
                          float(inputs["force_factors"]["sigma_force"]), rs.gradient_atoms) if forces else None
            sec = _run_chunks(rs, missing, frames, soap, sparse, kernel, L, client, in_flight, progress,
                              forces=force_args)
            timings["row_stage"] = time.perf_counter() - t
            timings.update(sec)
    finally:
        _close_client(client, owned)

    t = time.perf_counter()
    psi, stored_atoms = rs.load_rows(sparse.n_points)
    if not np.array_equal(stored_atoms, n_atoms):
        raise StoreMismatchError(f"store {store} does not match the frames' atom counts; delete it and rebuild")
    energy_variance = noise.energy_variance(n_atoms, config_types)
    loaded = _load_force_factors(rs, psi, energy_variance, noise, config_types, limit,
                                 factors_in_memory) if forces else None
    timings["store_load"] = time.perf_counter() - t
    timings["build_total"] = time.perf_counter() - t_start
    model = InformationModel(
        soap=soap, kernel=kernel, noise=noise, observations=observations, sparse=sparse,
        sparse_method=sparse_method, seed=int(seed), psi=psi, n_atoms=n_atoms,
        energy_variance=energy_variance, L=L, jitter=jitter, timings=timings,
        config_types=list(config_types) if config_types is not None else None,
        notes=sparse_point_notes(sparse, n_sparse, sampled_environments=None if exact else int(sparse_sample),
                                 pool_environments=n_atoms_total),
    )
    if loaded is not None:
        model.factors = loaded["factors"]
        model.pool_force_moment = loaded["moment"] / N
        if "note" in loaded:
            model.notes.append(loaded["note"])
    # facts about the store run (not seconds, so not in ``timings``)
    model.store_info = {
        "path": str(rs.path), "key": rs.manifest["key"], "chunk_size": rs.chunk_size, "n_chunks": rs.n_chunks,
        "chunks_computed": len(missing), "dtype": str(rs.dtype), "peak_rss_bytes": peak_rss(),
        "memory_limit_bytes": limit, "planned_resident_bytes": plan.resident_bytes,
        "planned_chunk_bytes": plan.per_chunk_bytes, "sparse_sample": inputs["sparse_sample"],
    }
    if forces:
        model.store_info["gradient_atoms"] = rs.gradient_atoms
    if loaded is not None:
        model.store_info.update({
            "force_information": inputs["force_factors"]["information"],
            "force_sigma": inputs["force_factors"]["sigma_force"],
            "force_rank_mean": float(loaded["ranks"].mean()), "force_rows_mean": float(3 * n_atoms.mean()),
            "force_full_rank_mean": float(loaded["full_ranks"].mean()),
            "force_retained_min": float(loaded["retained"].min()),
            "force_retained_worst_frame": int(loaded["retained"].argmin()),
            "factor_bytes": loaded["bytes"], "factors_in_memory": isinstance(loaded["factors"], list),
        })
    return model


def _stored_manifest_inputs(store) -> dict | None:
    path = Path(store) / "manifest.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text()).get("inputs", {})
    except (OSError, ValueError):
        return None  # RowStore.open reports it


def _refuse_other_observations(store, inputs: dict) -> None:
    """One line when ``store`` holds other observations than requested (never reused for them)."""
    stored = _stored_manifest_inputs(store)
    have = None if stored is None else stored.get("observations")
    if have is not None and list(have) != list(inputs["observations"]):
        raise StoreMismatchError(
            f"store {store} holds {'+'.join(have)} rows, the request observes {'+'.join(inputs['observations'])}; "
            f"use another --store directory for it (or delete this one)")


def _reuse_force_floor(store, inputs: dict) -> dict:
    """``inputs`` with the stored σ_F floor when that store serves the request (floor ≤ its σ_F).

    A force factor truncated at σ_F keeps its share for every larger σ_F, so the store
    of a lower floor is reused; one truncated at a higher floor is refused.
    """
    _refuse_other_observations(store, inputs)
    stored = _stored_manifest_inputs(store)
    old = (stored or {}).get("force_factors")
    new = inputs["force_factors"]
    if not old or old.get("information") != new["information"]:
        return inputs
    if float(old["sigma_force"]) > new["sigma_force"]:
        raise StoreMismatchError(
            f"store {store} keeps {new['information']:g} of each frame's force information for σ_F ≥ "
            f"{old['sigma_force']:g} eV/Å, the request has σ_F = {new['sigma_force']:g}; use another --store "
            f"directory for the smaller σ_F (or delete this one)")
    return dict(inputs, force_factors=dict(new, sigma_force=float(old["sigma_force"])))


def _stored_factor_rows(store, forces: bool) -> float:
    """Mean rows per frame (1 + k_s) of a force store's completed chunks (0 if none)."""
    if not forces or _stored_manifest_inputs(store) is None:
        return 0.0
    try:
        rows, n = open_store(store).force_rank_sum()
    except (OSError, KeyError, InputError):
        return 0.0
    return 1.0 + rows / n if n else 0.0


def _load_force_factors(rs: RowStore, psi, energy_variance, noise: Noise, config_types, limit,
                        in_memory: bool | None) -> dict:
    """The factors of a complete force store: in memory, or read from disk when asked
    (``in_memory=False``) or, by default, when they do not fit ``limit`` (then ``note`` says so)."""
    rows, n = rs.force_rank_sum()
    need = (rows + n) * psi.shape[1] * psi.dtype.itemsize
    over = limit is not None and current_rss() + need > limit
    if in_memory and over:
        raise ConfigurationError(
            f"the force factors need {need / 1e9:.3g} GB ({rows / max(n, 1):.1f} rows per frame of M = "
            f"{psi.shape[1]}) on top of {current_rss() / 1e9:.3g} GB in use, over the memory limit "
            f"{limit / 1e9:.3g} GB; raise --memory-limit, use dtype float32, a lower force_information, "
            "or keep the factors on disk")
    cts = config_types if config_types is not None else [None] * len(psi)
    force_scale = np.array([1.0 / noise.sigma("force", ct) for ct in cts])
    on_disk = in_memory is False or (in_memory is None and over)
    out = rs.load_factors(psi, 1.0 / np.sqrt(energy_variance), force_scale, in_memory=not on_disk)
    if on_disk and in_memory is None:
        out["note"] = (f"the force factors ({need / 1e9:.3g} GB) do not fit under the memory limit "
                       f"{limit / 1e9:.3g} GB: they are read from the store's chunk files when needed "
                       "(same designs, slower gains)")
    return out


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


def _run_chunks(rs: RowStore, indices, frames, soap, sparse, kernel, L, client, in_flight, progress, *,
                forces=None) -> dict:
    """Compute and write the chunks ``indices``; returns summed seconds per stage of the tasks."""
    n_frames_todo = sum(rs.chunk_range(i)[1] - rs.chunk_range(i)[0] for i in indices)
    seconds = {"descriptors": 0.0, "rows": 0.0}
    if forces is not None:
        seconds["force_rows"] = 0.0
    with progress.stage("rows", n_frames_todo) as advance:
        def done(index, result):
            rs.write_chunk(index, result)
            for name in seconds:
                seconds[name] += result[f"seconds_{'forces' if name == 'force_rows' else name}"]
            advance(len(result["psi"]), int(result["n_atoms"].sum()))

        if client is None:
            for i in indices:
                a, b = rs.chunk_range(i)
                done(i, chunk_rows(frames[a:b], soap, sparse, kernel, L, forces=forces))
            return seconds

        from dask.distributed import as_completed

        shared = client.scatter([soap, sparse, kernel, L], broadcast=True)
        todo = list(indices)
        futures = {}

        def submit(i):
            a, b = rs.chunk_range(i)
            fut = client.submit(chunk_rows, list(frames[a:b]), *shared, key=f"mlipdoe-rows-{rs.manifest['key'][:12]}-{i}",
                                pure=False, forces=forces)
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
    return seconds


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
    "chunk_force_factors",
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
