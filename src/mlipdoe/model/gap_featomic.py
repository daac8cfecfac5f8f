"""The GAP model on featomic SOAP: the one owner of its kernel rows (spec sections 1-5).

For a frame s with per-atom unit SOAP vectors x_i = p_i / |p_i| and sparse points z_m,

    energy   φ_m        = Σ_i k(x_i, z_m),                         k(x, z) = δ² (x·z)^ζ
    local    ℓ_i,m      = k(x_i, z_m)                               (Σ_i ℓ_i = φ)
    force    ψ_(j,a),m  = −Σ_i ∂k(x_i, z_m)/∂r_{j,a}
    virial   ψ_ab,m     = −Σ_i ∂k(x_i, z_m)/∂ε_ab                   (symmetrised, Voigt order)

The chain rule goes through featomic's analytic gradients of the *raw* power spectrum
p_i, the per-atom normalisation and the kernel power:

    dx_i = (I − x_i x_iᵀ) dp_i / |p_i|
    dk   = δ² ζ (x_i·z)^{ζ−1} z·dx_i
         = δ² ζ (x_i·z)^{ζ−1} (z·dp_i − (x_i·z)(x_i·dp_i)) / |p_i|.

Strain gradients are featomic's ∂p/∂ε_ab for positions and cell deformed by (I + ε);
the virial W_ab = −∂E/∂ε_ab is the symmetric part of the 3×3 matrix
(gap_fit/ASE convention: W = −V σ), reported as six rows (xx, yy, zz, yz, xz, xy).

Everything downstream is held in *whitened* coordinates (:mod:`.rows`): with K_MM = L Lᵀ
and Ψ = Φ L⁻ᵀ, F̃(S) = I + Σ_{s∈S} W_sᵀ W_s, W_s = Λ_s^{-1/2} Ψ_s, and
log det F̃(S) = log det F(S) − log det K_MM. Each pool frame contributes a *factor* W_s:
its scaled energy row, or with forces (and virials) a compressed factor of its
1 + 3n (+ 6) scaled rows with W_sᵀW_s = Ψ_sᵀ Λ_s⁻¹ Ψ_s exactly (docs/forces.md).

No other module computes a kernel row: the store, the built-in fit, assessment and
grading call the functions here (:func:`chunk_energy_rows`, :func:`chunk_local_rows`,
:func:`kernel_gradient_rows`, :func:`iter_observation_rows`).
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import scipy.linalg
import scipy.sparse
from ase import Atoms

from ..descriptors import (
    SOAP,
    AtomicDescriptors,
    SpeciesBlock,
    iter_descriptors,
    make_descriptor,
)
from ..exceptions import InputError
from ..hypers import Noise, check_observations
from ..progress import NULL_PROGRESS, Progress
from .base import PoolInformation
from .kernels import (
    Kernel,
    SparsePoints,
    cholesky_with_jitter,
    choose_sparse_points,
    sparse_point_notes,
)
from .rows import _VOIGT_PAIRS, ObservationRows, _single_blas_thread, whiten

#: Atoms per featomic call in the gradient pass (gradients are ~50 neighbours × 3 × D per atom).
DEFAULT_GRADIENT_CHUNK_ATOMS = 1000


class DescriptorSource:
    """Re-iterable chunks of pool descriptors: computed once, replayed from a cache.

    The first pass computes (and times) the descriptors chunk by chunk; every chunk is
    kept, in memory while the cache holds at most ``cache_limit_bytes``, and beyond that
    in a temporary on-disk cache (one ``.npz`` per chunk, deleted by :meth:`close` or
    when the source is garbage-collected). Later passes (CUR's two passes over all
    environments, then the rows) replay the cache, so the pool's SOAP is computed once
    and memory stays bounded on large pools. With ``spill=False`` nothing is written to
    disk: a pool whose descriptors exceed the limit is recomputed on every pass.
    """

    def __init__(self, descriptor, frames, *, chunk_size=100, cache_limit_bytes=2e9, progress=NULL_PROGRESS,
                 spill: bool = True):
        self.descriptor = descriptor
        self.frames = frames
        self.chunk_size = chunk_size
        self.progress = progress
        self.cache_limit_bytes = float(cache_limit_bytes)
        self.spill = bool(spill)
        self.n_passes = 0
        self._dropped = False
        self._cache: list = []          # (first, AtomicDescriptors or path of a spilled chunk)
        self._bytes_in_memory = 0
        self._spill_dir = None
        self._complete = False
        self.seconds = 0.0

    @property
    def bytes_on_disk(self) -> int:
        return sum(entry.stat().st_size for _, entry in self._cache if isinstance(entry, Path))

    def __call__(self):
        if self._complete:
            for first, entry in self._cache:
                yield first, (self._load(entry) if isinstance(entry, Path) else entry)
            return
        self._cache, self._bytes_in_memory, self._dropped = [], 0, False
        self.n_passes += 1
        with self.progress.stage("descriptors", len(self.frames)) as advance:
            it = iter_descriptors(self.descriptor, self.frames, chunk_size=self.chunk_size)
            while True:
                t0 = time.perf_counter()
                try:
                    first, desc = next(it)
                except StopIteration:
                    break
                self.seconds += time.perf_counter() - t0
                n = desc.n_frames
                advance(n, sum(len(a) for a in self.frames[first : first + n]))
                self._keep(first, desc)
                yield first, desc
        self._complete = not self._dropped

    def _keep(self, first: int, desc) -> None:
        size = sum(b.values.nbytes + b.norms.nbytes + b.frame.nbytes + b.atom.nbytes for b in desc.blocks.values())
        if self._dropped:
            return
        if self._bytes_in_memory + size <= self.cache_limit_bytes:
            self._cache.append((first, desc))
            self._bytes_in_memory += size
            return
        if not self.spill:
            self._cache, self._bytes_in_memory, self._dropped = [], 0, True
            return
        if self._spill_dir is None:
            self._spill_dir = tempfile.TemporaryDirectory(prefix="mlipdoe-descriptors-")
        path = Path(self._spill_dir.name) / f"chunk{first:09d}.npz"
        arrays = {"n_frames": np.array(desc.n_frames)}
        for z, b in desc.blocks.items():
            arrays.update({f"values_{z}": b.values, f"norms_{z}": b.norms, f"frame_{z}": b.frame, f"atom_{z}": b.atom})
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
        self._cache.append((first, path))

    @staticmethod
    def _load(path: Path):
        with np.load(path, allow_pickle=False) as npz:
            species = sorted(int(k.split("_")[1]) for k in npz.files if k.startswith("values_"))
            blocks = {z: SpeciesBlock(npz[f"values_{z}"], npz[f"norms_{z}"], npz[f"frame_{z}"], npz[f"atom_{z}"])
                      for z in species}
            return AtomicDescriptors(blocks, int(npz["n_frames"]))

    def close(self) -> None:
        """Drop the cache (and delete the on-disk part)."""
        self._cache, self._complete, self._bytes_in_memory = [], False, 0
        if self._spill_dir is not None:
            self._spill_dir.cleanup()
            self._spill_dir = None


def check_species(frames: Sequence[Atoms], species, *, what: str = "frame", covered_by: str = "the sparse points"
                  ) -> None:
    """Refuse frames with a species the model does not cover (its rows would be 0)."""
    covered = {int(z) for z in species}
    for k, atoms in enumerate(frames):
        extra = set(np.unique(atoms.numbers).tolist()) - covered
        if extra:
            raise InputError(f"{what} {k} contains species {sorted(extra)} not covered by {covered_by} "
                             f"(species {sorted(covered)})")


def segment_sums(values: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sums of consecutive row segments ``values[s:s+c]`` → (len(starts), cols).

    Equal segments (the common case of one crystal size) are a reshape-sum, ~20× faster
    than ``np.add.reduceat`` on these shapes.
    """
    if len(counts) and np.all(counts == counts[0]) and starts[0] == 0:
        return values.reshape(len(counts), int(counts[0]), -1).sum(axis=1)
    return np.add.reduceat(values, starts, axis=0)


