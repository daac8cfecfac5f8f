"""Candidate generators: homogeneously strained crystals, rattled, with vacancies.

Strains are drawn space-filling (scrambled Sobol or Latin hypercube) in the
six-dimensional Voigt strain space, so a small candidate pool already covers
the elastic regime evenly. The built-in example :func:`zr_example` is
elastically deformed hcp Zr.

Conventions
-----------
Voigt order is ``VOIGT = ("xx", "yy", "zz", "yz", "xz", "xy")``. Shear
components are *engineering* shears ``gamma_ij = 2 eps_ij``, so the symmetric
strain tensor has off-diagonals equal to half the Voigt shear components.
A strain acts on row-vector cells as ``cell' = cell @ (I + eps)``.
"""

from __future__ import annotations

import math
import os
from typing import Sequence, Union

import ase.io
import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.data import chemical_symbols
from scipy.stats import qmc

from .atomic import atomic_output
from .exceptions import InputError

__all__ = [
    "VOIGT",
    "deform",
    "generate_strained",
    "sample_strains",
    "strain_matrix",
    "strain_to_voigt",
    "write_frames",
    "zr_example",
]

VOIGT = ("xx", "yy", "zz", "yz", "xz", "xy")

# hcp Zr lattice at the minimum of the Mendelev EAM potential (c/a = 1.593).
ZR_HCP_A = 3.232
ZR_HCP_C = 5.147

GENERATOR_TAG = "mlipdoe.generate_strained"

# Voigt index -> (row, col) of the off-diagonal entry.
_SHEAR_PAIRS = {3: (1, 2), 4: (0, 2), 5: (0, 1)}


def strain_matrix(voigt: Sequence[float]) -> np.ndarray:
    """Symmetric 3x3 strain tensor from a Voigt vector.

    Parameters
    ----------
    voigt : array_like, shape (6,)
        ``(e_xx, e_yy, e_zz, gamma_yz, gamma_xz, gamma_xy)`` with engineering
        shears ``gamma_ij = 2 eps_ij``.

    Returns
    -------
    numpy.ndarray, shape (3, 3)
        ``eps`` with ``eps[i, i] = e_ii`` and ``eps[i, j] = gamma_ij / 2``.

    Raises
    ------
    InputError
        If ``voigt`` is not six finite numbers.
    """
    v = np.asarray(voigt, dtype=float)
    if v.shape != (6,) or not np.all(np.isfinite(v)):
        raise InputError(f"a Voigt strain must be 6 finite numbers {VOIGT}, got shape {v.shape}")
    eps = np.diag(v[:3])
    for k, (i, j) in _SHEAR_PAIRS.items():
        eps[i, j] = eps[j, i] = 0.5 * v[k]
    return eps


def strain_to_voigt(eps: np.ndarray) -> np.ndarray:
    """Inverse of :func:`strain_matrix` (symmetrises ``eps`` first).

    Parameters
    ----------
    eps : array_like, shape (3, 3)

    Returns
    -------
    numpy.ndarray, shape (6,)
        Voigt vector with engineering shears ``eps[i, j] + eps[j, i]``.
    """
    e = np.asarray(eps, dtype=float)
    if e.shape != (3, 3):
        raise InputError(f"a strain tensor must have shape (3, 3), got {e.shape}")
    out = np.empty(6)
    out[:3] = np.diag(e)
    for k, (i, j) in _SHEAR_PAIRS.items():
        out[k] = e[i, j] + e[j, i]
    return out


