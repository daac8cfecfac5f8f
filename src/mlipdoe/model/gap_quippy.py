"""GAP-exact: the model a gap_fit command line trains, on GAP's own descriptors (spec section 7).

A gap_fit model is a sum over descriptors d (``gap={desc_1 : desc_2 : …}``, each expanded per
species by ``add_species``), each with instances ι in a frame (an atom's SOAP, a pair for
``distance_2b``, a triplet for ``angle_3b``), instance weights c_ι (quippy's
``covariance_cutoff``), a kernel k_d and sparse points z_{d,m} with their own weights s_m
(the ``covariance_cutoff`` of the instance they were taken from; gap_fit's ``sparseCutoff``):

    energy   φ_{d,m}       = s_m Σ_ι c_ι k_d(x_ι, z_m)
    force    ψ_(j,a),(d,m) = −s_m Σ_ι [∂c_ι/∂r_{j,a} k_d(x_ι, z_m) + c_ι ∇k_d(x_ι, z_m) · ∂x_ι/∂r_{j,a}]
    virial   ψ_ab,(d,m)    = −Σ_g (∂φ_{d,m}/∂r_g)_a r_{g,b}, symmetrised (Voigt order)

    k_d(x, z) = δ² (x·z)^ζ                       covariance_type=dot_product
    k_d(x, z) = δ² exp(−½ |x − z|² / θ²)         covariance_type=ard_se, theta_uniform=θ

where the virial sum runs over quippy's gradient entries g (an atom as seen by one instance,
at its image position r_g). The prior is α ~ N(0, blockdiag(K_MM,d)⁻¹) with
K_MM,d = S_d k_d(Z_d, Z_d) S_d + sparse_jitter·I (gap_fit's absolute jitter); prediction
E = Σ_d Σ_ι c_ι Σ_m α_{d,m} s_m k_d(x_ι, z_m) is what gap_fit's potential evaluates (checked
against quippy's ``Potential`` in ``tests/test_model_gap_quippy.py``). Everything downstream
(whitening, factors, criteria, assessment, the built-in fit) is the same as for
:mod:`.gap_featomic`: only the rows differ.

quippy computes one frame at a time and is slow (~1 ms/atom for a SOAP, ~3 ms/atom with
gradients), so frames are spread over worker processes; each frame's rows are computed by
the same code on one BLAS thread in any process, so the rows do not depend on the number of
workers. ``soap`` descriptors are computed by featomic configured to equal GAP's soap
(:mod:`mlipdoe.descriptors.quippy_match`, ~2e-13 relative) unless virials are observed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.sparse
from ase import Atoms

from ..exceptions import ConfigurationError, InputError, NumericalError
from ..hypers import Noise, check_observations
from ..progress import NULL_PROGRESS, Progress
from .base import PoolInformation
from .gap_featomic import check_species, observation_block
from .kernels import DUPLICATE_TOL, leverage_projection
from .rows import _VOIGT_PAIRS, _single_blas_thread, whiten

#: Frames per task sent to a worker process.
CHUNK_FRAMES = 8
#: Chunks submitted ahead per worker process.
IN_FLIGHT_PER_WORKER = 4
#: Below this many frames the rows are computed in this process.
MIN_FRAMES_FOR_WORKERS = 64
#: Per-frame noise keys gap_fit reads from ``atoms.info`` (absolute sigmas) / ``atoms.arrays``.
FRAME_SIGMA_KEYS = {"energy": "energy_sigma", "force": "force_sigma", "virial": "virial_sigma"}
FORCE_ATOM_SIGMA_KEY = "force_atom_sigma"
SPARSE_METHODS = ("cur_points", "uniform", "random")


def _quippy_descriptor(text: str):
    try:
        from quippy.descriptors import Descriptor
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ConfigurationError("GAP-exact models need quippy-ase: pip install 'mlipdoe[gap]'") from None
    return Descriptor(text)


# ---------------------------------------------------------------------------
# Instances of one descriptor in one frame
# ---------------------------------------------------------------------------

@dataclass
class Instances:
    """One (expanded) descriptor evaluated on one frame, from quippy's ``calc``.

    Attributes
    ----------
    data : (n, D) array
        Descriptor vector of each instance.
    cutoff : (n,) array
        Instance weight c_ι (``covariance_cutoff``).
    owners : (n, k) int array
        The k atoms of each instance (``ci``: the centre, both atoms of a pair, …), for
        local energies.
    grad, grad_cutoff : (g, 3, D), (g, 3) arrays or None
        ∂x_ι/∂r and ∂c_ι/∂r of each gradient entry.
    grad_instance, grad_atom : (g,) int arrays
        The instance and the atom of each gradient entry (atom images share their atom).
    grad_pos : (g, 3) array
        The (image) position of each gradient entry's atom, for virials.
    """

    data: np.ndarray
    cutoff: np.ndarray
    owners: np.ndarray
    grad: np.ndarray | None = None
    grad_cutoff: np.ndarray | None = None
    grad_instance: np.ndarray | None = None
    grad_atom: np.ndarray | None = None
    grad_pos: np.ndarray | None = None
    #: featomic soap: the projection that contracts its raw gradients (``grad`` is then ∂p, not ∂x).
    projected: object = None

    def __len__(self) -> int:
        return len(self.cutoff)

    def grad_dot(self, V: np.ndarray) -> np.ndarray:
        """∂x_ι/∂r · v_m for every gradient entry and row v_m of V (M × D): (g, 3, M)."""
        if self.projected is not None:
            return self.projected.contract(V, self.grad_instance + self.first_row, self.grad)
        g, _, D = self.grad.shape
        return (self.grad.reshape(-1, D) @ V.T).reshape(g, 3, -1)

    def grad_self(self) -> np.ndarray:
        """∂x_ι/∂r · x_ι of every gradient entry: (g, 3)."""
        if self.projected is not None:
            rows = self.grad_instance + self.first_row
            x = self.projected.values[rows]
            gx = np.einsum("gad,gd->ga", self.grad, self.projected.lift(x))
            if self.projected.normalise:  # (I − x xᵀ) projects x out of the first D − 1 elements
                gx = gx - np.sum(x[:, :-1] ** 2, axis=1)[:, None] * gx
                gx /= self.projected.norms[rows][:, None]
            return gx
        return np.einsum("gad,gd->ga", self.grad, self.data[self.grad_instance])

    #: Row of this frame's first instance in ``projected`` (a chunk of frames shares one).
    first_row: int = 0


def compute_instances(descriptor, atoms: Atoms, dimension: int, *, grad: bool = False) -> Instances:
    """quippy ``Descriptor.calc`` of one frame, re-indexed.

    quippy's ``grad_index_0based[:, 0]`` is the centre of the entry only for one-centre
    descriptors, so the instance of each gradient entry is taken from the order of the
    entries instead (``ii`` lists each instance's atoms, one entry each, consecutively).
    """
    out = descriptor.calc(atoms, grad=grad)
    cutoff = np.asarray(out.get("covariance_cutoff", np.zeros(0)), dtype=np.float64).reshape(-1)
    n = len(cutoff)
    if n == 0:
        empty = Instances(np.zeros((0, dimension)), cutoff, np.zeros((0, 1), dtype=np.int64))
        if grad:
            empty.grad, empty.grad_cutoff = np.zeros((0, 3, dimension)), np.zeros((0, 3))
            empty.grad_instance = empty.grad_atom = np.zeros(0, dtype=np.int64)
            empty.grad_pos = np.zeros((0, 3))
        return empty
    data = np.asarray(out["data"], dtype=np.float64).reshape(n, -1)
    owners = np.asarray(out["ci"], dtype=np.int64).reshape(n, -1) - 1
    inst = Instances(data, cutoff, owners)
    if grad:
        counts = np.array([len(x) for x in out["ii"]], dtype=np.int64)
        inst.grad = np.asarray(out["grad_data"], dtype=np.float64).reshape(-1, 3, data.shape[1])
        inst.grad_cutoff = np.asarray(out["grad_covariance_cutoff"], dtype=np.float64).reshape(-1, 3)
        inst.grad_instance = np.repeat(np.arange(n), counts)
        inst.grad_atom = np.asarray(out["grad_index_0based"], dtype=np.int64)[:, 1]
        inst.grad_pos = np.asarray(out["pos"], dtype=np.float64).reshape(-1, 3)
        if len(inst.grad_instance) != len(inst.grad):
            raise NumericalError("quippy returned gradient entries that do not match its instance lists")
    return inst


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class InstanceKernel:
    """k_d of one descriptor: ``dot_product`` δ²(x·z)^ζ or ``ard_se`` δ² exp(−½|x−z|²/θ²)."""

    covariance_type: str
    delta: float
    zeta: float | None = None
    theta: float | None = None

    @classmethod
    def of(cls, descriptor) -> "InstanceKernel":
        """The kernel of a :class:`~mlipdoe.gap_spec.GapDescriptor`."""
        kind = descriptor.covariance_type
        if getattr(descriptor, "f0", 0.0):
            raise ConfigurationError(f"{descriptor.kind}: f0={descriptor.f0} (a prior mean) is not supported; "
                                     "leave it at 0")
        if kind == "dot_product":
            if descriptor.zeta is None:
                raise ConfigurationError(f"{descriptor.kind}: covariance_type=dot_product needs zeta")
            return cls(kind, float(descriptor.delta), zeta=float(descriptor.zeta))
        if kind == "ard_se":
            if descriptor.theta_uniform is None:
                raise ConfigurationError(f"{descriptor.kind}: covariance_type=ard_se needs theta_uniform")
            return cls(kind, float(descriptor.delta), theta=float(descriptor.theta_uniform))
        raise ConfigurationError(f"{descriptor.kind}: covariance_type={kind} is not supported "
                                 "(use dot_product or ard_se)")

    def __call__(self, X: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """k(X, Z), (n, M)."""
        d2 = self.delta**2
        if self.covariance_type == "dot_product":
            return d2 * (X @ Z.T) ** self.zeta
        sq = np.sum(X**2, axis=1)[:, None] + np.sum(Z**2, axis=1)[None, :] - 2.0 * (X @ Z.T)
        return d2 * np.exp(-0.5 * np.maximum(sq, 0.0) / self.theta**2)

    def gradient_contraction(self, inst: Instances, Z: np.ndarray, K: np.ndarray) -> np.ndarray:
        """∇_x k(x_ι, z_m) · ∂x_ι/∂r for every gradient entry: (g, 3, M)."""
        row = inst.grad_instance
        GZ = inst.grad_dot(Z)
        if self.covariance_type == "dot_product":
            dots = inst.data @ Z.T
            A = self.delta**2 * self.zeta * dots ** (self.zeta - 1.0)
            return A[row][:, None, :] * GZ
        Gx = inst.grad_self()
        return -(K[row][:, None, :] / self.theta**2) * (Gx[:, :, None] - GZ)


# ---------------------------------------------------------------------------
# Sparse points
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class GapSparse:
    """Sparse points of every expanded descriptor, in the global column order.

    Attributes
    ----------
    labels : tuple of str
        The quippy descriptor string of each expanded descriptor.
    vectors : tuple of (M_d, D_d) arrays
    cutoffs : tuple of (M_d,) arrays
        s_m, the instance weight of each point.
    locations : tuple of (M_d, 2) int arrays
        ``[frame, instance]`` in the pool (instance = index in quippy's output for the frame).
    species : tuple of int
        The species the model covers, in gap_fit's order (first appearance in the pool).
    dropped : list
        ``[descriptor, frame, instance]`` of candidates dropped as exact duplicates.
    """

    labels: tuple
    vectors: tuple
    cutoffs: tuple
    locations: tuple
    species: tuple
    dropped: list = field(default_factory=list)

    @property
    def n_points(self) -> int:
        return int(sum(len(v) for v in self.vectors))

    def column_slices(self) -> list[slice]:
        """Column slice of each expanded descriptor, in order, in the global M ordering."""
        stops = np.cumsum([0, *(len(v) for v in self.vectors)])
        return [slice(int(a), int(b)) for a, b in zip(stops[:-1], stops[1:])]

    def slices(self) -> dict:
        """``{label: slice}`` of each expanded descriptor (a label repeated gets `` [k]``)."""
        seen = {label: self.labels.count(label) for label in self.labels}
        return {(label if seen[label] == 1 else f"{label} [{k}]"): sl
                for k, (label, sl) in enumerate(zip(self.labels, self.column_slices()))}

    def location_list(self) -> list[list[int]]:
        """``[descriptor, frame, instance]`` of every point (the design record's ``sparse_points``)."""
        return [[d, int(f), int(i)] for d, locs in enumerate(self.locations) for f, i in locs]

    def kernel_matrix(self, kernels: Sequence[InstanceKernel]) -> np.ndarray:
        """blockdiag(S_d k_d(Z_d, Z_d) S_d), (M, M), without jitter."""
        blocks = [s[:, None] * k(Z, Z) * s[None, :] for k, Z, s in zip(kernels, self.vectors, self.cutoffs)]
        return scipy.linalg.block_diag(*blocks) if blocks else np.zeros((0, 0))


def _distinct(X: np.ndarray, order: np.ndarray, n: int) -> tuple[list[int], list[int]]:
    """The first ``n`` rows of X in ``order`` that are not exact duplicates of a kept row."""
    keep: list[int] = []
    dropped: list[int] = []
    sq = np.sum(X**2, axis=1)
    for i in order:
        if len(keep) >= n:
            break
        i = int(i)
        if keep:
            d2 = sq[keep] + sq[i] - 2.0 * (X[keep] @ X[i])
            if np.min(d2) <= DUPLICATE_TOL * (sq[i] + np.max(sq[keep]) + 1e-300):
                dropped.append(i)
                continue
        keep.append(i)
    return keep, dropped


def choose_instances(X: np.ndarray, n: int, method: str, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Indices of ``n`` distinct instances of X (n_inst × D) chosen by ``method``.

    - ``random``: uniformly at random without replacement;
    - ``uniform`` (1-D descriptors): the instance nearest to each of ``n`` evenly spaced
      values over the range of X;
    - ``cur_points``: leverage-score sampling without replacement (Mahoney & Drineas 2009):
      leverage of row i from the top-k right singular vectors of X, k = min(n, rank), keys
      log(u)/ℓ (Efraimidis & Spirakis 2006), as gap_fit's CUR on the descriptor matrix.

    Exact duplicates (e.g. a pair seen from both of its atoms) are skipped, so fewer than
    ``n`` points result only when X holds fewer distinct rows.
    """
    N = len(X)
    if method == "random":
        order = rng.permutation(N)
    elif method == "uniform":
        if X.shape[1] != 1:
            raise ConfigurationError("sparse_method=uniform is supported for one-dimensional descriptors "
                                     "(distance_2b); use cur_points or random")
        x = X[:, 0]
        grid = np.linspace(x.min(), x.max(), n) if n > 1 else np.array([0.5 * (x.min() + x.max())])
        sorted_idx = np.argsort(x, kind="stable")
        pos = np.clip(np.searchsorted(x[sorted_idx], grid), 0, N - 1)
        near = []
        for g, p in zip(grid, pos):
            cand = [sorted_idx[max(p - 1, 0)], sorted_idx[p]]
            near.append(min(cand, key=lambda i: (abs(x[i] - g), i)))
        first = list(dict.fromkeys(int(i) for i in near))
        taken = set(first)
        order = np.array(first + [int(i) for i in sorted_idx if int(i) not in taken], dtype=np.int64)
    elif method == "cur_points":
        lev = np.sum((X @ leverage_projection(X.T @ X, n)) ** 2, axis=1)
        u = rng.random(N)
        with np.errstate(divide="ignore"):
            keys = np.where(lev > 0, np.log(u) / np.maximum(lev, 1e-300), -np.inf)
        order = np.lexsort((np.arange(N), -keys))
    else:
        raise ConfigurationError(f"sparse_method={method} is not supported (use {', '.join(SPARSE_METHODS)})")
    return _distinct(X, order, n)


def _counts_by_config_type(descriptor) -> dict:
    """``{config_type or None: n}``: the descriptor's n_sparse, or its config_type_n_sparse."""
    table = dict(descriptor.config_type_n_sparse or {})
    if not table:
        return {None: int(descriptor.n_sparse)}
    return {str(ct): int(n) for ct, n in table.items()}


def choose_sparse(descriptors, tables, species, *, seed: int, config_types=None) -> tuple[GapSparse, list[str]]:
    """Sparse points of every expanded descriptor from the pool's instances.

    ``tables[d]`` is ``(X, c, frame, index)`` over the pool for descriptor d. Each descriptor
    draws from its own random stream ``default_rng([seed, d])``. With
    ``config_type_n_sparse`` the points are chosen within each config_type's frames.
    Returns the sparse points and one note per request that could not be met.
    """
    vectors, cutoffs, locations, dropped, notes = [], [], [], [], []
    for d, (desc, (X, c, frame, index)) in enumerate(zip(descriptors, tables)):
        rng = np.random.default_rng([int(seed), d])
        label = desc.descriptor_string()
        if len(X) == 0:
            raise InputError(f"no instance of descriptor '{label}' in the pool: cannot choose its sparse points "
                             "(remove it, or add frames where it applies)")
        chosen: list[int] = []
        for ct, n in _counts_by_config_type(desc).items():
            if ct is None:
                subset = np.arange(len(X))
            else:
                types = np.array([str(config_types[f]) if config_types is not None else "" for f in frame])
                subset = np.flatnonzero(types == ct)
            if len(subset) == 0:
                notes.append(f"'{label}': no frame of config_type {ct!r} in the pool for its {n} sparse points")
                continue
            keep, drop = choose_instances(X[subset], n, desc.sparse_method, rng)
            chosen += [int(subset[i]) for i in keep]
            dropped += [[d, int(frame[subset[i]]), int(index[subset[i]])] for i in drop]
            if len(keep) < n:
                notes.append(f"'{label}': {len(keep)} of the {n} requested sparse points"
                             f"{'' if ct is None else f' for config_type {ct!r}'} (the pool offers no more "
                             "distinct instances)")
        chosen_arr = np.array(chosen, dtype=np.int64)
        vectors.append(X[chosen_arr])
        cutoffs.append(c[chosen_arr])
        locations.append(np.stack([frame[chosen_arr], index[chosen_arr]], axis=1))
    labels = tuple(d.descriptor_string() for d in descriptors)
    return GapSparse(labels, tuple(vectors), tuple(cutoffs), tuple(locations), tuple(species), dropped), notes


# ---------------------------------------------------------------------------
# Rows of one frame
# ---------------------------------------------------------------------------

def frame_rows(instances: Sequence[Instances], sparse: GapSparse, kernels: Sequence[InstanceKernel], n_atoms: int,
               *, forces: bool = False, virials: bool = False, local: bool = False):
    """Raw (un-whitened) rows of one frame, concatenated over descriptors.

    Returns
    -------
    energy : (M,) array
    force : (3 n_atoms, M) array or None
        −∂φ/∂r_{j,a}, atom-major.
    virial : (6, M) array or None
        −∂φ/∂ε_ab, symmetrised, Voigt order.
    local_rows : (n_atoms, M) array or None
        Each instance's c_ι s ⊙ k(x_ι, Z) shared equally by its atoms (they sum to ``energy``).
    """
    M = sparse.n_points
    energy = np.zeros(M)
    force = np.zeros((3 * n_atoms, M)) if forces else None
    strain = np.zeros((3, 3, M)) if virials else None
    local_rows = np.zeros((n_atoms, M)) if local else None
    for inst, kernel, Z, s, sl in zip(instances, kernels, sparse.vectors, sparse.cutoffs, sparse.column_slices()):
        if len(inst) == 0 or len(Z) == 0:
            continue
        K = kernel(inst.data, Z)  # (n, M_d)
        energy[sl] = s * (inst.cutoff @ K)
        if local:
            share = (inst.cutoff[:, None] * K * s[None, :]) / inst.owners.shape[1]
            for col in range(inst.owners.shape[1]):
                np.add.at(local_rows[:, sl], inst.owners[:, col], share)
        if forces or virials:
            row = inst.grad_instance
            T = inst.grad_cutoff[:, :, None] * K[row][:, None, :]
            T += inst.cutoff[row][:, None, None] * kernel.gradient_contraction(inst, Z, K)
            T *= s[None, None, :]  # (g, 3, M_d): ∂φ_d/∂r of each gradient entry
            if forces:
                S = scipy.sparse.csr_matrix((np.ones(len(row)), (inst.grad_atom, np.arange(len(row)))),
                                            shape=(n_atoms, len(row)))
                force[:, sl] = -(S @ T.reshape(len(row), -1)).reshape(3 * n_atoms, -1)
            if virials:
                strain[:, :, sl] = -np.einsum("gam,gb->abm", T, inst.grad_pos)
    virial = None
    if virials:
        sym = 0.5 * (strain + strain.transpose(1, 0, 2))
        virial = np.stack([sym[a, b] for a, b in _VOIGT_PAIRS])
    return energy, force, virial, local_rows


# ---------------------------------------------------------------------------
# Worker processes: one frame at a time, results independent of the process
# ---------------------------------------------------------------------------

#: soap keys that featomic reproduces exactly (:mod:`mlipdoe.descriptors.quippy_match`).
FEATOMIC_SOAP_KEYS = ("cutoff", "cutoff_transition_width", "n_max", "l_max", "atom_sigma", "central_weight",
                      "covariance_sigma0", "normalise", "n_species", "species_Z", "Z")


def featomic_soap_arguments(descriptor) -> dict | None:
    """Arguments of :func:`~mlipdoe.descriptors.quippy_match.featomic_soap_matching_quippy` equal to this
    expanded ``soap`` descriptor, or None for other descriptors and for soap keys featomic does not
    reproduce (``central_reference_all_species``, ``diagonal_radial``, …: quippy computes those)."""
    if descriptor.kind != "soap" or set(descriptor.hypers) - set(FEATOMIC_SOAP_KEYS):
        return None
    h = descriptor.hyper
    species = [int(z) for z in str(h("species_Z")).strip("{}").split()]
    centres = [int(z) for z in str(h("Z")).strip("{}").split()]
    if len(species) != int(h("n_species")) or len(centres) != 1 or centres[0] not in species:
        return None
    return {"cutoff": float(h("cutoff")), "n_max": int(h("n_max")), "l_max": int(h("l_max")),
            "atom_sigma": float(h("atom_sigma")), "species": species, "centers": centres,
            "cutoff_transition_width": float(h("cutoff_transition_width")),
            "central_weight": float(h("central_weight")), "covariance_sigma0": float(h("covariance_sigma0")),
            "normalise": str(h("normalise")).upper().startswith("T")}


_WORKER: dict = {}


def _init_worker(strings: Sequence[str], dimensions: Sequence[int], featomic: Sequence) -> None:
    """Build each descriptor once per process: quippy's, or featomic's equal soap."""
    from ..descriptors.quippy_match import featomic_soap_matching_quippy

    _WORKER.clear()
    engines = [featomic_soap_matching_quippy(**f) if f is not None else _quippy_descriptor(s)
               for s, f in zip(strings, featomic)]
    _WORKER.update(descriptors=engines, featomic=[f is not None for f in featomic], dimensions=list(dimensions),
                   key=(tuple(strings), tuple(f is not None for f in featomic)))


def _featomic_instances(result, n_frames: int, grad: bool) -> list[Instances]:
    """Per-frame :class:`Instances` of a featomic soap chunk (:class:`ProjectedSOAP`; weights 1,
    no image positions)."""
    frame_of = result.centers[:, 0]
    starts = np.searchsorted(frame_of, np.arange(n_frames + 1))
    if grad:
        gstarts = np.searchsorted(result.gradient_index[:, 1], np.arange(n_frames + 1))
    out = []
    for f in range(n_frames):
        a, b = starts[f], starts[f + 1]
        inst = Instances(result.values[a:b], np.ones(b - a), result.centers[a:b, 1:2].copy())
        if grad:
            ga, gb = gstarts[f], gstarts[f + 1]
            inst.grad = result.gradients[ga:gb]
            inst.grad_cutoff = np.zeros((gb - ga, 3))
            inst.grad_instance = result.gradient_index[ga:gb, 0] - a
            inst.grad_atom = result.gradient_index[ga:gb, 2]
            inst.projected, inst.first_row = result, int(a)
        out.append(inst)
    return out


def _instances_task(frames: Sequence[Atoms], grad: bool) -> list[list[Instances]]:
    per_desc = []
    for engine, is_featomic, D in zip(_WORKER["descriptors"], _WORKER["featomic"], _WORKER["dimensions"]):
        if is_featomic:
            per_desc.append(_featomic_instances(engine.compute_projected(list(frames), gradients=grad), len(frames),
                                                grad))
        else:
            per_desc.append([compute_instances(engine, atoms, D, grad=grad) for atoms in frames])
    return [list(per_frame) for per_frame in zip(*per_desc)]


def _table_task(frames: Sequence[Atoms]) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Instance values and weights (no gradients) of each frame, per descriptor."""
    return [[(i.data, i.cutoff) for i in per_frame] for per_frame in _instances_task(frames, False)]


def _rows_task(frames: Sequence[Atoms], sparse, kernels, forces: bool, virials: bool, local: bool) -> list[tuple]:
    out = []
    with _single_blas_thread():
        for atoms, inst in zip(frames, _instances_task(frames, forces or virials)):
            out.append(frame_rows(inst, sparse, kernels, len(atoms), forces=forces, virials=virials, local=local))
    return out


class QuippyPool:
    """quippy descriptors in this process or in ``workers`` spawned processes (a context manager).

    :meth:`map` runs a task over consecutive chunks of frames and yields the results in order;
    every frame is computed by the same code on one BLAS thread wherever it runs.
    """

    def __init__(self, strings: Sequence[str], dimensions: Sequence[int], featomic: Sequence, workers: int,
                 n_frames: int):
        self.init_args = (list(strings), list(dimensions), list(featomic))
        self.parallel = workers > 1 and n_frames >= MIN_FRAMES_FOR_WORKERS
        self.workers = workers
        self._executor = None

    def __enter__(self) -> "QuippyPool":
        if self.parallel:
            import multiprocessing

            self._executor = ProcessPoolExecutor(max_workers=self.workers,
                                                 mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_worker, initargs=self.init_args)
        elif _WORKER.get("key") != (tuple(self.init_args[0]), tuple(f is not None for f in self.init_args[2])):
            _init_worker(*self.init_args)
        return self

    def __exit__(self, *exc) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None

    def map(self, task, frames: Sequence[Atoms], args: tuple = (), progress=None) -> Iterator[tuple[int, list]]:
        """Yield ``(first, task(chunk, *args))`` over consecutive chunks of ``frames``, in order."""
        starts = list(range(0, len(frames), CHUNK_FRAMES))
        if self._executor is None:
            results = (task(list(frames[s : s + CHUNK_FRAMES]), *args) for s in starts)
        else:
            results = self._bounded(task, frames, starts, args)
        for start, res in zip(starts, results):
            if progress is not None:
                chunk = frames[start : start + CHUNK_FRAMES]
                progress(len(chunk), sum(len(a) for a in chunk))
            yield start, res


    def _bounded(self, task, frames, starts, args):
        """Results in order, with at most ``IN_FLIGHT_PER_WORKER`` chunks per worker submitted ahead
        (bounded memory when the consumer is slower than the workers)."""
        from collections import deque

        pending: deque = deque()
        ahead = max(1, IN_FLIGHT_PER_WORKER * self.workers)
        for start in starts:
            pending.append(self._executor.submit(task, list(frames[start : start + CHUNK_FRAMES]), *args))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def default_workers() -> int:
    """Worker processes for quippy: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------
# Noise as gap_fit reads it
# ---------------------------------------------------------------------------

def frame_variances(noise: Noise, atoms: Atoms, config_type, rows) -> None:
    """Apply gap_fit's per-frame sigmas in ``atoms.info`` / ``atoms.arrays`` to ``rows`` (in place).

    ``energy_sigma``, ``force_sigma`` and ``virial_sigma`` are absolute (not scaled by √n);
    ``force_atom_sigma`` (per atom) overrides ``force_sigma`` for the force rows.
    """
    for kind, key in FRAME_SIGMA_KEYS.items():
        if key in atoms.info:
            sigma = float(atoms.info[key])
            if not sigma > 0:
                raise InputError(f"{key}={atoms.info[key]} in a frame's info: sigmas must be > 0")
            rows.variance[rows.kind == kind] = sigma**2
    if FORCE_ATOM_SIGMA_KEY in atoms.arrays and np.any(rows.kind == "force"):
        sig = np.asarray(atoms.arrays[FORCE_ATOM_SIGMA_KEY], dtype=float).reshape(-1)
        if not np.all(sig > 0):
            raise InputError(f"{FORCE_ATOM_SIGMA_KEY} in a frame's arrays must be > 0")
        rows.variance[rows.kind == "force"] = np.repeat(sig, 3) ** 2


def energy_variances(noise: Noise, frames: Sequence[Atoms], config_types=None) -> np.ndarray:
    """σ_E² of each frame's energy row as gap_fit sets it (``energy_sigma`` in info wins)."""
    n = np.array([len(a) for a in frames], dtype=np.int64)
    var = noise.energy_variance(n, config_types)
    for k, atoms in enumerate(frames):
        if FRAME_SIGMA_KEYS["energy"] in atoms.info:
            sigma = float(atoms.info[FRAME_SIGMA_KEYS["energy"]])
            if not sigma > 0:
                raise InputError(f"energy_sigma={sigma} in frame {k}'s info: sigmas must be > 0")
            var[k] = sigma**2
    return var


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------

@dataclass
class GapExactModel(PoolInformation):
    """The information model of a gap_fit command line on a pool (spec section 7).

    Attributes as :class:`~mlipdoe.model.gap_featomic.InformationModel` (``psi``, ``n_atoms``,
    ``energy_variance``, ``L``, ``jitter``, ``factors``, ``pool_force_moment``, …) plus the
    parsed gap_fit arguments ``spec``, its expanded descriptors and their kernels.
    """

    spec: object
    descriptors: list
    kernels: list
    dimensions: list
    noise: Noise
    observations: tuple
    sparse: GapSparse
    seed: int
    psi: np.ndarray
    n_atoms: np.ndarray
    energy_variance: np.ndarray
    L: np.ndarray
    jitter: float
    timings: dict = field(default_factory=dict)
    config_types: list | None = None
    factors: list | None = None
    pool_force_moment: np.ndarray | None = None
    notes: list = field(default_factory=list)
    workers: int = 1
    #: Per expanded descriptor: featomic's arguments for an equal soap, or None (quippy computes it).
    featomic: list = field(default_factory=list)

    sparse_method = "gap_fit"

    @property
    def soap(self):
        """featomic SOAP with the hypers of the first ``soap`` descriptor (or the defaults).

        Only the model-free baselines (FPS / CUR on mean descriptors) use it; every row of
        this model comes from quippy.
        """
        from ..descriptors import SOAP

        for d in self.descriptors:
            if d.kind == "soap":
                h = d.hypers
                return SOAP(cutoff=float(h.get("cutoff", 5.0)), n_max=int(h.get("n_max", 8)),
                            l_max=int(h.get("l_max", 6)), atom_sigma=float(h.get("atom_sigma", 0.5)),
                            species=tuple(self.sparse.species))
        return SOAP(species=tuple(self.sparse.species))

    def record_fields(self) -> dict:
        """The design record's ``descriptor`` (the parsed gap_fit arguments) and ``kernel``."""
        from ..hypers import ModelConfig

        fields = ModelConfig(gap=self.spec, observations=self.observations).to_dict()
        return {"descriptor": fields["descriptor"], "kernel": fields["kernel"]}

    #: A pool of quippy processes to reuse (set while the model is being built).
    shared_pool: object = None

    def _pool(self, n_frames: int):
        if self.shared_pool is not None:
            return contextlib.nullcontext(self.shared_pool)
        return QuippyPool(self.sparse.labels, self.dimensions, self.featomic, self.workers, n_frames)

    def raw_rows(self, frames: Sequence[Atoms], *, forces: bool = False, virials: bool = False,
                 local: bool = False, progress=None) -> Iterator[tuple[int, tuple]]:
        """``(index, (energy, force, virial, local))`` raw rows of every frame, in order."""
        check_species(frames, self.sparse.species)
        if virials:
            for k, atoms in enumerate(frames):
                if not np.all(atoms.pbc):
                    raise InputError(f"frame {k} is not periodic in all directions: virials need a full cell "
                                     "(drop 'virials' from the observations)")
        with self._pool(len(frames)) as pool:
            for first, results in pool.map(_rows_task, frames, (self.sparse, self.kernels, forces, virials, local),
                                           progress=progress):
                for k, res in enumerate(results):
                    yield first + k, res

    def rows_for(self, frames: Sequence[Atoms]) -> np.ndarray:
        """Whitened energy rows of any frames, (len(frames), M)."""
        phi = np.zeros((len(frames), self.M))
        for k, (energy, _, _, _) in self.raw_rows(list(frames)):
            phi[k] = energy
        return self.whiten(phi)

    def local_rows(self, frames: Sequence[Atoms]) -> list[np.ndarray]:
        """Whitened local rows (n_atoms, M) per frame; they sum to the energy row."""
        return [self.whiten(res[3]) for _, res in self.raw_rows(list(frames), local=True)]

    def frame_energy_variance(self, frames: Sequence[Atoms], config_types: Sequence | None = None) -> np.ndarray:
        return energy_variances(self.noise, list(frames), config_types)

    def iter_observation_rows(self, frames: Sequence[Atoms], *, observations: Sequence[str] | None = None,
                              config_types: Sequence | None = None, progress=None):
        """Stream ``(index, ObservationRows)`` of ``frames`` (see ``observation_rows``)."""
        observations = check_observations(self.observations if observations is None else observations)
        frames = list(frames)
        if config_types is not None and len(config_types) != len(frames):
            raise InputError(f"config_types has {len(config_types)} entries for {len(frames)} frames")
        want_f, want_v = "forces" in observations, "virials" in observations
        for index, (energy, force, virial, _) in self.raw_rows(frames, forces=want_f, virials=want_v,
                                                                progress=progress):
            atoms = frames[index]
            ct = config_types[index] if config_types is not None else atoms.info.get("config_type")
            rows = observation_block(self.noise, len(atoms), ct, whiten(self.L, energy)[0],
                                     forces=whiten(self.L, force) if want_f else None,
                                     virials=whiten(self.L, virial) if want_v else None)
            frame_variances(self.noise, atoms, ct, rows)
            yield index, rows


def _instance_tables(frames, dimensions, pool: QuippyPool, progress) -> list[tuple]:
    """Per descriptor ``(X, c, frame, index)`` over every instance of the pool."""
    per_desc: list[list] = [[] for _ in dimensions]
    with progress.stage("descriptors (quippy)", len(frames)) as advance:
        for first, results in pool.map(_table_task, frames, progress=advance):
            for k, per_frame in enumerate(results):
                for d, (X, c) in enumerate(per_frame):
                    per_desc[d].append((first + k, X, c))
    tables = []
    for d, items in enumerate(per_desc):
        X = np.concatenate([x for _, x, _ in items]) if items else np.zeros((0, dimensions[d]))
        c = np.concatenate([c for _, _, c in items]) if items else np.zeros(0)
        frame = np.concatenate([np.full(len(c), f, dtype=np.int64) for f, _, c in items]) if items else \
            np.zeros(0, dtype=np.int64)
        index = np.concatenate([np.arange(len(c), dtype=np.int64) for _, _, c in items]) if items else \
            np.zeros(0, dtype=np.int64)
        tables.append((X, c, frame, index))
    return tables


def sparse_at(tables, descriptors, locations, species) -> GapSparse:
    """Sparse points at recorded ``[descriptor, frame, instance]`` locations."""
    locations = np.asarray(locations, dtype=np.int64).reshape(-1, 3)
    vectors, cutoffs, locs = [], [], []
    for d, (X, c, frame, index) in enumerate(tables):
        mine = locations[locations[:, 0] == d][:, 1:]
        key = {(int(f), int(i)): k for k, (f, i) in enumerate(zip(frame, index))}
        rows = []
        for f, i in mine:
            if (int(f), int(i)) not in key:
                raise InputError(f"sparse point [{d}, {f}, {i}] is not an instance of the pool")
            rows.append(key[(int(f), int(i))])
        rows = np.array(rows, dtype=np.int64)
        vectors.append(X[rows])
        cutoffs.append(c[rows])
        locs.append(mine.copy())
    if np.any((locations[:, 0] < 0) | (locations[:, 0] >= len(tables))):
        raise InputError(f"sparse points name descriptors outside 0..{len(tables) - 1}")
    labels = tuple(d.descriptor_string() for d in descriptors)
    return GapSparse(labels, tuple(vectors), tuple(cutoffs), tuple(locs), tuple(species), [])


def descriptor_dimensions(strings: Sequence[str]) -> list[int]:
    """Vector length of each descriptor (quippy's ``n_dim``)."""
    return [int(_quippy_descriptor(s).n_dim) for s in strings]


def e0_notes(spec, frames: Sequence[Atoms]) -> list[str]:
    """A note when gap_fit, trained on frames like these, would abort on its e0 rule.

    ``e0_method=isolated`` (gap_fit's default) without ``e0`` needs a single-atom frame of
    every species in the training file; the design does not depend on e0 (labels only).
    """
    opts = spec.label_options
    if "e0" in opts or str(opts.get("e0_method", "isolated")).lower() != "isolated":
        return []
    isolated = {int(a.numbers[0]) for a in frames if len(a) == 1}
    missing = sorted({int(z) for a in frames for z in a.numbers} - isolated)
    if not missing:
        return []
    return [f"gap_fit's e0_method=isolated (its default) needs a single-atom frame of species {missing} in the "
            "training file, or it aborts: add them, or give e0=… or e0_method=average in the gap_fit arguments"]


def descriptor_engines(descriptors, observations: Sequence[str], use_featomic: bool = True) -> list:
    """Which engine computes each expanded descriptor: featomic's arguments, or None for quippy.

    featomic reproduces GAP's ``soap`` to ~2e-13 (vectors) and ~4e-10 (position gradients) at a
    third of quippy's cost (docs/gap-exact.md); it gives no image positions, so a model that
    observes virials computes every descriptor with quippy. The choice is the model's, made
    once, so all its rows (pool, targets, fits) come from the same engine.
    """
    if not use_featomic or "virials" in observations:
        return [None] * len(descriptors)
    return [featomic_soap_arguments(d) for d in descriptors]


def build_gap_model(
    frames: Sequence[Atoms],
    spec,
    *,
    observations: Sequence[str] = ("energy",),
    seed: int = 0,
    config_types: Sequence | None = None,
    sparse_locations: Sequence | None = None,
    workers: int | None = None,
    use_featomic: bool = True,
    progress: Progress = NULL_PROGRESS,
) -> GapExactModel:
    """Instances → sparse points → K_MM → whitened rows of every pool frame.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        The candidate pool.
    spec : mlipdoe.gap_spec.GapFitSpec
        The parsed gap_fit arguments.
    observations : tuple of {"energy", "forces", "virials"}
    seed : int
        Seeds the sparse-point choice (one stream per expanded descriptor).
    sparse_locations : sequence of [descriptor, frame, instance], optional
        Use these pool instances as sparse points (a design record's) instead of choosing.
    workers : int, optional
        Processes for quippy (default: the usable CPUs; small pools run in this process).
    use_featomic : bool
        Compute ``soap`` descriptors with featomic's exact equivalent (:func:`descriptor_engines`).
    """
    observations = check_observations(observations)
    frames = list(frames)
    if not frames:
        raise InputError("the pool is empty")
    if config_types is not None and len(config_types) != len(frames):
        raise InputError(f"config_types has {len(config_types)} entries for {len(frames)} frames")
    from ..gap_spec import species_order

    species = species_order(frames)  # gap_fit's order: first appearance
    descriptors = spec.expanded(species)
    kernels = [InstanceKernel.of(d) for d in descriptors]
    strings = [d.descriptor_string() for d in descriptors]
    dimensions = descriptor_dimensions(strings)
    if sparse_locations is None:  # refuse before the descriptor pass, not after it
        for d, D in zip(descriptors, dimensions):
            if d.sparse_method not in SPARSE_METHODS:
                raise ConfigurationError(f"{d.kind}: sparse_method={d.sparse_method} is not supported; mlipdoe "
                                         f"chooses sparse points from the pool ({', '.join(SPARSE_METHODS)}) and "
                                         "hands them to gap_fit")
            if d.sparse_method == "uniform" and D != 1:
                raise ConfigurationError(f"{d.kind}: sparse_method=uniform is supported for one-dimensional "
                                         "descriptors (distance_2b); use cur_points or random")
    workers = default_workers() if workers is None else max(1, int(workers))
    noise = spec.noise().validate(observations)
    timings: dict = {}
    featomic = descriptor_engines(descriptors, observations, use_featomic)
    with QuippyPool(strings, dimensions, featomic, workers, len(frames)) as pool:
        t0 = time.perf_counter()
        tables = _instance_tables(frames, dimensions, pool, progress)
        timings["descriptors"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        if sparse_locations is None:
            sparse, notes = choose_sparse(descriptors, tables, species, seed=seed, config_types=config_types)
        else:
            sparse, notes = sparse_at(tables, descriptors, sparse_locations, species), []
        notes = notes + e0_notes(spec, frames)
        timings["sparse_points"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        K = sparse.kernel_matrix(kernels)
        jitter = float(spec.sparse_jitter)
        try:
            L = scipy.linalg.cholesky(K + jitter * np.eye(len(K)), lower=True, check_finite=True)
        except np.linalg.LinAlgError:
            raise NumericalError(f"K_MM is not positive definite with sparse_jitter={jitter:g}: raise sparse_jitter in "
                                 "the gap_fit arguments (gap_fit would meet the same matrix)") from None
        timings["kernel_matrix"] = time.perf_counter() - t2
        model = GapExactModel(
            spec=spec, descriptors=descriptors, kernels=kernels, dimensions=dimensions, noise=noise,
            observations=observations, sparse=sparse, seed=int(seed), psi=np.zeros((len(frames), sparse.n_points)),
            n_atoms=np.array([len(a) for a in frames], dtype=np.int64),
            energy_variance=energy_variances(noise, frames, config_types), L=L, jitter=jitter, timings=timings,
            config_types=list(config_types) if config_types is not None else None, notes=notes, workers=workers,
            shared_pool=pool, featomic=featomic)
        t3 = time.perf_counter()
        if observations == ("energy",):
            phi = np.zeros((len(frames), sparse.n_points))
            offsets = [np.concatenate([[0], np.cumsum(np.bincount(t[2], minlength=len(frames)))]) for t in tables]
            with _single_blas_thread():
                for f in range(len(frames)):
                    inst = [Instances(t[0][o[f]:o[f + 1]], t[1][o[f]:o[f + 1]], np.zeros((o[f + 1] - o[f], 1), int))
                            for t, o in zip(tables, offsets)]
                    phi[f] = frame_rows(inst, sparse, kernels, len(frames[f]))[0]
            model.psi = whiten(L, phi)
        else:
            model.compute_pool_rows(frames, observations=observations, config_types=config_types, progress=progress,
                                    stage="force rows (quippy)")
        timings["rows"] = time.perf_counter() - t3
    model.shared_pool = None
    return model


def row_model(spec, species, vectors, cutoffs, locations, *, L: np.ndarray, jitter: float,
              observations: Sequence[str] = ("energy", "forces"), workers: int | None = None,
              use_featomic: bool = True) -> GapExactModel:
    """A :class:`GapExactModel` that computes rows of any frames from saved sparse points (no pool)."""
    species = [int(z) for z in species]
    descriptors = spec.expanded(species)
    strings = [d.descriptor_string() for d in descriptors]
    if len(vectors) != len(descriptors):
        raise InputError(f"{len(vectors)} sparse sets saved for {len(descriptors)} descriptors")
    sparse = GapSparse(tuple(strings), tuple(np.asarray(v, dtype=float) for v in vectors),
                       tuple(np.asarray(c, dtype=float) for c in cutoffs),
                       tuple(np.asarray(x, dtype=np.int64).reshape(-1, 2) for x in locations), tuple(species), [])
    M = sparse.n_points
    return GapExactModel(
        spec=spec, descriptors=descriptors, kernels=[InstanceKernel.of(d) for d in descriptors],
        dimensions=descriptor_dimensions(strings), noise=spec.noise().validate(observations),
        observations=check_observations(observations), sparse=sparse, seed=0, psi=np.zeros((0, M)),
        n_atoms=np.zeros(0, dtype=np.int64), energy_variance=np.zeros(0), L=np.asarray(L, dtype=float),
        jitter=float(jitter), workers=default_workers() if workers is None else max(1, int(workers)),
        featomic=descriptor_engines(descriptors, observations, use_featomic))
