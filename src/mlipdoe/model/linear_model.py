"""Linear-in-parameters information models: SNAP bispectra or per-atom features (spec section 8).

For a model E_s = Σ_{i∈s} Σ_k β_k B_k(x_i) with one coefficient block per element, every
observation of a frame is a design row a with prediction a·β (the rows of
:mod:`mlipdoe.model.linear` for SNAP; :class:`FeatureBasis` for per-atom features that the
user's own script writes into ``atoms.arrays``, e.g. the descriptors of a MACE model used
as a last-layer approximation). With the ridge prior β ~ N(0, λ⁻¹ I) the information is

    F(S) = λ I + Σ_{s∈S} A_sᵀ Λ_s⁻¹ A_s,

the GAP object with K_MM replaced by λ I. So L = √λ I, the whitened rows are Ψ = A / √λ,
F̃(S) = F(S) / λ = I + Σ W_sᵀ W_s, and log det F̃(S) = log det F(S) − M log λ
(``log_det_K_MM`` = M log λ). Everything downstream (the criteria, the optimizers,
assessment and grading, :func:`mlipdoe.model.rows.posterior_mean`) consumes these rows
unchanged; only :class:`LinearModel`'s three row methods know where the rows come from.

Prior precision λ (``DEFAULT_PRIOR_PRECISION`` = 1 eV⁻²): the prior standard deviation of
every coefficient is 1 eV per unit of its feature, i.e. the prior covariance of two atoms'
energies is x·x' eV², the linear kernel with GAP's default energy scale δ = 1 eV. It is
weak where it matters: one frame's energy row carries the precision
|a_s|² / (σ_E² n_s) ≈ n_s |x̄|² · 10⁶ eV⁻² along its own direction (σ_E = 1 meV/atom),
far above λ for features of order 10⁻² and larger (SNAP bispectrum components with the
default hypers are 1 to 100, force rows 0.1 to 10 Å⁻¹), so observed directions are fixed
by the data, the D gain of a frame is ≈ log(|P⊥a_s|² / (λ σ_E² n_s)) and the greedy order
hardly depends on λ; λ mainly regularises the directions no frame has seen yet. Measured
on 60-frame pools (hcp Zr with SNAP 2J = 6, M = 31; Cu/Ni with 5 features, M = 12): the
same 20 D-optimal picks for every λ from 10⁻⁴ to 10², the SNAP design departing from
pick 12 on at λ = 10⁴. Features much smaller than 10⁻² should be rescaled (or λ lowered
in proportion to |x|²).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from ..exceptions import ConfigurationError, InputError
from ..hypers import Noise, check_keys, check_observations
from ..progress import NULL_PROGRESS, Progress
from .base import PoolInformation
from .gap_featomic import check_species, observation_block
from .ace import AceBasis, ace_rows
from .linear import SnapBasis, snap_rows

#: ACE through python-ace gives energy and force rows, no virials per function.
ACE_VIRIALS_MESSAGE = ("ACE rows come from python-ace, which gives no virial per basis function: drop 'virials' "
                       "from the observations of an ACE model")

#: What a linear model's species check names: one coefficient block per species of the pool.
COVERED_BY = "the model's coefficient blocks (one per species of the pool)"

#: λ of the ridge prior β ~ N(0, λ⁻¹ I), in eV⁻² per unit feature² (see the module docstring).
DEFAULT_PRIOR_PRECISION = 1.0

FEATURE_OBSERVATIONS_MESSAGE = ("per-atom features carry no derivatives: a feature model observes energies only "
                                "(drop forces and virials from the observations, or use a SNAP basis)")


# --------------------------------------------------------------------------- feature basis

@dataclass(frozen=True)
class FeatureBasis:
    """Per-atom features read from ``atoms.arrays[key]``, one coefficient block per element.

    The energy row of a frame is the concatenation over the model's species (increasing
    atomic number) of ``[n_α, Σ_{i: Z_i=α} x_i]`` (the count column only with
    ``count_column``); the local row of atom i holds ``[1, x_i]`` in its element's block
    and zeros elsewhere, so the local rows of a frame sum to its energy row.

    Parameters
    ----------
    key : str
        Name of the per-atom array, shape (n_atoms, D), written by the user's own script.
    count_column : bool
        Give every element block a constant column n_α, i.e. a free per-element reference
        energy (default True, as SNAP's ``bzeroflag=False`` and FitSNAP). Learned features
        (e.g. a MACE model's descriptors) hold no constant component, so without it the
        absolute energy per atom (several eV for DFT energies) has to be carried by the
        features; with it, that offset costs one well-determined coefficient per element.
    dimension : int, optional
        D, the features per atom; ``None`` means "read from the pool" (filled in when a
        model is built, and recorded). Every frame must have the same D.
    """

    key: str
    count_column: bool = True
    dimension: int | None = None

    def __post_init__(self):
        if isinstance(self.count_column, (int, np.integer)) and not isinstance(self.count_column, bool) \
                and self.count_column in (0, 1):
            object.__setattr__(self, "count_column", bool(self.count_column))

    def validate(self) -> FeatureBasis:
        if not isinstance(self.key, str) or not self.key:
            raise ConfigurationError(f"the feature key must be a non-empty string, got {self.key!r}")
        if not isinstance(self.count_column, bool):
            raise ConfigurationError(f"count_column must be true or false, got {self.count_column!r}")
        if self.dimension is not None and (isinstance(self.dimension, bool) or int(self.dimension) != self.dimension
                                           or self.dimension < 1):
            raise ConfigurationError(f"the feature dimension must be an integer >= 1, got {self.dimension!r}")
        return self

    # -- reading ------------------------------------------------------------
    def atom_features(self, atoms: Atoms, index: int = 0, *, what: str = "frame") -> np.ndarray:
        """The checked (n_atoms, D) features of one frame (float64).

        Raises
        ------
        InputError
            The key is missing (the message names the frame's arrays), the array is not
            (n_atoms, D) numbers, holds non-finite values, or D differs from ``dimension``.
        """
        if self.key not in atoms.arrays:
            raise InputError(f"{what} {index} has no per-atom array {self.key!r} (its per-atom arrays: "
                             f"{', '.join(sorted(atoms.arrays))})")
        raw = np.asarray(atoms.arrays[self.key])
        n = len(atoms)
        if raw.dtype.kind not in "iuf":
            raise InputError(f"{what} {index}: atoms.arrays[{self.key!r}] must hold real numbers, got dtype {raw.dtype}")
        if raw.ndim != 2 or raw.shape[0] != n or raw.shape[1] < 1:
            hint = " (one feature per atom: reshape it to (n_atoms, 1))" if raw.ndim == 1 else ""
            raise InputError(f"{what} {index}: atoms.arrays[{self.key!r}] has shape {raw.shape}; per-atom features "
                             f"must be (n_atoms, D) = ({n}, D){hint}")
        if self.dimension is not None and raw.shape[1] != self.dimension:
            raise InputError(f"{what} {index}: atoms.arrays[{self.key!r}] has D = {raw.shape[1]} features per atom, "
                             f"the model D = {self.dimension}: every frame needs the same features")
        x = raw.astype(np.float64, copy=False)
        bad = ~np.isfinite(x)
        if bad.any():
            atom = int(np.argwhere(bad)[0, 0])
            raise InputError(f"{what} {index}: atoms.arrays[{self.key!r}] has {int(bad.sum())} non-finite values "
                             f"(first at atom {atom})")
        return x

    def with_dimension(self, atoms: Atoms, index: int = 0) -> FeatureBasis:
        """This basis with D read from ``atoms`` (unchanged when D is already set)."""
        if self.dimension is not None:
            return self
        D = int(self.atom_features(atoms, index).shape[1])
        return FeatureBasis(self.key, self.count_column, D)

    # -- columns -------------------------------------------------------------
    def _require_dimension(self) -> int:
        if self.dimension is None:
            raise ConfigurationError("the feature dimension is not known yet: build the model on frames first "
                                     "(or give FeatureBasis(dimension=D))")
        return int(self.dimension)

    def n_block(self, species: Sequence | None = None) -> int:
        """Columns per element block: D (+ 1 count column)."""
        return self._require_dimension() + int(self.count_column)

    def n_features(self, species: Sequence) -> int:
        """Row length M = T (D + count_column)."""
        return len(tuple(species)) * self.n_block()

    def feature_labels(self, species: Sequence) -> list[str]:
        """``"Zr:1"`` (count column), ``"Zr:x0"``, ``"Zr:x1"``, … per element block."""
        D = self._require_dimension()
        block = (["1"] if self.count_column else []) + [f"x{k}" for k in range(D)]
        return [f"{chemical_symbols[int(z)]}:{name}" for z in species for name in block]

    # -- rows ------------------------------------------------------------------
    def frame_rows(self, atoms: Atoms, species: Sequence[int], index: int = 0, *, local: bool = False,
                   what: str = "frame") -> np.ndarray:
        """Raw energy row (M,) of one frame, or with ``local`` its local rows (n_atoms, M)."""
        x = self.atom_features(atoms, index, what=what)
        nb, off = self.n_block(), int(self.count_column)
        numbers = np.asarray(atoms.numbers)
        if local:
            out = np.zeros((len(atoms), len(species) * nb))
            for t, z in enumerate(species):
                mine = numbers == z
                if self.count_column:
                    out[mine, t * nb] = 1.0
                out[mine, t * nb + off : (t + 1) * nb] = x[mine]
            return out
        out = np.zeros(len(species) * nb)
        for t, z in enumerate(species):
            mine = numbers == z
            if self.count_column:
                out[t * nb] = np.count_nonzero(mine)
            out[t * nb + off : (t + 1) * nb] = x[mine].sum(axis=0)
        return out

    # -- dicts -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"key": self.key, "count_column": bool(self.count_column),
                "dimension": None if self.dimension is None else int(self.dimension)}

    @classmethod
    def from_dict(cls, data: Mapping) -> FeatureBasis:
        check_keys(data, ("key", "count_column", "dimension"), "feature basis")
        if "key" not in data:
            raise ConfigurationError("a feature basis needs 'key', the name of the per-atom array")
        return cls(**dict(data)).validate()


#: ``descriptor.backend`` of each basis in a design record.
BACKENDS = {"lammps-snap": SnapBasis, "features": FeatureBasis, "pyace": AceBasis}


def backend_of(basis) -> str:
    """``"lammps-snap"``, ``"features"`` or ``"pyace"``."""
    for name, kind in BACKENDS.items():
        if isinstance(basis, kind):
            return name
    raise ConfigurationError(f"a linear model needs a SnapBasis, an AceBasis or a FeatureBasis, "
                             f"got {type(basis).__name__}")


def basis_from_descriptor(descriptor: Mapping) -> tuple[SnapBasis | FeatureBasis, tuple[int, ...] | None]:
    """The basis and species of a design record's ``descriptor`` (:meth:`LinearModel.record_fields`)."""
    if not isinstance(descriptor, Mapping) or descriptor.get("backend") not in BACKENDS:
        got = descriptor.get("backend") if isinstance(descriptor, Mapping) else descriptor
        raise ConfigurationError(f"a linear model's descriptor backend must be one of {', '.join(BACKENDS)}, "
                                 f"got {got!r}")
    data = {k: v for k, v in descriptor.items() if k not in ("backend", "species")}
    species = descriptor.get("species")
    return BACKENDS[descriptor["backend"]].from_dict(data), None if species is None else tuple(int(z) for z in species)


# --------------------------------------------------------------------------- columns

@dataclass(frozen=True)
class LinearColumns:
    """The column layout of a linear model, read where GAP models keep their sparse points.

    Attributes
    ----------
    species : tuple of int
        The model's elements, increasing atomic number: one column block each.
    block_sizes : tuple of int
        Columns of each element's block (equal for SNAP and features; an ACE potential file
        may give each element its own number of functions).
    """

    species: tuple
    block_sizes: tuple

    @property
    def n_points(self) -> int:
        """M, the number of coefficients."""
        return int(sum(self.block_sizes))

    def slices(self) -> dict:
        """``{Z: slice}``: the column block of each element."""
        stops = np.cumsum([0, *self.block_sizes])
        return {int(z): slice(int(stops[t]), int(stops[t + 1])) for t, z in enumerate(self.species)}

    def location_list(self) -> list:
        """No sparse points: ``[]`` (the design record's ``sparse_points``)."""
        return []

    @property
    def dropped(self) -> list:
        """No candidate points are dropped: ``[]``."""
        return []


# --------------------------------------------------------------------------- the model

def _check_prior_precision(value) -> float:
    try:
        lam = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"the prior precision must be a number > 0, got {value!r}") from None
    if not (math.isfinite(lam) and lam > 0):
        raise ConfigurationError(f"the prior precision must be finite and > 0, got {value!r}")
    return lam


@dataclass
class LinearModel(PoolInformation):
    """Whitened design rows of every pool frame of a linear model, and the way to extend them.

    Attributes
    ----------
    basis : SnapBasis or FeatureBasis
    prior_precision : float
        λ of the prior β ~ N(0, λ⁻¹ I) (eV⁻² per unit feature²).
    noise : Noise
    observations : tuple of str
    sparse : LinearColumns
        Species and column blocks (no sparse points).
    seed : int
    psi : (N, M) array
        Whitened energy rows A / √λ of the pool.
    n_atoms : (N,) int array
    energy_variance : (N,) array
        σ_E² n_s of each pool frame.
    L : (M, M) array
        √λ I: F = L F̃ Lᵀ.
    jitter : float
        0: nothing is added to the prior.
    factors : list of (k_s, M) arrays or None
        Compressed factors with forces/virials; ``None`` for energy-only pools.
    pool_force_moment : (M, M) array or None
    notes : list of str
    """

    basis: object
    prior_precision: float
    noise: Noise
    observations: tuple
    sparse: LinearColumns
    seed: int
    psi: np.ndarray
    n_atoms: np.ndarray
    energy_variance: np.ndarray
    L: np.ndarray
    jitter: float = 0.0
    timings: dict = field(default_factory=dict)
    config_types: list | None = None
    factors: list | None = None
    pool_force_moment: np.ndarray | None = None
    notes: list = field(default_factory=list)

    sparse_method = "none"

    @property
    def species(self) -> tuple:
        return tuple(self.sparse.species)

    @property
    def soap(self):
        """featomic SOAP with the defaults on the model's species.

        Only the model-free baselines (FPS / CUR on mean descriptors) use it; no row of
        this model comes from it.
        """
        from ..descriptors import SOAP

        return SOAP(species=self.species)

    def feature_labels(self) -> list[str]:
        """A name for each of the M columns."""
        return self.basis.feature_labels(self.species)

    def whiten(self, phi: np.ndarray) -> np.ndarray:
        """Ψ = A L⁻ᵀ = A / √λ (L = √λ I is diagonal: the triangular solve is this division)."""
        return np.atleast_2d(np.asarray(phi, dtype=np.float64)) / math.sqrt(self.prior_precision)

    def record_fields(self) -> dict:
        """The design record's ``descriptor`` (backend, basis, species) and ``kernel``."""
        return {"descriptor": {"backend": backend_of(self.basis), **self.basis.to_dict(),
                               "species": [int(z) for z in self.species]},
                "kernel": {"type": "linear", "prior_precision": float(self.prior_precision)}}

    # -- rows -------------------------------------------------------------------
    def _check_observable(self, observations: tuple) -> None:
        if isinstance(self.basis, FeatureBasis) and observations != ("energy",):
            raise ConfigurationError(FEATURE_OBSERVATIONS_MESSAGE)

    def _raw_rows(self, frames: Sequence[Atoms], *, forces: bool = False, virials: bool = False,
                  what: str = "frame") -> Iterator[tuple]:
        """``(energy (M,), forces (3n, M) or None, virials (6, M) or None)`` raw rows per frame, in order."""
        check_species(frames, self.species, what=what, covered_by=COVERED_BY)
        if isinstance(self.basis, FeatureBasis):
            if forces or virials:
                raise ConfigurationError(FEATURE_OBSERVATIONS_MESSAGE)
            for k, atoms in enumerate(frames):
                if len(atoms) == 0:
                    raise InputError(f"{what} {k} has no atoms")
                yield self.basis.frame_rows(atoms, self.species, k, what=what), None, None
            return
        if isinstance(self.basis, AceBasis):
            if virials:
                raise ConfigurationError(ACE_VIRIALS_MESSAGE)
            for rows in ace_rows(frames, self.basis, species=self.species, forces=forces):
                yield rows.energy, rows.forces, None
            return
        if virials:
            for k, atoms in enumerate(frames):
                if not np.all(atoms.pbc):
                    raise InputError(f"{what} {k} is not periodic in all directions: virials need a full cell "
                                     "(drop 'virials' from the observations)")
        for rows in snap_rows(frames, self.basis, species=self.species, forces=forces, virials=virials):
            yield rows.energy, rows.forces, rows.virials

    def rows_for(self, frames: Sequence[Atoms], *, chunk_size: int | None = None) -> np.ndarray:
        """Whitened energy rows of any frames, (len(frames), M). ``chunk_size`` is ignored."""
        frames = list(frames)
        phi = np.zeros((len(frames), self.M))
        for k, (energy, _, _) in enumerate(self._raw_rows(frames)):
            phi[k] = energy
        return self.whiten(phi)

    def local_rows(self, frames: Sequence[Atoms], *, chunk_size: int | None = None) -> list[np.ndarray]:
        """Whitened per-atom rows (n_atoms, M) per frame; they sum to the energy row.

        Feature models: ``[1, x_i] / √λ`` in atom i's element block; SNAP: atom i's bispectrum
        (``compute sna/atom``) and its count column, :meth:`~mlipdoe.model.linear.SnapEngine.local_rows`.
        ``chunk_size`` is ignored.
        """
        frames = list(frames)
        check_species(frames, self.species, covered_by=COVERED_BY)
        if isinstance(self.basis, AceBasis):
            return [self.whiten(r.local) for r in ace_rows(frames, self.basis, species=self.species, local=True)]
        if not isinstance(self.basis, FeatureBasis):
            from .linear import SnapEngine

            with SnapEngine(self.basis, self.species) as engine:
                return [self.whiten(engine.local_rows(a)) for a in frames]
        return [self.whiten(self.basis.frame_rows(a, self.species, k, local=True)) for k, a in enumerate(frames)]

    def iter_observation_rows(self, frames: Sequence[Atoms], *, observations: Sequence[str] | None = None,
                              config_types: Sequence | None = None, progress=None):
        """Stream ``(index, ObservationRows)`` of ``frames`` (see ``observation_rows``).

        Rows in the standard order (energy, forces atom-major, virials xx yy zz yz xz xy),
        noise σ_E² n, σ_F², σ_V² n per ``config_type`` (:func:`observation_block`).
        ``progress``: optional ``callable(n_frames, n_atoms)``, called per frame.
        """
        observations = check_observations(self.observations if observations is None else observations)
        self._check_observable(observations)
        frames = list(frames)
        if config_types is not None and len(config_types) != len(frames):
            raise InputError(f"config_types has {len(config_types)} entries for {len(frames)} frames")
        want_f, want_v = "forces" in observations, "virials" in observations
        return self._observation_stream(frames, want_f, want_v, config_types, progress)

    def _observation_stream(self, frames, want_f, want_v, config_types, progress):
        for index, (energy, force, virial) in enumerate(self._raw_rows(frames, forces=want_f, virials=want_v)):
            atoms = frames[index]
            ct = config_types[index] if config_types is not None else atoms.info.get("config_type")
            yield index, observation_block(self.noise, len(atoms), ct, self.whiten(energy)[0],
                                           forces=self.whiten(force) if want_f else None,
                                           virials=self.whiten(virial) if want_v else None)
            if progress is not None:
                progress(1, len(atoms))


def build_linear_model(
    frames: Sequence[Atoms],
    basis: SnapBasis | FeatureBasis,
    *,
    prior_precision: float = DEFAULT_PRIOR_PRECISION,
    noise: Noise | None = None,
    observations: Sequence[str] = ("energy",),
    config_types: Sequence | None = None,
    seed: int = 0,
    progress: Progress = NULL_PROGRESS,
) -> LinearModel:
    """Design rows of every pool frame → the whitened rows Ψ = A / √λ and the pool's factors.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        The candidate pool; its species (increasing Z) give the column blocks.
    basis : SnapBasis or FeatureBasis
        A feature basis with ``dimension=None`` gets D from the pool.
    prior_precision : float
        λ of the ridge prior β ~ N(0, λ⁻¹ I) (default :data:`DEFAULT_PRIOR_PRECISION`,
        1 eV⁻²; see the module docstring).
    noise : Noise, optional
        Default ``Noise()`` (σ_E = 1 meV/atom, σ_F = 0.1 eV/Å, σ_V = 0.05 eV/atom).
    observations : tuple of {"energy", "forces", "virials"}
        Forces and virials need a SNAP basis (features carry no derivatives).
    config_types : sequence, optional
        Per-frame config_type for the noise; default ``atoms.info["config_type"]``.
    seed : int
        Recorded (the criterion's ties and random baselines use it); no row depends on it.

    Returns
    -------
    LinearModel
        Energy-only: ``factors`` is None (each frame's factor is its scaled energy row).
        With forces/virials: the compressed factor of every frame and the pool force moment
        (:meth:`~mlipdoe.model.base.PoolInformation.set_pool_rows`).
    """
    observations = check_observations(observations)
    backend_of(basis)
    lam = _check_prior_precision(prior_precision)
    noise = (Noise() if noise is None else noise).validate(observations)
    frames = list(frames)
    if not frames:
        raise InputError("the pool is empty")
    if config_types is not None and len(config_types) != len(frames):
        raise InputError(f"config_types has {len(config_types)} entries for {len(frames)} frames")
    if isinstance(basis, FeatureBasis):
        if observations != ("energy",):
            raise ConfigurationError(FEATURE_OBSERVATIONS_MESSAGE)
        basis = basis.validate().with_dimension(frames[0], 0)
    else:
        basis = basis.validate()
    species = tuple(sorted({int(z) for a in frames for z in np.unique(a.numbers)}))
    if isinstance(basis, AceBasis):
        if "virials" in observations:
            raise ConfigurationError(ACE_VIRIALS_MESSAGE)
        basis = basis.resolve(species)
    M = basis.n_features(species)
    sizes = basis.block_sizes(species) if isinstance(basis, AceBasis) else (M // len(species),) * len(species)
    columns = LinearColumns(species, tuple(int(b) for b in sizes))
    cts = list(config_types) if config_types is not None else [a.info.get("config_type") for a in frames]
    n_atoms = np.array([len(a) for a in frames], dtype=np.int64)
    model = LinearModel(
        basis=basis, prior_precision=lam, noise=noise, observations=observations, sparse=columns, seed=int(seed),
        psi=np.zeros((len(frames), M)), n_atoms=n_atoms, energy_variance=noise.energy_variance(n_atoms, cts),
        L=math.sqrt(lam) * np.eye(M), jitter=0.0,
        config_types=list(config_types) if config_types is not None else None)
    name = {"features": "feature rows", "lammps-snap": "SNAP rows (LAMMPS)", "pyace": "ACE rows (pyace)"}[
        backend_of(basis)]
    t0 = time.perf_counter()
    if observations == ("energy",):
        phi = np.zeros((len(frames), M))
        with progress.stage(name, len(frames)) as advance:
            for k, (energy, _, _) in enumerate(model._raw_rows(frames)):
                phi[k] = energy
                advance(1, len(frames[k]))
        model.psi = model.whiten(phi)
        model.timings["rows"] = time.perf_counter() - t0
        return model
    model.compute_pool_rows(frames, observations=observations, config_types=config_types, progress=progress,
                            stage=name + ", with forces" if "forces" in observations else name)
    model.timings["force_rows"] = time.perf_counter() - t0
    return model


# --------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class LinearSpec:
    """A linear model's configuration: its basis and the ridge prior precision λ (Σ₀ = λ⁻¹ I)."""

    basis: object
    prior_precision: float = DEFAULT_PRIOR_PRECISION

    def __post_init__(self):
        if not isinstance(self.basis, tuple(BACKENDS.values())):
            raise ConfigurationError(f"a linear model's basis must be a SnapBasis, an AceBasis or a FeatureBasis, "
                                     f"got {type(self.basis).__name__}")
        object.__setattr__(self, "prior_precision", _check_prior_precision(self.prior_precision))

    def record_fields(self) -> dict:
        """``descriptor`` and ``kernel`` of the design record (species are added by the model)."""
        return {"descriptor": {"backend": backend_of(self.basis), **self.basis.to_dict()},
                "kernel": {"type": "linear", "prior_precision": float(self.prior_precision)}}

    @classmethod
    def from_record_fields(cls, descriptor: Mapping, kernel: Mapping) -> LinearSpec:
        """Inverse of :meth:`record_fields` (a record's ``species`` entry is ignored: the pool gives them)."""
        check_keys(kernel, ("type", "prior_precision"), "linear kernel")
        basis, _ = basis_from_descriptor(descriptor)
        return cls(basis, kernel.get("prior_precision", DEFAULT_PRIOR_PRECISION))


#: FitSNAP ``[BISPECTRUM]`` keys that name the elements or are FitSNAP bookkeeping, not hypers.
_FITSNAP_LAYOUT_KEYS = ("numtypes", "type")


def read_fitsnap_bispectrum(path) -> SnapBasis:
    """The ``[BISPECTRUM]`` section of a FitSNAP input file as a :class:`SnapBasis`.

    ``type`` lists the elements; per-element ``radelem``/``wj`` (and ``sinner``/``dinner``) are
    given in that order, as FitSNAP reads them. Keys mlipdoe does not model are refused by name.
    """
    import configparser

    parser = configparser.ConfigParser(inline_comment_prefixes=("#",))
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise InputError(f"cannot read FitSNAP input {path}: {exc.strerror}") from None
    except configparser.Error as exc:
        raise InputError(f"FitSNAP input {path} is not an ini file: {str(exc).splitlines()[0]}") from None
    if not parser.has_section("BISPECTRUM"):
        raise InputError(f"FitSNAP input {path} has no [BISPECTRUM] section")
    section = {k.lower(): v.split() for k, v in parser.items("BISPECTRUM")}
    types = section.get("type")
    fields = set(SnapBasis.__dataclass_fields__)
    unknown = sorted(set(section) - fields - set(_FITSNAP_LAYOUT_KEYS))
    if unknown:
        raise ConfigurationError(f"FitSNAP [BISPECTRUM] key{'s' if len(unknown) > 1 else ''} "
                                 f"{', '.join(unknown)} not supported by mlipdoe's SNAP model")
    values: dict = {}
    for key, words in section.items():
        if key in _FITSNAP_LAYOUT_KEYS:
            continue
        if key in ("radelem", "wj", "sinner", "dinner") and len(words) > 1:
            if types is None or len(types) != len(words):
                raise ConfigurationError(f"FitSNAP {key} lists {len(words)} values: give 'type' with as many "
                                         "elements")
            values[key] = {t: float(w) for t, w in zip(types, words)}
            continue
        if len(words) != 1:
            raise ConfigurationError(f"FitSNAP {key} must be one value, got {' '.join(words)}")
        word = words[0]
        kind = SnapBasis.__dataclass_fields__[key].type
        try:
            values[key] = int(word) if "int" in str(kind) and "float" not in str(kind) else \
                (bool(int(word)) if "bool" in str(kind) else float(word))
        except ValueError:
            raise ConfigurationError(f"FitSNAP {key}={word} is not a number") from None
    return SnapBasis(**values).validate()