def _species_dots(block, z: int, sparse: SparsePoints, cols: dict) -> np.ndarray:
    """x_i·z_m of every environment of species z in a chunk with that species' sparse points, (n_env, M_z)."""
    if z not in cols:
        raise InputError(f"species {z} is not covered by the sparse points (species {list(cols)})")
    # arrays unpickled on a Dask worker can sit at unaligned addresses, where numpy's matmul
    # skips BLAS and rounds differently: align them so every path gives the same bits
    X = np.require(block.values, requirements="A")
    Z = np.require(sparse.vectors[z], requirements=["A", "C"])
    return X @ Z.T


def _species_kernel(block, z: int, sparse: SparsePoints, kernel: Kernel, cols: dict) -> np.ndarray:
    """k(x_i, Z_z) = δ² (x_i·z_m)^ζ of every environment of species z in a chunk, (n_env, M_z)."""
    return kernel.power(_species_dots(block, z, sparse, cols))


def chunk_energy_rows(desc, sparse: SparsePoints, kernel: Kernel) -> np.ndarray:
    """Raw energy rows φ_s = Σ_{i∈s} k(x_i, Z) of one descriptor chunk, (n_frames, M).

    Only the (n_env × M_z) kernel block of one species exists at a time; the atom–atom
    kernel is never formed. featomic orders samples by frame, so frame sums are segment sums.
    """
    cols = sparse.slices()
    phi = np.zeros((desc.n_frames, sparse.n_points))
    for z, block in desc.blocks.items():
        K = _species_kernel(block, z, sparse, kernel, cols)
        present, starts = np.unique(block.frame, return_index=True)
        counts = np.diff(np.append(starts, len(block.frame)))
        phi[present, cols[z]] = segment_sums(K, starts, counts)
    return phi