def sample_strains(
    n: int,
    *,
    max_strain: float,
    min_strain: float = 0.0,
    method: str = "sobol",
    seed: int = 0,
) -> np.ndarray:
    """Space-filling Voigt strains.

    Points are drawn in ``[0, 1)^6`` with a scrambled Sobol sequence
    (``2**ceil(log2 n)`` points, the first ``n`` kept, so scipy's balance
    warning is avoided) or a Latin hypercube, and mapped affinely to the cube
    ``[-max_strain, max_strain]^6``.

    With ``min_strain > 0`` the cube is mapped onto the shell
    ``min_strain <= max_k |x_k| <= max_strain``: each sample ``x`` with
    ``r = max_k |x_k|`` keeps its direction and is rescaled to radius
    ``r' = (min^6 + (max^6 - min^6) (r / max)^6)^(1/6)``, i.e. ``x' = x r'/r``.
    This radial map sends the uniform distribution on the cube to the uniform
    distribution on the shell (the L-infinity volume grows as ``r^6``), so
    the design stays evenly spread. A sample at the exact origin (probability
    zero) becomes ``(min_strain, 0, 0, 0, 0, 0)``.

    Parameters
    ----------
    n : int
        Number of strains, >= 1.
    max_strain : float
        Largest absolute Voigt component, > 0.
    min_strain : float, default 0.0
        Smallest allowed ``max_k |x_k|``; ``0 <= min_strain < max_strain``.
    method : {"sobol", "lhs"}
    seed : int, default 0
        Non-negative; same seed gives identical output.

    Returns
    -------
    numpy.ndarray, shape (n, 6)
        Voigt strains (engineering shears) in :data:`VOIGT` order.

    Raises
    ------
    InputError
        On invalid arguments.
    """
    n = _check_int(n, "n", minimum=1)
    seed = _check_int(seed, "seed", minimum=0)
    max_strain, min_strain = _check_strain_bounds(max_strain, min_strain, upper=None)
    if method == "sobol":
        sampler = qmc.Sobol(d=6, scramble=True, seed=seed)
        u = sampler.random_base2(m=math.ceil(math.log2(n)) if n > 1 else 0)[:n]
    elif method == "lhs":
        u = qmc.LatinHypercube(d=6, seed=seed).random(n)
    else:
        raise InputError(f"unknown strain sampling method {method!r}; use 'sobol' or 'lhs'")
    x = (2.0 * u - 1.0) * max_strain
    if min_strain > 0:
        x = _to_shell(x, min_strain, max_strain)
    return x


def _to_shell(x: np.ndarray, min_strain: float, max_strain: float) -> np.ndarray:
    """Volume-preserving radial map of the cube onto the L-infinity shell."""
    r = np.max(np.abs(x), axis=1)
    t = r / max_strain  # in [0, 1]
    s = min_strain / max_strain
    r_new = max_strain * (s**6 + (1.0 - s**6) * t**6) ** (1.0 / 6.0)
    out = np.empty_like(x)
    zero = r == 0
    out[~zero] = x[~zero] * (r_new[~zero] / r[~zero])[:, None]
    out[zero] = 0.0
    out[zero, 0] = min_strain
    # Guard the bounds against the last ulp of rounding.
    return np.clip(out, -max_strain, max_strain)


def deform(atoms: Atoms, voigt: Sequence[float]) -> Atoms:
    """Homogeneously strained copy of ``atoms``.

    Parameters
    ----------
    atoms : ase.Atoms
    voigt : array_like, shape (6,)
        Voigt strain, see :func:`strain_matrix`.

    Returns
    -------
    ase.Atoms
        A copy with ``cell' = cell @ (I + eps)`` and atoms scaled with the cell
        (fractional coordinates unchanged). ``info`` is copied unchanged.
    """
    eps = strain_matrix(voigt)
    new = atoms.copy()
    new.set_cell(np.asarray(atoms.cell.array) @ (np.eye(3) + eps), scale_atoms=True)
    return new


