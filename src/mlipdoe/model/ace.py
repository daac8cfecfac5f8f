"""Linear ACE design rows through python-ace (pacemaker's ``pyace``), on the CPU.

A linear ACE model (rank-1 embedding: one density, F(ρ) = ρ, i.e. pacemaker's
``ndensity: 1``, ``fs_parameters: [1, 1]``) is linear in its coefficients. With the
B-basis functions B_k(x_i) of atom i (pyace's per-atom "B-basis projections", the
quantities pacemaker's active learning works on) the energy of a frame s is

    E_s = Σ_α [ β_α,0 n_α  +  Σ_k β_α,k Σ_{i∈s, Z_i=α} B_k(x_i) ],

so each observation of s is a *design row* a with prediction a·β, as for SNAP
(:mod:`mlipdoe.model.linear`):

    energy   a_s       = per element α: [n_α,] Σ_{i: Z_i=α} B(x_i)        (M,)
    force    a_(j,a)   = −∂a_s/∂r_{j,a}                                   (3n, M)
    local    a_i       = [1,] B(x_i) in atom i's element block             (n, M)

Column layout (M = :meth:`AceBasis.n_features`): one block per element of the model,
elements in increasing atomic number; inside a block the constant column n_α first
(``count_column``, a free per-element reference energy, as :class:`FeatureBasis` and SNAP
with ``bzeroflag`` off), then that element's B-functions in pyace's order: the rank-1
functions, then the higher ranks (the order of ``ACEBBasisSet.basis_coeffs`` within the
element). Force rows are zero in the constant columns. :meth:`AceBasis.feature_labels`
names every column. Blocks may differ in length between elements (a potential file may
give each element its own functions); :meth:`AceBasis.block_sizes` gives them.

Where the numbers come from (python-ace >= 0.4): ``ACECalculator.compute(ae,
compute_projections=True, compute_b_grad=True)`` of an ``ACEBEvaluator`` fills
``projections`` (per atom, that atom's element's B-functions) and ``forces_bfuncs``
(n, K_total, 3) = −∂(Σ_i B(x_i))/∂r_j in pyace's global function order (elements in
pyace's order, each element's functions contiguous), the matrix pyace's own
``linearacefit`` fits with. With coefficients c in ``basis_coeffs`` pyace's energy is
Σ_i c·B(x_i) and its forces Σ_k c_k forces_bfuncs[:, k], exactly (checked by
``tests/test_model_ace.py``, with central differences for the force rows). No virial
rows: pyace gives only the total virial of a potential, not one per function.

A basis comes from either

* hyperparameters (:class:`AceBasis` fields), built by pyace's
  ``create_multispecies_basis_config`` with one ``ALL`` block: radial basis ``radbase``
  with ``radparameters``, cutoff ``cutoff`` (smoothing ``dcut``), per-rank caps
  ``nradmax_by_orders`` and ``lmax_by_orders``, optionally cut to the
  ``number_of_functions_per_element`` lowest functions ("power_order" ladder), radial
  coefficients at pacemaker's delta initialisation (R_nl = g_n). The rows are those of
  the basis pacemaker would start from and that pyace's ``LinearACEDataset`` fits
  (radial coefficients fixed); the selection is python-ace's, so its version is part of
  the basis; :meth:`AceBasis.basis_configuration` gives the basis to save and fit. Or
* a pacemaker B-basis potential file (YAML), ``path``, whose ``sha256`` is recorded and
  checked on every load. Only its functions and radial coefficients matter, not its
  coefficients. It must be linear: every element with ``ndensity`` 1 and
  ``fs_parameters`` [1, 1] (FinnisSinclair or FinnisSinclairShiftedScaled); a ZBL inner
  cutoff or core repulsion (both make pyace's energy non-linear in the coefficients,
  the projections no longer its derivative) are refused. A ``distance`` inner cutoff is
  accepted (the functions stay linear).

Frames: fully periodic (any cell, smaller than the cutoff too), non-periodic, or partly
periodic; pyace's neighbour builder takes the first two, and a partly periodic frame is
handed over as fully periodic with its non-periodic cell vectors replaced by orthogonal
ones longer than the frame's extent plus the cutoff (the same neighbours).

``import pyace`` configures the root logger (``logging.basicConfig`` at INFO); the import
here restores the root logger and sets the ``pyace`` loggers to WARNING.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from ..exceptions import ConfigurationError, InputError
from ..hypers import check_keys
from .linear import species_numbers

#: What to install for :func:`load_pyace`.
ACE_INSTALL_HINT = "install mlipdoe[ace] (the python-ace wheel)"

#: The embedding of a linear ACE (pacemaker's ``embeddings: ALL``): F(ρ) = ρ, one density.
LINEAR_EMBEDDING = {"npot": "FinnisSinclairShiftedScaled", "fs_parameters": [1, 1], "ndensity": 1}

#: Radial spline step of pyace's evaluator (pacemaker's default ``deltaSplineBins``), Å.
DELTA_SPLINE_BINS = 0.001

_LINEAR_NPOT = ("FinnisSinclair", "FinnisSinclairShiftedScaled")

_PYACE = None


def load_pyace():
    """The ``pyace`` module (python-ace), imported once with the root logger left as it was.

    Raises
    ------
    ConfigurationError
        python-ace is not installed or does not import, or lacks the B-gradients
        (``ACECalculator.forces_bfuncs``, python-ace >= 0.4).
    """
    global _PYACE
    if _PYACE is not None:
        return _PYACE
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        module = importlib.import_module("pyace")
    except ImportError:
        raise ConfigurationError(f"ACE rows need python-ace: {ACE_INSTALL_HINT}") from None
    except Exception as exc:  # noqa: BLE001 - a broken binary wheel raises OSError and the like
        raise ConfigurationError(f"python-ace does not import ({type(exc).__name__}: {exc}): "
                                 f"{ACE_INSTALL_HINT}") from None
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
    logging.getLogger("pyace").setLevel(logging.WARNING)
    if not hasattr(module.ACECalculator, "forces_bfuncs"):
        raise ConfigurationError(f"this python-ace ({getattr(module, '__version__', '?')}) gives no "
                                 f"B-basis gradients (ACECalculator.forces_bfuncs): {ACE_INSTALL_HINT}")
    _PYACE = module
    return module


# --------------------------------------------------------------------------- hypers

def _int_tuple(name: str, value, minimum: int) -> tuple[int, ...]:
    try:
        items = tuple(value)
    except TypeError:
        raise ConfigurationError(f"ACE {name} must be a list of integers, got {value!r}") from None
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer, float)) or int(v) != v or v < minimum:
            raise ConfigurationError(f"ACE {name} must be a list of integers >= {minimum}, got {list(items)!r}")
        out.append(int(v))
    if not out:
        raise ConfigurationError(f"ACE {name} must list at least one rank")
    return tuple(out)


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise ConfigurationError(f"cannot read the ACE potential file {path}: {exc.strerror}") from None
    return digest.hexdigest()


_HYPERS = ("elements", "cutoff", "dcut", "radbase", "radparameters", "nradmax_by_orders", "lmax_by_orders",
           "number_of_functions_per_element")
_FILE_FIELDS = ("path", "sha256")


@dataclass(frozen=True)
class AceBasis:
    """A linear ACE B-basis: pacemaker hyperparameters, or a pacemaker potential file.

    Parameters
    ----------
    elements : tuple of str, optional
        Elements of the basis (symbols). ``None`` means "the model's species" (filled in by
        :meth:`resolve`, and recorded). Multi-element functions couple all of them.
    cutoff : float
        Radial cutoff ``rcut`` (Å); default 5 Å, the default SOAP cutoff.
    dcut : float
        Width of the cosine cutoff function ``dcut`` (Å).
    radbase : str
        pyace radial basis (``SBessel``, ``ChebExpCos``, ``ChebPow``, ...).
    radparameters : tuple of float
        Its parameters (pacemaker's default 5.25 for ``SBessel``).
    nradmax_by_orders, lmax_by_orders : tuple of int
        Per-rank caps on the radial index n and on l (rank 1 first, ``lmax`` 0 there); the
        number of entries is the maximum rank (body order − 1).
    number_of_functions_per_element : int, optional
        Keep this many functions per element, lowest first (pacemaker's "power_order"
        ladder); ``None`` keeps every function the caps allow.
    count_column : bool
        Give every element block a constant column n_α (default True).
    path : str, optional
        A pacemaker B-basis potential file (YAML) instead of the hyperparameters, which
        must then be left at their defaults.
    sha256 : str, optional
        SHA-256 of ``path``; ``None`` means "read the file" (filled in by :meth:`resolve`).
        A file whose hash differs from a given one is refused.
    """

    elements: tuple | None = None
    cutoff: float = 5.0
    dcut: float = 0.01
    radbase: str = "SBessel"
    radparameters: tuple = (5.25,)
    nradmax_by_orders: tuple = (15, 3, 2, 1)
    lmax_by_orders: tuple = (0, 2, 2, 1)
    number_of_functions_per_element: int | None = None
    count_column: bool = True
    path: str | None = None
    sha256: str | None = None

    def __post_init__(self):
        if self.elements is not None and not isinstance(self.elements, str):
            try:
                numbers = species_numbers(self.elements)
            except InputError as exc:
                raise ConfigurationError(f"ACE elements: {exc}") from None
            object.__setattr__(self, "elements", tuple(chemical_symbols[z] for z in numbers))
        if isinstance(self.radparameters, (int, float)) and not isinstance(self.radparameters, bool):
            object.__setattr__(self, "radparameters", (float(self.radparameters),))
        elif not isinstance(self.radparameters, str):
            try:
                object.__setattr__(self, "radparameters", tuple(float(v) for v in self.radparameters))
            except (TypeError, ValueError):
                pass  # validate() names the problem
        for name in ("nradmax_by_orders", "lmax_by_orders"):
            value = getattr(self, name)
            if not isinstance(value, (str, tuple)):
                try:
                    object.__setattr__(self, name, tuple(value))
                except TypeError:
                    pass
        if isinstance(self.count_column, (int, np.integer)) and not isinstance(self.count_column, bool) \
                and self.count_column in (0, 1):
            object.__setattr__(self, "count_column", bool(self.count_column))
        if isinstance(self.path, Path):
            object.__setattr__(self, "path", str(self.path))

    # -- checks -----------------------------------------------------------------
    @property
    def from_file(self) -> bool:
        """True for a potential file, False for hyperparameters."""
        return self.path is not None

    def validate(self) -> AceBasis:
        """Check the fields (without python-ace; the basis itself is checked when loaded)."""
        if not isinstance(self.count_column, bool):
            raise ConfigurationError(f"count_column must be true or false, got {self.count_column!r}")
        if self.from_file:
            if not isinstance(self.path, str) or not self.path:
                raise ConfigurationError(f"the ACE potential path must be a non-empty string, got {self.path!r}")
            defaults = AceBasis()
            changed = [name for name in _HYPERS if getattr(self, name) != getattr(defaults, name)]
            if changed:
                raise ConfigurationError(f"an ACE basis from a potential file takes no hyperparameters "
                                         f"(got {', '.join(changed)}): the file defines the basis")
            if self.sha256 is not None and (not isinstance(self.sha256, str) or len(self.sha256) != 64
                                            or any(ch not in "0123456789abcdef" for ch in self.sha256)):
                raise ConfigurationError(f"the ACE potential sha256 must be 64 lower-case hex digits, "
                                         f"got {self.sha256!r}")
            return self
        if self.sha256 is not None:
            raise ConfigurationError("an ACE sha256 needs the potential file 'path'")
        if isinstance(self.elements, str):
            raise ConfigurationError(f"ACE elements must be a list of symbols, got {self.elements!r}")
        for name in ("cutoff", "dcut"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ConfigurationError(f"ACE {name} must be a number > 0, got {value!r}")
        if self.dcut >= self.cutoff:
            raise ConfigurationError(f"ACE dcut ({self.dcut}) must be below the cutoff ({self.cutoff})")
        if not isinstance(self.radbase, str) or not self.radbase:
            raise ConfigurationError(f"ACE radbase must be a radial basis name, got {self.radbase!r}")
        if not isinstance(self.radparameters, tuple) or not all(isinstance(v, float) and math.isfinite(v)
                                                               for v in self.radparameters):
            raise ConfigurationError(f"ACE radparameters must be a list of numbers, got {self.radparameters!r}")
        nrad = _int_tuple("nradmax_by_orders", self.nradmax_by_orders, 1)
        lmax = _int_tuple("lmax_by_orders", self.lmax_by_orders, 0)
        if len(nrad) != len(lmax):
            raise ConfigurationError(f"ACE nradmax_by_orders {list(nrad)} and lmax_by_orders {list(lmax)} must "
                                     "give one value per rank each")
        if lmax[0] != 0:
            raise ConfigurationError(f"ACE lmax_by_orders must start with 0 (rank-1 functions have l = 0), "
                                     f"got {list(lmax)}")
        n = self.number_of_functions_per_element
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
            raise ConfigurationError(f"ACE number_of_functions_per_element must be an integer >= 1, got {n!r}")
        return self

    def resolve(self, species: Sequence) -> AceBasis:
        """This basis with ``elements`` (hyperparameters: the species) or ``sha256`` (file) filled in."""
        self.validate()
        if self.from_file:
            return self if self.sha256 is not None else replace(self, sha256=file_sha256(self.path))
        if self.elements is not None:
            return self
        return replace(self, elements=tuple(chemical_symbols[z] for z in species_numbers(species)))

    # -- the pyace basis ----------------------------------------------------------
    def potential_config(self, species: Sequence | None = None) -> dict:
        """pacemaker's ``potential:`` section for the hyperparameters (``elements`` or ``species``)."""
        if self.from_file:
            raise ConfigurationError("an ACE basis from a potential file has no hyperparameters")
        self.validate()
        elements = self.elements
        if elements is None:
            if species is None:
                raise ConfigurationError("the ACE elements are not known yet: give elements or the model's species")
            elements = tuple(chemical_symbols[z] for z in species_numbers(species))
        functions = {"ALL": {"nradmax_by_orders": list(self.nradmax_by_orders),
                             "lmax_by_orders": list(self.lmax_by_orders)}}
        if self.number_of_functions_per_element is not None:
            functions["number_of_functions_per_element"] = int(self.number_of_functions_per_element)
        return {"deltaSplineBins": DELTA_SPLINE_BINS, "elements": list(elements),
                "embeddings": {"ALL": {k: (list(v) if isinstance(v, list) else v)
                                       for k, v in LINEAR_EMBEDDING.items()}},
                "bonds": {"ALL": {"radbase": self.radbase, "radparameters": list(self.radparameters),
                                  "rcut": float(self.cutoff), "dcut": float(self.dcut)}},
                "functions": functions}

    def basis_configuration(self, species: Sequence | None = None):
        """A fresh pyace ``BBasisConfiguration`` of this basis (coefficients zero for hyperparameters).

        ``.save(path)`` writes the pacemaker potential file to fit (e.g. with pyace's
        ``LinearACEDataset``/``LinearACEFit``, radial coefficients fixed).
        """
        pyace = load_pyace()
        if self.from_file:
            _check_file(self.resolve(species or ()))
            try:
                conf = pyace.BBasisConfiguration()
                conf.load(str(self.path))
            except Exception as exc:  # noqa: BLE001 - pybind11 raises RuntimeError and the like
                raise ConfigurationError(f"python-ace cannot read the ACE potential file {self.path}: "
                                         f"{exc}") from None
            return conf
        try:
            return pyace.create_multispecies_basis_config(self.potential_config(species))
        except ConfigurationError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyace raises ValueError, KeyError, RuntimeError
            raise ConfigurationError(f"python-ace cannot build the ACE basis: {type(exc).__name__}: {exc}") from None

    def basis_set(self, species: Sequence | None = None):
        """A fresh pyace ``ACEBBasisSet`` of this basis, checked to be a linear ACE.

        Raises
        ------
        ConfigurationError
            python-ace is missing, the file changed or is unreadable, or the basis is not
            linear (see the module docstring).
        """
        pyace = load_pyace()
        conf = self.basis_configuration(species)
        try:
            bset = pyace.ACEBBasisSet(conf)
        except Exception as exc:  # noqa: BLE001 - pybind11 raises RuntimeError and the like
            raise ConfigurationError(f"python-ace cannot build the ACE basis set: {exc}") from None
        _check_linear(bset, self.path if self.from_file else "the ACE hyperparameters")
        return bset

    # -- columns (python-ace needed: the function counts come from the basis) ------------
    def layout(self, species: Sequence) -> AceLayout:
        """The column layout of the model's species (cached per basis)."""
        return _cached(self, species).layout

    def block_sizes(self, species: Sequence) -> tuple[int, ...]:
        """Columns of each element block (increasing atomic number)."""
        return self.layout(species).block_sizes

    def n_block(self, species: Sequence) -> int:
        """Columns per element block, when every element has the same number of functions.

        Raises
        ------
        ConfigurationError
            The blocks differ in length (:meth:`block_sizes`).
        """
        sizes = set(self.block_sizes(species))
        if len(sizes) != 1:
            raise ConfigurationError(f"the ACE element blocks differ in length {self.block_sizes(species)}: "
                                     "there is no common block size")
        return sizes.pop()

    def n_features(self, species: Sequence) -> int:
        """Row length M = Σ_α (K_α + count_column)."""
        return int(sum(self.block_sizes(species)))

    def feature_labels(self, species: Sequence) -> list[str]:
        """``"Cu:1"``, ``"Cu:B[Cu|n=1|l=0]"``, ``"Cu:B[CuNi|n=1,2|l=1,1]"``, (``|L=…`` for rank ≥ 4), …"""
        return list(self.layout(species).labels)

    # -- dicts ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        if self.from_file:
            return {"path": self.path, "sha256": self.sha256, "count_column": bool(self.count_column)}
        n = self.number_of_functions_per_element
        return {"elements": None if self.elements is None else list(self.elements),
                "cutoff": float(self.cutoff), "dcut": float(self.dcut), "radbase": self.radbase,
                "radparameters": [float(v) for v in self.radparameters],
                "nradmax_by_orders": [int(v) for v in self.nradmax_by_orders],
                "lmax_by_orders": [int(v) for v in self.lmax_by_orders],
                "number_of_functions_per_element": None if n is None else int(n),
                "count_column": bool(self.count_column)}

    @classmethod
    def from_dict(cls, data: Mapping) -> AceBasis:
        if isinstance(data, Mapping) and "path" in data:
            check_keys(data, (*_FILE_FIELDS, "count_column"), "ACE basis (from a potential file)")
        else:
            check_keys(data, (*_HYPERS, "count_column"), "ACE basis")
        return cls(**dict(data)).validate()


def _check_file(basis: AceBasis) -> None:
    """Refuse a potential file whose bytes no longer have the recorded SHA-256."""
    actual = file_sha256(basis.path)
    if actual != basis.sha256:
        raise ConfigurationError(f"the ACE potential file {basis.path} has sha256 {actual}, the basis records "
                                 f"{basis.sha256}: the file changed")


def _check_linear(bset, source) -> None:
    """Refuse a basis whose energy is not Σ c·B (see the module docstring)."""
    names = list(bset.elements_name)
    for mu, emb in bset.map_embedding_specifications.items():
        fs = [float(v) for v in emb.FS_parameters]
        if int(emb.ndensity) != 1 or emb.npoti not in _LINEAR_NPOT or fs != [1.0, 1.0]:
            raise ConfigurationError(
                f"{source}: element {names[mu]} has a non-linear embedding (npot {emb.npoti}, ndensity "
                f"{emb.ndensity}, fs_parameters {fs}); a linear ACE needs ndensity 1 and fs_parameters [1, 1]")
    for (mu, nu), bond in bset.map_bond_specifications.items():
        pair = f"{names[mu]}-{names[nu]}"
        if float(bond.prehc) != 0.0:
            raise ConfigurationError(f"{source}: bond {pair} has core repulsion (prefactor {bond.prehc}), which "
                                     "makes the energy non-linear in the coefficients; set core-repulsion to [0, 0]")
        if str(bond.inner_cutoff_type) != "distance" and float(bond.rcut_in) > 0:
            raise ConfigurationError(f"{source}: bond {pair} has a {bond.inner_cutoff_type} inner cutoff "
                                     f"(r_in {bond.rcut_in} Å), which makes the energy non-linear in the "
                                     "coefficients; use inner_cutoff_type distance or r_in 0")


# --------------------------------------------------------------------------- layout

@dataclass(frozen=True)
class AceLayout:
    """Where each pyace function goes in a design row.

    Attributes
    ----------
    species : tuple of int
        The model's elements, increasing atomic number.
    block_sizes : tuple of int
        Columns per element block.
    offsets : tuple of int
        First column of each block.
    element_index : tuple of int
        pyace's index of each model element.
    n_functions : tuple of int
        B-functions of each model element.
    src, dst : (K,) int arrays
        pyace global function index → model column, for the model's elements.
    labels : tuple of str
    """

    species: tuple
    block_sizes: tuple
    offsets: tuple
    element_index: tuple
    n_functions: tuple
    src: np.ndarray
    dst: np.ndarray
    labels: tuple

    @property
    def n_features(self) -> int:
        return int(sum(self.block_sizes))


def _function_label(func, names) -> str:
    neigh = "".join(names[int(m)] for m in func.mus)
    text = f"B[{neigh}|n={','.join(str(int(n)) for n in func.ns)}|l={','.join(str(int(v)) for v in func.ls)}"
    LS = list(func.LS)
    if LS:
        text += f"|L={','.join(str(int(v)) for v in LS)}"
    return text + "]"


def _layout(bset, species: tuple, count_column: bool) -> AceLayout:
    names = list(bset.elements_name)
    index = {name: mu for mu, name in enumerate(names)}
    missing = [chemical_symbols[z] for z in species if chemical_symbols[z] not in index]
    if missing:
        raise ConfigurationError(f"the ACE basis has no functions for {', '.join(missing)} (its elements: "
                                 f"{', '.join(names)}): give a basis with every species of the pool")
    counts = [len(r1) + len(rk) for r1, rk in zip(bset.basis_rank1, bset.basis)]
    shifts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
    cc = int(count_column)
    sizes, offsets, mus, nfs, src, dst, labels = [], [], [], [], [], [], []
    offset = 0
    for z in species:
        mu = index[chemical_symbols[z]]
        k = counts[mu]
        sizes.append(k + cc)
        offsets.append(offset)
        mus.append(mu)
        nfs.append(k)
        src.append(shifts[mu] + np.arange(k))
        dst.append(offset + cc + np.arange(k))
        sym = chemical_symbols[z]
        if cc:
            labels.append(f"{sym}:1")
        labels.extend(f"{sym}:{_function_label(f, names)}" for f in (*bset.basis_rank1[mu], *bset.basis[mu]))
        offset += k + cc
    return AceLayout(tuple(species), tuple(sizes), tuple(offsets), tuple(mus), tuple(nfs),
                     np.concatenate(src), np.concatenate(dst), tuple(labels))


class _Loaded(NamedTuple):
    bset: object
    layout: AceLayout
    cutoff: float
    element_index: dict  # atomic number -> pyace index, every basis element


_CACHE: dict = {}


def _cached(basis: AceBasis, species: Sequence) -> _Loaded:
    numbers = species_numbers(species)
    resolved = basis.resolve(numbers)
    if resolved.from_file:
        _check_file(resolved)
    key = (json.dumps(resolved.to_dict(), sort_keys=True), numbers)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    bset = resolved.basis_set(numbers)
    layout = _layout(bset, numbers, resolved.count_column)
    element_index = {atomic_numbers[name]: mu for mu, name in enumerate(bset.elements_name)}
    loaded = _Loaded(bset, layout, float(bset.cutoffmax), element_index)
    if len(_CACHE) > 16:
        _CACHE.clear()
    _CACHE[key] = loaded
    return loaded


# --------------------------------------------------------------------------- frames

def _neighbour_cell(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, bool]:
    """Cell and pbc flag for pyace's builder (fully periodic or not periodic at all).

    A partly periodic frame keeps its periodic vectors; each non-periodic one becomes an
    orthonormal complement vector of length (extent across it) + cutoff + 1 Å, so no
    periodic image along it comes within the cutoff.
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.array(atoms.cell.array, dtype=np.float64)
    if not pbc.any():
        return cell, False
    periodic = cell[pbc]
    scale = np.abs(periodic).max()
    if not scale > 0 or np.linalg.matrix_rank(periodic, tol=1e-10 * scale) < len(periodic):
        raise InputError("the periodic cell vectors are zero or linearly dependent")
    if pbc.all():
        return cell, True
    _, _, vt = np.linalg.svd(periodic)
    complement = vt[len(periodic):]                 # (3 - k, 3) orthonormal, ⊥ the periodic vectors
    across = atoms.positions @ complement.T
    length = float(np.ptp(across, axis=0).max()) + float(cutoff) + 1.0
    cell[~pbc] = length * complement
    return cell, True


# --------------------------------------------------------------------------- rows

class AceRows(NamedTuple):
    """Design rows of one frame (column layout: :meth:`AceBasis.feature_labels`)."""

    energy: np.ndarray              # (M,)
    forces: np.ndarray | None       # (3n, M), atom-major x, y, z
    local: np.ndarray | None        # (n, M), sums to ``energy``


class AceEngine:
    """One pyace evaluator computing linear ACE design rows frame after frame.

    Parameters
    ----------
    basis : AceBasis
    species : sequence of str or int
        Elements of the model (column blocks in increasing atomic number); every one must be
        an element of the basis.
    """

    def __init__(self, basis: AceBasis, species: Sequence):
        self.species = species_numbers(species)
        self.basis = basis.resolve(self.species)
        pyace = load_pyace()
        loaded = _cached(self.basis, self.species)
        self.layout = loaded.layout
        self.n_features = loaded.layout.n_features
        self._cutoff = loaded.cutoff
        self._bset = loaded.bset
        # the calculator keeps no reference to its evaluator: both live here
        self._evaluator = pyace.ACEBEvaluator(self._bset)
        self._calc = pyace.ACECalculator(self._evaluator)
        self._build = importlib.import_module("pyace.catomicenvironment").build_atomic_env
        zmax = max(max(self.species), max(loaded.element_index)) + 1
        self._to_pyace = np.full(zmax, -1, dtype=int)
        for z, mu in loaded.element_index.items():
            self._to_pyace[z] = mu
        self._to_block = np.full(zmax, -1, dtype=int)
        self._to_block[list(self.species)] = np.arange(len(self.species))

    def _blocks(self, atoms: Atoms) -> np.ndarray:
        numbers = np.asarray(atoms.numbers)
        inside = numbers < len(self._to_block)
        blocks = np.full(len(numbers), -1, dtype=int)
        blocks[inside] = self._to_block[numbers[inside]]
        if (blocks < 0).any():
            extra = sorted({chemical_symbols[z] for z in numbers[blocks < 0]})
            raise InputError(f"frame has species {', '.join(extra)} outside the model's species "
                             f"{', '.join(chemical_symbols[z] for z in self.species)}")
        return blocks

    def rows(self, atoms: Atoms, *, forces: bool = False, local: bool = False) -> AceRows:
        """Design rows of one frame.

        Parameters
        ----------
        atoms : ase.Atoms
            Any cell: periodic (triclinic, smaller than the cutoff), partly periodic, or none.
        forces, local : bool
            Also return the 3n force rows / the n per-atom rows.

        Returns
        -------
        AceRows
            ``energy`` (M,), ``forces`` (3n, M) or None, ``local`` (n, M) or None.
        """
        n = len(atoms)
        if n == 0:
            raise InputError("frame has no atoms")
        blocks = self._blocks(atoms)
        cell, pbc = _neighbour_cell(atoms, self._cutoff)
        positions = np.ascontiguousarray(atoms.positions, dtype=np.float64)
        try:
            ae = self._build(positions, cell, np.asarray(atoms.numbers, dtype=int), pbc, self._cutoff)
            all_numbers = np.asarray(ae.species_type, dtype=int)
            ae.species_type = self._to_pyace[all_numbers].tolist()
            if int(ae.n_atoms_real) != n:
                raise InputError(f"python-ace placed {ae.n_atoms_real} of the frame's {n} atoms")
            self._calc.compute(ae, compute_projections=True, compute_b_grad=bool(forces))
            projections = self._calc.projections
            fb = np.asarray(self._calc.forces_bfuncs) if forces else None
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - pybind11 raises RuntimeError and the like
            raise InputError(f"python-ace failed on the frame: {type(exc).__name__}: {exc}") from None
        lay, cc = self.layout, int(self.basis.count_column)
        M = self.n_features
        energy = np.zeros(M)
        loc = np.zeros((n, M)) if local else None
        for t in range(len(self.species)):
            mine = np.flatnonzero(blocks == t)
            if not len(mine):
                continue
            k, o = lay.n_functions[t], lay.offsets[t]
            proj = np.array([projections[i] for i in mine], dtype=np.float64).reshape(len(mine), k)
            energy[o + cc : o + cc + k] = proj.sum(axis=0)
            if cc:
                energy[o] = len(mine)
            if local:
                loc[mine, o + cc : o + cc + k] = proj
                if cc:
                    loc[mine, o] = 1.0
        f_rows = None
        if forces:
            if fb.shape[:1] != (n,) or fb.ndim != 3 or fb.shape[2] != 3:
                raise InputError(f"python-ace returned B-gradients of shape {fb.shape} for {n} atoms")
            f_rows = np.zeros((3 * n, M))
            f_rows[:, lay.dst] = fb[:, lay.src, :].transpose(0, 2, 1).reshape(3 * n, -1)
        return AceRows(energy, f_rows, loc)


def ace_rows(frames: Iterable[Atoms], basis: AceBasis, *, species: Sequence, forces: bool = False,
             local: bool = False) -> Iterator[AceRows]:
    """Linear ACE design rows of every frame, streamed, through one pyace evaluator.

    Parameters
    ----------
    frames : iterable of ase.Atoms
    basis : AceBasis
    species : sequence of str or int
        The elements of the model (column blocks in increasing atomic number); a frame
        with another element raises :class:`~mlipdoe.exceptions.InputError`.
    forces, local : bool
        Also yield the force rows (3n, M) / the per-atom rows (n, M).

    Yields
    ------
    AceRows
        ``(energy (M,), forces (3n, M) or None, local (n, M) or None)`` per frame, in order.

    Raises
    ------
    ConfigurationError
        python-ace is missing (:data:`ACE_INSTALL_HINT`), or the basis is unusable.
    """
    engine = AceEngine(basis, species)
    for i, atoms in enumerate(frames):
        try:
            yield engine.rows(atoms, forces=forces, local=local)
        except InputError as exc:
            raise InputError(f"frame {i}: {exc}") from None