def chunk_local_rows(desc, sparse: SparsePoints, kernel: Kernel, n_atoms: Sequence[int]) -> list[np.ndarray]:
    """Raw local rows ℓ_i = k(x_i, Z) of every atom of one chunk: per frame (n_atoms, M)."""
    cols = sparse.slices()
    out = [np.zeros((int(n), sparse.n_points)) for n in n_atoms]
    for z, block in desc.blocks.items():
        K = _species_kernel(block, z, sparse, kernel, cols)
        present, starts = np.unique(block.frame, return_index=True)
        stops = np.append(starts[1:], len(block.frame))
        for f, a, b in zip(present, starts, stops):
            out[int(f)][block.atom[a:b], cols[z]] = K[a:b]
    return out


def energy_rows(source, sparse: SparsePoints, kernel: Kernel, n_frames: int) -> np.ndarray:
    """Raw energy rows Φ (n_frames, M) of a chunk source ``() -> iter of (first, desc)``."""
    Phi = np.zeros((n_frames, sparse.n_points))
    for first, desc in source():
        Phi[first : first + desc.n_frames] = chunk_energy_rows(desc, sparse, kernel)
    return Phi


def kernel_gradient_rows(desc, sparse, kernel, n_atoms: Sequence[int], *, positions: bool = True,
                         strain: bool = False):
    """Raw (un-whitened) force and virial rows of every frame of one descriptor chunk.

    Parameters
    ----------
    desc : AtomicDescriptors
        One chunk, computed with the needed gradients (``"positions"``, ``"strain"``).
    sparse : SparsePoints
    kernel : Kernel
    n_atoms : (n_frames,) ints
        Atoms per frame of the chunk.

    Returns
    -------
    forces : (Σ n_atoms * 3, M) array or None
        −Σ_i ∂k(x_i, Z)/∂r_{j,a}, frame-major then atom-major then x, y, z.
    virials : (n_frames * 6, M) array or None
        −Σ_i ∂k(x_i, Z)/∂ε_ab, symmetrised, Voigt order per frame.
    """
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    n_frames = len(n_atoms)
    offsets = np.concatenate([[0], np.cumsum(n_atoms)])
    M = sparse.n_points
    cols = sparse.slices()
    forces = np.zeros((offsets[-1] * 3, M)) if positions else None
    strain_full = np.zeros((n_frames, 3, 3, M)) if strain else None
    zeta, d2 = float(kernel.zeta), kernel.delta**2
    for z, block in desc.blocks.items():
        dots = _species_dots(block, z, sparse, cols)  # (n_env, M_z)
        # dk/dp = A ⊙ (z·dp − (x·z)(x·dp)),  A = δ² ζ (x·z)^{ζ−1} / |p|; the second term is
        # summed per centre first: Σ_i (x_i·dp_i) ⊗ (A ⊙ x·z)_i, a sparse product with n_env × M_z
        A = d2 * zeta * (dots ** (zeta - 1.0) if zeta != 1 else np.ones_like(dots)) / block.norms[:, None]
        B = A * dots
        scale = block.gradient_scale
        Z = np.require(sparse.vectors[z] * scale if scale is not None else sparse.vectors[z], requirements=["A", "C"])
        x = block.values * scale if scale is not None else block.values  # z·(s ⊙ dp) = (s ⊙ z)·dp
        Mz = Z.shape[0]
        for name, wanted in (("positions", positions), ("strain", strain)):
            if not wanted:
                continue
            G, samples = block.gradients[name]
            row = samples[:, 0]
            D, n_grad = G.shape[-1], len(row)
            width = 3 if name == "positions" else 9
            G2 = np.require(G, requirements=["A", "C"]).reshape(n_grad * width, D)
            dk = (G2 @ Z.T).reshape(n_grad, width, Mz)
            dk *= A[row][:, None, :]
            gx = np.matmul(G.reshape(n_grad, width, D), x[row][:, :, None])[:, :, 0]  # (n_grad, width) x_i·dp
            if name == "positions":
                target = offsets[samples[:, 1]] + samples[:, 2]  # global atom index in the chunk
                n_out = offsets[-1]
            else:
                target = block.frame[row]
                n_out = n_frames
            # Σ over the samples (centres i) that move the same atom j (or deform the same frame)
            S = scipy.sparse.csr_matrix((np.ones(n_grad), (target, np.arange(n_grad))), shape=(n_out, n_grad))
            first = (S @ dk.reshape(n_grad, width * Mz)).reshape(n_out * width, Mz)
            # Σ_i gx_(ij,a) B_i: rows (j, a), columns the centres i
            T = scipy.sparse.csr_matrix((gx.reshape(-1), ((target[:, None] * width + np.arange(width)).reshape(-1),
                                                           np.repeat(row, width))),
                                        shape=(n_out * width, len(dots)))
            second = T @ B
            if name == "positions":
                forces[:, cols[z]] -= first - second
            else:
                strain_full[:, :, :, cols[z]] -= (first - second).reshape(n_frames, 3, 3, Mz)
    virials = None
    if strain:
        sym = 0.5 * (strain_full + strain_full.transpose(0, 2, 1, 3))
        virials = np.stack([sym[:, a, b] for a, b in _VOIGT_PAIRS], axis=1).reshape(n_frames * 6, M)
    return forces, virials