def generate_strained(
    base: Union[str, Atoms, "os.PathLike[str]"] = "Zr",
    *,
    structure: str = "hcp",
    a: float | None = None,
    c: float | None = None,
    n_frames: int = 100,
    max_strain: float = 0.02,
    min_strain: float = 0.0,
    supercell: int | Sequence[int] = (2, 2, 2),
    rattle: float = 0.0,
    vacancies: int = 0,
    method: str = "sobol",
    seed: int = 0,
    config_type: str = "strain",
) -> list[Atoms]:
    """Strained (optionally rattled, defective) copies of a crystal.

    Each frame: ``base`` repeated by ``supercell``, deformed by one strain
    from :func:`sample_strains`, then rattled with Gaussian displacements of
    standard deviation ``rattle`` Å, then stripped of ``vacancies`` random
    atoms. Rattle and vacancy choices come from independent generators
    ``np.random.default_rng([seed, 1])`` and ``np.random.default_rng([seed, 2])``,
    so the same ``seed`` gives bit-identical frames.

    Parameters
    ----------
    base : str, ase.Atoms or path, default "Zr"
        A chemical symbol/formula for ``ase.build.bulk(base, structure, a=a, c=c)``,
        an ``ase.Atoms``, or a path to a structure file (its first frame).
        A string is read as a file only if it names an existing file and is
        not a chemical symbol.
    structure : str, default "hcp"
        Crystal structure for ``ase.build.bulk`` (symbol bases only).
    a, c : float, optional
        Lattice parameters in Å (symbol bases only). For hcp Zr the defaults
        are ``a = 3.232``, ``c = a * 5.147 / 3.232`` (c/a = 1.593, Mendelev EAM
        minimum); otherwise ASE's defaults.
    n_frames : int, default 100
    max_strain, min_strain : float
        Bounds of the strains, ``0 <= min_strain < max_strain < 0.5``
        (see :func:`sample_strains` for the shell rule).
    supercell : int or 3 ints, default (2, 2, 2)
    rattle : float, default 0.0
        Gaussian displacement std in Å, >= 0.
    vacancies : int, default 0
        Atoms removed per frame, fewer than the supercell holds.
    method : {"sobol", "lhs"}
    seed : int, default 0
    config_type : str, default "strain"
        ``info["config_type"]``; ``f"{config_type}_vacancy"`` when ``vacancies > 0``.

    Returns
    -------
    list of ase.Atoms
        ``n_frames`` frames with ``info["strain"]`` (6 floats, Voigt, engineering
        shear), ``info["config_type"]`` and ``info["mlipdoe_generator"]``.

    Raises
    ------
    InputError
        On invalid arguments or an unreadable base file.
    """
    n_frames = _check_int(n_frames, "n_frames", minimum=1)
    seed = _check_int(seed, "seed", minimum=0)
    vacancies = _check_int(vacancies, "vacancies", minimum=0)
    max_strain, min_strain = _check_strain_bounds(max_strain, min_strain, upper=0.5)
    rattle = float(rattle)
    if not np.isfinite(rattle) or rattle < 0:
        raise InputError(f"rattle must be a finite std in Å >= 0, got {rattle}")
    reps = _check_supercell(supercell)
    if method not in ("sobol", "lhs"):
        raise InputError(f"unknown strain sampling method {method!r}; use 'sobol' or 'lhs'")

    cell = _resolve_base(base, structure, a, c).repeat(reps)
    if vacancies >= len(cell):
        raise InputError(
            f"vacancies={vacancies} must be fewer than the {len(cell)} atoms in the supercell; "
            "lower vacancies or enlarge supercell"
        )
    cell.calc = None
    cell.info = {}

    strains = sample_strains(n_frames, max_strain=max_strain, min_strain=min_strain, method=method, seed=seed)
    rattle_rng = np.random.default_rng([seed, 1])
    vacancy_rng = np.random.default_rng([seed, 2])
    ctype = f"{config_type}_vacancy" if vacancies > 0 else str(config_type)
    tag = f"{GENERATOR_TAG}:{method}"

    frames = []
    for voigt in strains:
        atoms = deform(cell, voigt)
        if rattle > 0:
            atoms.positions += rattle_rng.normal(0.0, rattle, size=(len(atoms), 3))
        if vacancies > 0:
            remove = vacancy_rng.choice(len(atoms), size=vacancies, replace=False)
            del atoms[np.sort(remove)]
        atoms.info["strain"] = [float(v) for v in voigt]
        atoms.info["config_type"] = ctype
        atoms.info["mlipdoe_generator"] = tag
        frames.append(atoms)
    return frames


def zr_example(
    n_frames: int = 200,
    *,
    seed: int = 0,
    max_strain: float = 0.03,
    rattle: float = 0.02,
    supercell: int | Sequence[int] = (2, 2, 2),
) -> list[Atoms]:
    """The built-in example pool: elastically deformed, lightly rattled hcp Zr.

    ``hcp`` Zr with ``a = 3.232`` Å, ``c = 5.147`` Å, Sobol strains up to
    ``max_strain`` and ``rattle`` Å Gaussian noise; see :func:`generate_strained`.

    Returns
    -------
    list of ase.Atoms
        ``n_frames`` frames, ``config_type == "strain"``.
    """
    return generate_strained(
        "Zr",
        structure="hcp",
        a=ZR_HCP_A,
        c=ZR_HCP_C,
        n_frames=n_frames,
        max_strain=max_strain,
        supercell=supercell,
        rattle=rattle,
        method="sobol",
        seed=seed,
        config_type="strain",
    )


