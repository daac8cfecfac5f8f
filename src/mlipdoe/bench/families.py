"""Configuration families from geometry alone, for train-on-some / test-on-others benchmarks.

A frame's family is decided from its positions and cell only — never from energies,
forces or ``info`` keys — so a family split keeps labels hidden from selection. The rules are
applied in order; the first that matches names the family:

1. ``"surface"``: some cell axis has a vacuum gap (the largest distance between
   consecutive atomic planes along it, periodic wrap included) above :data:`VACUUM_GAP`.
2. ``"vacancy"``: ``n + 1`` atoms would fill a cubic supercell of the conventional bcc
   (2k³) or fcc (4k³) cell, k ≥ 2 (53 of 54, 107 of 108).
3. ``"aimd"``: the thermal displacement estimate (below) exceeds :data:`DISPLACEMENT`.
4. ``"strained"``: the bond network is deformed from cubic shape by more than :data:`SHAPE_STRAIN`.
5. ``"ground"`` otherwise.

The displacement estimate is a paired form of the centrosymmetry parameter (Kelchner,
Plimpton & Hamilton, Phys. Rev. B 58, 11085, 1998): in a Bravais lattice every bond
vector d of an atom has its opposite −d, and an affine strain keeps it so. For each
first-shell bond d_ij (length below :data:`SHELL` × the nearest-neighbour distance) the
residual min_k |d_ij + d_ik| is taken over the atom's bonds; with independent displacements
u, E|u_j + u_k − 2 u_i|² = 6 E|u|², so sqrt(mean residual² / 6) estimates the RMS
displacement. Bonds whose residual exceeds :data:`UNPAIRED` × the nearest-neighbour distance
have no opposite site (a vacancy, a surface, a liquid) and are counted, not averaged.

The shape strain is read from the second-moment (fabric) tensor of the first-shell bond
vectors, M = mean d dᵀ: it is isotropic for cubic lattices (and ideal close packing) and
becomes F M₀ Fᵀ under a deformation gradient F, so M / det(M)^⅓ = F Fᵀ / det(F)^⅔. The
measure is the largest principal deviatoric Hencky strain, max |½ ln λ(M / det(M)^⅓)|.
A purely hydrostatic scaling leaves it at zero: without a reference lattice constant it
is not visible from one frame's geometry.

The thresholds were fixed on the Zuo et al. (2020) Cu, Ni, Mo and Li data
(``docs/families.md``). Limits: the displacement rule assumes atoms on inversion centres, as in
a Bravais lattice. In hcp half of the first-shell bonds are unpaired and the other half give a
rough displacement (0.22 Å for a 0.17 Å RMS rattle), and the shape strain is taken against
ideal close packing; in diamond no first-shell bond has an opposite, the displacement is NaN and the frame counts as
``"aimd"``. The vacancy rule knows cubic bcc and fcc supercells only; the 4 Å vacuum gap assumes
planes closer than that in bulk (true unless the nearest-neighbour distance exceeds ~4.9 Å);
the fixed shell cutoff keeps whole first shells for strains up to about 10 %.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from ase import Atoms

from ..exceptions import InputError

__all__ = [
    "DISPLACEMENT", "FAMILIES", "SHAPE_STRAIN", "VACUUM_GAP", "family_from_measures", "family_measures",
    "frame_families", "frame_family", "split_by_families",
]

#: Families in rule order.
FAMILIES = ("surface", "vacancy", "aimd", "strained", "ground")

#: Vacuum gap (Å) above which a frame is a surface. Bulk frames of the data reach 2.0 Å (the
#: widest plane spacing of a 10 % stretched fcc cell), slabs start at 10.8 Å.
VACUUM_GAP = 4.0

#: RMS displacement estimate (Å) above which a frame is thermal. Strained and ground frames
#: reach 0.020 Å (Mo), thermal snapshots without vacancy start at 0.064 Å (Ni).
DISPLACEMENT = 0.035

#: Largest principal deviatoric Hencky strain above which a frame is strained. Ground
#: frames reach 1.5e-5, the smallest applied deformation gives 3.3e-3 (Li, 0.5 % uniaxial).
SHAPE_STRAIN = 1e-3

#: First-shell bonds are shorter than SHELL × the nearest-neighbour distance: between the
#: fcc first (1) and second (√2) shells and above the bcc second shell (2/√3), with room for
#: 10 % strains.
SHELL = 1.3

#: A bond is unpaired when no bond of the same atom lies within UNPAIRED × the
#: nearest-neighbour distance of its opposite.
UNPAIRED = 0.5

#: Bond search radius in units of (volume per atom)^⅓: 1.8 nearest-neighbour distances for
#: fcc and bcc, enough to hold the first shell and every candidate opposite.
_SEARCH = 2.0

#: Memory bound (number of pair vectors) of one chunk of the bond search.
_CHUNK_PAIRS = 2_000_000


def _check_frame(atoms: Atoms) -> np.ndarray:
    if len(atoms) == 0:
        raise InputError("frame_family needs a frame with at least one atom")
    cell = atoms.cell.array
    if abs(np.linalg.det(cell)) < 1e-12:
        raise InputError("frame_family needs a frame with a cell of non-zero volume (the periodic box)")
    return cell


def _vacuum_gaps(atoms: Atoms, cell: np.ndarray) -> np.ndarray:
    """Largest gap (Å) between consecutive atomic planes along each cell axis, shape (3,).

    Fractional coordinates along axis i are sorted on the unit circle; the largest gap
    (the wrap from the last back to the first included) times the plane spacing
    1 / |b_i| (b_i the reciprocal vector) is the vacuum thickness normal to the other two axes.
    """
    frac = np.linalg.solve(cell.T, atoms.positions.T).T % 1.0
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)
    s = np.sort(frac, axis=0)
    gaps = np.diff(np.vstack([s, s[:1] + 1.0]), axis=0).max(axis=0)
    return gaps * spacing


def _bonds(atoms: Atoms, cell: np.ndarray, radius: float):
    """Periodic bond vectors shorter than ``radius``: (i, D) with D[p] = r_j + shift − r_i.

    Fractional differences are wrapped into [−½, ½); an image k along axis a can hold a bond
    shorter than ``radius`` only when |k| ≤ radius / width_a + ½ (width_a the plane spacing),
    so those shifts are enumerated. Pairs are processed in chunks of rows to bound memory.
    """
    n = len(atoms)
    frac = np.linalg.solve(cell.T, atoms.positions.T).T
    widths = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)
    reach = np.floor(radius / widths + 0.5).astype(int)
    shifts = np.stack(np.meshgrid(*[np.arange(-m, m + 1) for m in reach], indexing="ij"), -1).reshape(-1, 3)
    shift_cart = shifts @ cell
    rows = max(1, _CHUNK_PAIRS // max(1, n * len(shifts)))
    out_i, out_d = [], []
    for start in range(0, n, rows):
        block = np.arange(start, min(n, start + rows))
        df = frac[None, :, :] - frac[block, None, :]
        df -= np.round(df)
        vec = (df @ cell)[:, :, None, :] + shift_cart[None, None, :, :]  # (rows, n, S, 3)
        d2 = np.einsum("abcd,abcd->abc", vec, vec)
        keep = (d2 < radius**2) & (d2 > 1e-16)
        a, _, _ = np.nonzero(keep)
        out_i.append(block[a])
        out_d.append(vec[keep])
    return np.concatenate(out_i), np.concatenate(out_d)


def _padded(i: np.ndarray, vectors: np.ndarray, n: int, fill: float) -> np.ndarray:
    """Bond vectors per atom, (n, K, 3), padded with ``(fill, fill, fill)``."""
    counts = np.bincount(i, minlength=n)
    out = np.full((n, max(1, int(counts.max())), 3), fill)
    order = np.argsort(i, kind="stable")
    slot = np.arange(len(i)) - np.repeat(np.cumsum(counts) - counts, counts)
    out[i[order], slot] = vectors[order]
    return out


def _bond_network(atoms: Atoms, cell: np.ndarray, volume: float):
    """Bonds (i, D, |D|) out to (SHELL + UNPAIRED) × the median nearest-neighbour distance, and that distance.

    The first radius is :data:`_SEARCH` × (volume per atom)^⅓; it doubles while most atoms have
    no neighbour (it stops at the longest cell vector, within which every atom meets its own
    image) and is widened once when the shell and its opposites reach past it.
    """
    n = len(atoms)
    radius = _SEARCH * (volume / n) ** (1.0 / 3.0)
    longest = 1.001 * float(np.linalg.norm(cell, axis=1).max())
    while True:
        i, vectors = _bonds(atoms, cell, radius)
        lengths = np.linalg.norm(vectors, axis=1)
        nearest = np.full(n, np.inf)
        np.minimum.at(nearest, i, lengths)
        d_nn = float(np.median(nearest))
        reach = (SHELL + UNPAIRED) * d_nn
        if reach <= radius:
            return i, vectors, lengths, d_nn
        radius = 1.001 * reach if np.isfinite(d_nn) else min(2.0 * radius, max(longest, radius))


def _shape_strain(shell: np.ndarray) -> float:
    """Largest |principal deviatoric Hencky strain| from bond vectors (m, 3)."""
    if len(shell) < 3:
        return float("nan")
    fabric = shell.T @ shell / len(shell)
    eig = np.linalg.eigvalsh(fabric)
    if eig[0] <= 0:
        return float("nan")
    log_eig = np.log(eig)
    return float(np.max(np.abs(0.5 * (log_eig - log_eig.mean()))))


def _missing_sites(n: int) -> int:
    """1 when ``n + 1`` is 2k³ or 4k³ (k ≥ 2), a cubic bcc or fcc supercell; else 0."""
    target = n + 1
    for basis in (2, 4):
        k = round((target / basis) ** (1.0 / 3.0))
        if k >= 2 and basis * k**3 == target:
            return 1
    return 0


def family_measures(atoms: Atoms) -> dict:
    """The geometric measures behind :func:`frame_family`.

    Parameters
    ----------
    atoms : ase.Atoms
        A frame with a cell. Only positions and cell are read; the cell is taken as the
        periodic box on all three axes whatever ``pbc`` says (ASE's slab builders mark the
        vacuum axis non-periodic; a plane-wave code repeats it all the same).

    Returns
    -------
    dict
        ``n_atoms``; ``vacuum_gap`` (Å, largest over the axes) and ``vacuum_axis``;
        ``missing_sites`` (1 when ``n_atoms + 1`` fills a cubic bcc/fcc supercell);
        ``nearest_neighbour`` (Å, median over atoms); ``displacement`` (Å, RMS displacement
        estimate from paired bonds); ``unpaired_fraction`` (first-shell bonds without an
        opposite site); ``coordination`` (first-shell bonds per atom); ``shape_strain``
        (largest principal deviatoric Hencky strain of the bond network).

    Raises
    ------
    InputError
        If the frame has no atoms or its cell has zero volume.
    """
    cell = _check_frame(atoms)
    n = len(atoms)
    gaps = _vacuum_gaps(atoms, cell)
    axis = int(np.argmax(gaps))
    volume = abs(np.linalg.det(cell))
    if gaps[axis] > VACUUM_GAP:  # the volume of the slab, vacuum excluded
        spacing = 1.0 / np.linalg.norm(np.linalg.inv(cell)[:, axis])
        volume *= max(1.0 - gaps[axis] / spacing, 1e-3)
    i, vectors, lengths, d_nn = _bond_network(atoms, cell, volume)
    in_shell = lengths < SHELL * d_nn
    candidate = lengths < (SHELL + UNPAIRED) * d_nn
    shell = _padded(i[in_shell], vectors[in_shell], n, 0.0)  # (n, Kq, 3), zero-padded
    valid = np.linalg.norm(shell, axis=2) > 0
    others = _padded(i[candidate], vectors[candidate], n, 1e3)  # (n, Kc, 3), far-padded
    # |d_ij + d_ik|² = |d_ij|² + |d_ik|² + 2 d_ij · d_ik, minimised over k
    square = (np.einsum("nqd,nqd->nq", shell, shell)[:, :, None] + np.einsum("ncd,ncd->nc", others, others)[:, None, :]
              + 2.0 * np.matmul(shell, others.transpose(0, 2, 1)))
    residual = np.sqrt(np.maximum(square.min(axis=2), 0.0))[valid]
    paired = residual < UNPAIRED * d_nn
    n_shell = int(valid.sum())
    displacement = float(np.sqrt(np.mean(residual[paired] ** 2) / 6.0)) if paired.any() else float("nan")
    return {
        "n_atoms": n,
        "vacuum_gap": float(gaps[axis]),
        "vacuum_axis": axis,
        "missing_sites": _missing_sites(n),
        "nearest_neighbour": d_nn,
        "displacement": displacement,
        "unpaired_fraction": float(1.0 - paired.mean()) if n_shell else float("nan"),
        "coordination": n_shell / n,
        "shape_strain": _shape_strain(vectors[in_shell]),
    }


def family_from_measures(measures: dict) -> str:
    """The family that the rules of this module give to :func:`family_measures` output."""
    if measures["vacuum_gap"] > VACUUM_GAP:
        return "surface"
    if measures["missing_sites"]:
        return "vacancy"
    if not measures["displacement"] <= DISPLACEMENT:  # NaN (no paired bond) counts as disorder
        return "aimd"
    if measures["shape_strain"] > SHAPE_STRAIN:
        return "strained"
    return "ground"


def frame_family(atoms: Atoms) -> str:
    """The configuration family of one frame, from its geometry.

    Parameters
    ----------
    atoms : ase.Atoms
        A frame with a cell; labels (energy, forces, ``info``) are not read.

    Returns
    -------
    str
        One of :data:`FAMILIES`: ``"surface"``, ``"vacancy"``, ``"aimd"``, ``"strained"``,
        ``"ground"`` (rules in the module docstring).
    """
    return family_from_measures(family_measures(atoms))


def frame_families(frames: Sequence[Atoms]) -> list[str]:
    """:func:`frame_family` of every frame, in order."""
    return [frame_family(atoms) for atoms in frames]


def split_by_families(frames: Sequence[Atoms], test_families: Iterable[str] | str) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the frames outside and inside ``test_families``.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        The frames to split.
    test_families : str or iterable of str
        Family names (from :data:`FAMILIES`) held out for testing.

    Returns
    -------
    train_idx, test_idx : ndarray of int
        Ascending frame indices; together they cover every frame once.

    Raises
    ------
    InputError
        For an unknown family name, or when either side of the split is empty.
    """
    wanted = {test_families} if isinstance(test_families, str) else set(test_families)
    unknown = sorted(wanted - set(FAMILIES))
    if unknown:
        raise InputError(f"unknown configuration family {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(FAMILIES)}")
    if not wanted:
        raise InputError(f"no test family given; choose from {', '.join(FAMILIES)}")
    labels = frame_families(frames)
    held_out = np.array([label in wanted for label in labels], dtype=bool)
    test_idx, train_idx = np.flatnonzero(held_out), np.flatnonzero(~held_out)
    present = {label: labels.count(label) for label in FAMILIES if label in labels}
    found = ", ".join(f"{k} {v}" for k, v in present.items()) or "none"
    if len(test_idx) == 0:
        raise InputError(f"no frame is in the test families {', '.join(sorted(wanted))} (frames per family: {found})")
    if len(train_idx) == 0:
        raise InputError(f"every frame is in the test families {', '.join(sorted(wanted))}; "
                         f"leave at least one family for training (frames per family: {found})")
    return train_idx, test_idx