def _atom_chunks(frames: Sequence[Atoms], max_atoms: int) -> Iterator[tuple[int, int]]:
    """Consecutive ``[start, stop)`` frame ranges holding about ``max_atoms`` atoms each."""
    start, count = 0, 0
    for k, atoms in enumerate(frames):
        if count and count + len(atoms) > max_atoms:
            yield start, k
            start, count = k, 0
        count += len(atoms)
    if start < len(frames):
        yield start, len(frames)


def observation_block(noise: Noise, n_atoms: int, config_type, energy: np.ndarray, *,
                      forces: np.ndarray | None = None, virials: np.ndarray | None = None) -> ObservationRows:
    """One frame's whitened rows in the standard order, with their noise variances.

    ``energy`` (M,), ``forces`` (3n × M) atom-major, ``virials`` (6 × M) Voigt order;
    variances σ_E² n, σ_F², σ_V² n (``sigma_per_atom``), per ``config_type``.
    """
    per_atom = n_atoms if noise.per_atom else 1
    parts, var, kind = [np.atleast_2d(energy)], [noise.sigma("energy", config_type) ** 2 * per_atom], ["energy"]
    if forces is not None:
        parts.append(forces)
        var += [noise.sigma("force", config_type) ** 2] * len(forces)
        kind += ["force"] * len(forces)
    if virials is not None:
        parts.append(virials)
        var += [noise.sigma("virial", config_type) ** 2 * per_atom] * len(virials)
        kind += ["virial"] * len(virials)
    return ObservationRows(np.concatenate(parts), np.array(var, dtype=float), np.array(kind), int(n_atoms))