def write_frames(frames: Atoms | Sequence[Atoms], path: Union[str, "os.PathLike[str]"], *,
                 what: str = "output") -> None:
    """Write frames as extended XYZ, atomically.

    The frames go to a temporary file in the target's directory, which then
    replaces ``path`` with ``os.replace``; readers never see a partial file
    and no temporary file is left behind on error.

    Parameters
    ----------
    frames : ase.Atoms or sequence of ase.Atoms
    path : str or os.PathLike
    what : str
        How error messages name the output (e.g. ``-o``).

    Raises
    ------
    InputError
        If there are no frames, the target's folder does not exist or the target is a
        folder (:func:`mlipdoe.atomic.check_output`).
    """
    if isinstance(frames, Atoms):
        frames = [frames]
    frames = list(frames)
    if not frames:
        raise InputError(f"no frames to write to {os.fspath(path)}")
    with atomic_output(path, what=what) as tmp:
        ase.io.write(tmp, frames, format="extxyz")


# ------------------------------------------------------------------ internals


def _check_int(value, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_strain_bounds(max_strain, min_strain, *, upper: float | None) -> tuple[float, float]:
    max_strain, min_strain = float(max_strain), float(min_strain)
    if not (np.isfinite(max_strain) and np.isfinite(min_strain)):
        raise InputError(f"strain bounds must be finite, got max_strain={max_strain}, min_strain={min_strain}")
    if max_strain <= 0 or (upper is not None and max_strain >= upper):
        bound = f"0 < max_strain < {upper:g}" if upper is not None else "max_strain > 0"
        raise InputError(f"need {bound}, got max_strain={max_strain:g}")
    if not 0 <= min_strain < max_strain:
        raise InputError(f"need 0 <= min_strain < max_strain, got min_strain={min_strain:g}, max_strain={max_strain:g}")
    return max_strain, min_strain


def _check_supercell(supercell) -> tuple[int, int, int]:
    reps = (supercell,) * 3 if isinstance(supercell, (int, np.integer)) and not isinstance(supercell, bool) else supercell
    try:
        reps = tuple(reps)
    except TypeError:
        raise InputError(f"supercell must be 3 positive integers, got {supercell!r}") from None
    if len(reps) != 3 or any(
        isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1 for r in reps
    ):
        raise InputError(f"supercell must be 3 positive integers, got {supercell!r}")
    return tuple(int(r) for r in reps)


def _resolve_base(base, structure: str, a: float | None, c: float | None) -> Atoms:
    """The unit cell: a copy of an Atoms, a file's first frame, or ase.build.bulk."""
    if isinstance(base, Atoms):
        if a is not None or c is not None:
            raise InputError("a and c apply only to a chemical-symbol base; scale the given Atoms instead")
        if len(base) == 0:
            raise InputError("base structure has no atoms")
        return base.copy()
    is_path = isinstance(base, os.PathLike) or (
        isinstance(base, str) and base not in chemical_symbols and os.path.isfile(base)
    )
    if is_path:
        p = os.fspath(base)
        if a is not None or c is not None:
            raise InputError("a and c apply only to a chemical-symbol base, not to a structure file")
        if not os.path.isfile(p):
            raise InputError(f"base structure file not found: {p}")
        try:
            atoms = ase.io.read(p, index=0)
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            raise InputError(f"cannot read base structure {p}: {type(exc).__name__}: {reason}") from exc
        if len(atoms) == 0:
            raise InputError(f"base structure {p} has no atoms")
        return atoms
    if not isinstance(base, str):
        raise InputError(f"base must be a chemical symbol, an ase.Atoms or a path, got {type(base).__name__}")
    if base == "Zr" and structure == "hcp":
        a = ZR_HCP_A if a is None else float(a)
        c = a * (ZR_HCP_C / ZR_HCP_A) if c is None else float(c)
    try:
        return bulk(base, structure, a=a, c=c)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        looks_like_path = os.sep in base or "." in base
        hint = f"base structure file not found: {base}" if looks_like_path else (
            f"cannot build bulk {base!r} ({structure}): {type(exc).__name__}: {reason}"
        )
        raise InputError(hint) from exc