def iter_observation_rows(descriptor, frames: Sequence[Atoms], *, sparse, kernel, L: np.ndarray, noise,
                          observations: Sequence[str], config_types: Sequence | None = None,
                          max_atoms: int = DEFAULT_GRADIENT_CHUNK_ATOMS,
                          progress=None) -> Iterator[tuple[int, ObservationRows]]:
    """Yield ``(frame_index, ObservationRows)`` for every frame, streamed by atom chunks.

    Descriptor gradients are requested only for the observed kinds (position gradients
    cost ~20× the values). ``progress`` is an optional ``callable(n_frames, n_atoms)``.
    """
    observations = tuple(observations)
    want_f, want_v = "forces" in observations, "virials" in observations
    gradients = (["positions"] if want_f else []) + (["strain"] if want_v else [])
    check_species(frames, sparse.species)
    for k, atoms in enumerate(frames):
        if want_v and not np.all(atoms.pbc):
            raise InputError(f"frame {k} is not periodic in all directions: virials need a full cell "
                             "(drop 'virials' from the observations)")
    ranges = list(_atom_chunks(frames, max_atoms))
    # the next chunk's descriptors are computed in a second thread while this one's rows are
    # formed (featomic and BLAS release the GIL): the two stages overlap on two cores, and
    # each chunk's numbers are those of a serial run
    with ThreadPoolExecutor(max_workers=1) as ahead:
        pending = ahead.submit(descriptor.compute, frames[ranges[0][0]:ranges[0][1]], gradients=gradients) \
            if ranges else None
        for k, (start, stop) in enumerate(ranges):
            desc = pending.result()
            if k + 1 < len(ranges):
                a, b = ranges[k + 1]
                pending = ahead.submit(descriptor.compute, frames[a:b], gradients=gradients)
            yield from _chunk_observation_rows(desc, frames, start, stop, sparse=sparse, kernel=kernel, L=L,
                                               noise=noise, want_f=want_f, want_v=want_v,
                                               config_types=config_types)
            if progress is not None:
                progress(stop - start, sum(len(a) for a in frames[start:stop]))


def _chunk_observation_rows(desc, frames, start, stop, *, sparse, kernel, L, noise, want_f, want_v, config_types):
    """The ``(frame_index, ObservationRows)`` of frames ``start:stop`` from their descriptors ``desc``.

    The products run on one BLAS thread: OpenBLAS's threaded GEMM rounds differently from its
    single-threaded one, and worker processes run single-threaded, so this gives every process
    (and every machine) the same rows.
    """
    chunk = frames[start:stop]
    n_atoms = np.array([len(a) for a in chunk], dtype=np.int64)
    with _single_blas_thread():  # left before the first yield: the limit is process-wide
        forces, virials = kernel_gradient_rows(desc, sparse, kernel, n_atoms, positions=want_f, strain=want_v)
        psi_e = whiten(L, chunk_energy_rows(desc, sparse, kernel))
        psi_f = whiten(L, forces) if want_f else None
        psi_v = whiten(L, virials) if want_v else None
    offsets = np.concatenate([[0], np.cumsum(n_atoms) * 3])
    for local, atoms in enumerate(chunk):
        index = start + local
        ct = config_types[index] if config_types is not None else atoms.info.get("config_type")
        yield index, observation_block(
            noise, int(n_atoms[local]), ct, psi_e[local],
            forces=psi_f[offsets[local] : offsets[local + 1]] if want_f else None,
            virials=psi_v[6 * local : 6 * local + 6] if want_v else None)


@dataclass
class InformationModel(PoolInformation):
    """Whitened rows of every pool frame plus what is needed to extend them.

    Attributes
    ----------
    psi : (N, M) array
        Whitened energy rows Ψ = Φ L⁻ᵀ of the pool frames.
    n_atoms : (N,) int array
    energy_variance : (N,) array
        σ_E² n_s of each frame.
    L : (M, M) lower-triangular
        Cholesky factor of K_MM + jitter·I.
    """

    soap: SOAP
    kernel: Kernel
    noise: Noise
    observations: tuple[str, ...]
    sparse: SparsePoints
    sparse_method: str
    seed: int
    psi: np.ndarray
    n_atoms: np.ndarray
    energy_variance: np.ndarray
    L: np.ndarray
    jitter: float
    timings: dict = field(default_factory=dict)
    config_types: list | None = None
    #: Per-frame compressed factors (k_s × M), k_s ≤ min(1 + 3n_s (+6), M), when forces or
    #: virials are observed; ``None`` for energy-only models (the factor is the energy row).
    factors: list | None = None
    #: Mean over the pool of Ψ_F,sᵀ Ψ_F,s / (3 n_s) (M × M) when forces are observed:
    #: the pool-mean force variance of a design is tr(C · pool_force_moment).
    pool_force_moment: np.ndarray | None = None
    gradient_chunk_atoms: int = DEFAULT_GRADIENT_CHUNK_ATOMS
    #: What the model changed from the request (e.g. fewer sparse points), one sentence each.
    notes: list = field(default_factory=list)

    def record_fields(self) -> dict:
        """The design record's ``descriptor`` (species filled in) and ``kernel``."""
        return {"descriptor": self.soap.to_dict(), "kernel": self.kernel.to_dict()}

    # -- other frames (targets, existing training sets) --------------------
    def rows_for(self, frames: Sequence[Atoms], *, chunk_size: int = 100) -> np.ndarray:
        """Whitened energy rows of frames outside the pool, (len(frames), M)."""
        check_species(frames, self.sparse.species)
        descriptor = make_descriptor(self.soap)
        source = lambda: iter_descriptors(descriptor, frames, chunk_size=chunk_size)  # noqa: E731
        return self.whiten(energy_rows(source, self.sparse, self.kernel, len(frames)))

    def local_rows(self, frames: Sequence[Atoms], *, chunk_size: int = 100) -> list[np.ndarray]:
        """Whitened local rows ℓ_i = L⁻¹ k(x_i, Z) of every atom, one (n_atoms, M) array per frame.

        Σ_i ℓ_i is the frame's whitened energy row ψ_s; ℓ_iᵀ C ℓ_i is the variance of the
        local energy of atom i.
        """
        frames = list(frames)
        check_species(frames, self.sparse.species)
        descriptor = make_descriptor(self.soap)
        out: list = []
        for first, desc in iter_descriptors(descriptor, frames, chunk_size=chunk_size):
            n_atoms = [len(a) for a in frames[first : first + desc.n_frames]]
            out += [self.whiten(r) for r in chunk_local_rows(desc, self.sparse, self.kernel, n_atoms)]
        return out

    def iter_observation_rows(self, frames: Sequence[Atoms], *, observations: Sequence[str] | None = None,
                              config_types: Sequence | None = None, progress=None):
        """Stream ``(index, ObservationRows)`` of ``frames`` (see :meth:`observation_rows`)."""
        observations = check_observations(self.observations if observations is None else observations)
        if config_types is not None and len(config_types) != len(frames):
            raise InputError(f"config_types has {len(config_types)} entries for {len(frames)} frames")
        descriptor = make_descriptor(self.soap)
        return iter_observation_rows(descriptor, frames, sparse=self.sparse, kernel=self.kernel, L=self.L,
                                     noise=self.noise, observations=observations, config_types=config_types,
                                     max_atoms=self.gradient_chunk_atoms, progress=progress)

def resolve_species(soap: SOAP, frames: Sequence[Atoms], *,
                    species: Sequence[int] | None = None) -> tuple[SOAP, list[int]]:
    """The pool's species, and ``soap`` with them filled in (or checked against its list).

    ``species``: the pool's species when already known (the frames are then not read).
    """
    if species is not None:
        pool_species = sorted(int(z) for z in species)
    else:
        pool_species = sorted({int(z) for a in frames for z in np.unique(a.numbers)})
    if soap.species is None:
        return soap.with_species(pool_species), pool_species
    extra = set(pool_species) - set(soap.species)
    if extra:
        raise InputError(f"the pool contains species {sorted(extra)} not listed in the SOAP species {list(soap.species)}")
    return soap, pool_species


def build_model(
    frames: Sequence[Atoms],
    *,
    soap: SOAP = SOAP(),
    kernel: Kernel = Kernel(),
    noise: Noise = Noise(),
    observations: Sequence[str] = ("energy",),
    n_sparse=100,
    sparse_method: str = "cur",
    seed: int = 0,
    chunk_size: int = 100,
    cache_limit_bytes: float = 2e9,
    config_types: Sequence | None = None,
    sparse_locations: Sequence | None = None,
    progress: Progress = NULL_PROGRESS,
    gradient_chunk_atoms: int = DEFAULT_GRADIENT_CHUNK_ATOMS,
) -> InformationModel:
    """Descriptors → sparse points → K_MM → whitened energy rows of every frame.

    With ``observations`` including ``"forces"`` (and/or ``"virials"``) a second,
    streamed pass computes descriptor gradients ``gradient_chunk_atoms`` atoms at a time,
    builds each frame's force/virial rows (:mod:`mlipdoe.rows`) and keeps only its
    compressed factor (``model.factors``) and the pool force moment.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        The candidate pool.
    n_sparse : int or mapping
        Sparse points per centre species.
    sparse_method : {"cur", "fps"}
    chunk_size : int
        Frames per descriptor call (~100 is fastest with featomic).
    cache_limit_bytes : float
        The pool's descriptors are computed once and replayed for CUR's two passes and the
        rows: in memory up to this many bytes, beyond it from a temporary on-disk cache
        (:class:`DescriptorSource`); ``timings["descriptor_passes"]`` is 1.
    sparse_locations : sequence of [frame, atom], optional
        Use these pool environments as sparse points (e.g. from a design record)
        instead of choosing them.
    """
    observations = check_observations(observations)
    kernel.validate()
    noise.validate()
    if len(frames) == 0:
        raise InputError("the pool is empty")
    soap, pool_species = resolve_species(soap, frames)
    descriptor = make_descriptor(soap)
    source = DescriptorSource(descriptor, frames, chunk_size=chunk_size, cache_limit_bytes=cache_limit_bytes,
                              progress=progress)
    timings: dict = {}
    t0 = time.perf_counter()
    if sparse_locations is None:
        sparse = choose_sparse_points(source, pool_species, n_sparse, method=sparse_method, kernel=kernel, seed=seed)
    else:
        sparse = sparse_points_at(frames, sparse_locations, descriptor)
    desc_before_rows = source.seconds
    timings["sparse_points"] = time.perf_counter() - t0 - desc_before_rows
    t1 = time.perf_counter()
    K = sparse.kernel_matrix(kernel)
    L, jitter = cholesky_with_jitter(K)
    timings["kernel_matrix"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    phi = energy_rows(source, sparse, kernel, len(frames))
    psi = whiten(L, phi)
    timings["rows"] = time.perf_counter() - t2 - (source.seconds - desc_before_rows)
    timings["descriptors"] = source.seconds
    timings["descriptor_passes"] = source.n_passes
    source.close()
    n_atoms = np.array([len(a) for a in frames], dtype=np.int64)
    model = InformationModel(
        soap=soap, kernel=kernel, noise=noise, observations=observations, sparse=sparse,
        sparse_method=sparse_method, seed=seed, psi=psi, n_atoms=n_atoms,
        energy_variance=noise.energy_variance(n_atoms, config_types), L=L, jitter=jitter, timings=timings,
        config_types=list(config_types) if config_types is not None else None,
        gradient_chunk_atoms=int(gradient_chunk_atoms),
        notes=sparse_point_notes(sparse, n_sparse) if sparse_locations is None else [],
    )
    if observations != ("energy",):
        if config_types is not None and len(config_types) != len(frames):
            raise InputError(f"config_types has {len(config_types)} entries for {len(frames)} frames")
        t3 = time.perf_counter()
        with progress.stage("force rows", len(frames)) as advance:
            stream = model.iter_observation_rows(frames, config_types=config_types, progress=advance)
            model.set_pool_rows(stream, observations=observations)
        timings["force_rows"] = time.perf_counter() - t3
    return model


def sparse_points_at(frames: Sequence[Atoms], locations: Sequence, descriptor) -> SparsePoints:
    """Sparse points at given ``[frame, atom]`` pool locations (order kept per species)."""
    locations = np.asarray(locations, dtype=np.int64).reshape(-1, 2)
    n = len(frames)
    for f, a in locations:
        if not (0 <= f < n and 0 <= a < len(frames[f])):
            raise InputError(f"sparse point [{f}, {a}] is outside the pool ({n} frames)")
    needed = sorted(set(locations[:, 0].tolist()))
    desc = descriptor.compute([frames[f] for f in needed])
    where = {f: k for k, f in enumerate(needed)}
    vectors: dict = {}
    locs: dict = {}
    for f, a in locations:
        z = int(frames[f].numbers[a])
        block = desc.blocks[z]
        row = np.flatnonzero((block.frame == where[int(f)]) & (block.atom == a))[0]
        vectors.setdefault(z, []).append(block.values[row])
        locs.setdefault(z, []).append([int(f), int(a)])
    species = tuple(sorted(vectors))
    return SparsePoints(species, {z: np.array(vectors[z]) for z in species},
                        {z: np.array(locs[z], dtype=np.int64) for z in species}, [])
