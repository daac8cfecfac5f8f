"""Configuration families from geometry: synthetic crystals with known answers, and the Zuo data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, surface

from mlipdoe.bench import families as fam
from mlipdoe.bench.families import (
    FAMILIES,
    family_measures,
    frame_families,
    frame_family,
    split_by_families,
)
from mlipdoe.exceptions import InputError

#: ../shared/data/zuo2020 next to the repository root.
ZUO = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "zuo2020"

A_CU, A_MO = 3.615, 3.147


def cu108():
    return bulk("Cu", "fcc", a=A_CU, cubic=True).repeat(3)


def mo54():
    return bulk("Mo", "bcc", a=A_MO, cubic=True).repeat(3)


def deformed(atoms, F):
    """``atoms`` under the homogeneous deformation gradient F (positions and cell)."""
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ np.asarray(F).T, scale_atoms=True)
    return out


def deviatoric_hencky(F):
    """Largest |principal deviatoric Hencky strain| of F, from the eigenvalues of F Fᵀ."""
    log_eig = np.log(np.linalg.eigvalsh(np.asarray(F) @ np.asarray(F).T))
    return np.max(np.abs(0.5 * (log_eig - log_eig.mean())))


UNIAXIAL = np.diag([1.02, 1.0, 1.0])
SHEAR = np.array([[1.0, 0.02, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("make, a_plane", [(cu108, A_CU / 2), (mo54, A_MO / 2)])
def test_perfect_supercell_is_ground(make, a_plane):
    atoms = make()
    m = family_measures(atoms)
    assert frame_family(atoms) == "ground"
    assert m["vacuum_gap"] == pytest.approx(a_plane, abs=1e-9)  # the (200) plane spacing
    assert m["shape_strain"] == pytest.approx(0.0, abs=1e-12)
    assert m["displacement"] < 1e-6
    assert m["unpaired_fraction"] == 0.0
    assert m["missing_sites"] == 0


@pytest.mark.parametrize("atoms, coordination, d_nn", [
    (bulk("Cu", "fcc", a=A_CU), 12, A_CU / np.sqrt(2)),  # one atom: every bond is to a periodic image
    (bulk("Mo", "bcc", a=A_MO, cubic=True), 14, A_MO * np.sqrt(3) / 2),  # first and second bcc shells
])
def test_small_cells_use_periodic_images(atoms, coordination, d_nn):
    m = family_measures(atoms)
    assert frame_family(atoms) == "ground"
    assert m["coordination"] == coordination
    assert m["nearest_neighbour"] == pytest.approx(d_nn)


@pytest.mark.parametrize("make", [cu108, mo54])
@pytest.mark.parametrize("F", [UNIAXIAL, SHEAR], ids=["uniaxial", "shear"])
def test_strained_cell(make, F):
    atoms = deformed(make(), F)
    m = family_measures(atoms)
    assert frame_family(atoms) == "strained"
    assert m["shape_strain"] == pytest.approx(deviatoric_hencky(F), rel=1e-6)
    assert m["displacement"] < 1e-6


def test_measures_do_not_depend_on_orientation():
    atoms = deformed(cu108(), SHEAR)
    turned = atoms.copy()
    turned.rotate(37, "x", rotate_cell=True)
    turned.rotate(-21, "z", rotate_cell=True)
    a, b = family_measures(atoms), family_measures(turned)
    for key in ("vacuum_gap", "shape_strain", "nearest_neighbour", "coordination"):
        assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-9)


def test_hydrostatic_scaling_is_not_visible():
    atoms = deformed(cu108(), 1.03 * np.eye(3))
    assert frame_family(atoms) == "ground"
    assert family_measures(atoms)["nearest_neighbour"] == pytest.approx(1.03 * A_CU / np.sqrt(2))


@pytest.mark.parametrize("make", [cu108, mo54])
def test_rattled_cell_is_aimd_with_its_rms_displacement(make):
    ideal = make()
    atoms = ideal.copy()
    atoms.rattle(stdev=0.1, seed=7)
    rms = np.sqrt(np.mean(np.sum((atoms.positions - ideal.positions) ** 2, axis=1)))  # ≈ √3 × 0.1
    m = family_measures(atoms)
    assert frame_family(atoms) == "aimd"
    assert m["displacement"] == pytest.approx(rms, rel=0.06)


def test_rattled_strained_cell_is_aimd():
    atoms = deformed(cu108(), UNIAXIAL)
    atoms.rattle(stdev=0.05, seed=3)
    assert frame_family(atoms) == "aimd"


@pytest.mark.parametrize("make, shell", [(cu108, 12), (mo54, 14)])
def test_vacancy(make, shell):
    perfect = make()
    atoms = perfect.copy()
    del atoms[5]
    m = family_measures(atoms)
    assert frame_family(atoms) == "vacancy"
    assert m["missing_sites"] == 1
    # each shell neighbour of the empty site lost the opposite of one of its bonds
    bonds = len(perfect) * shell - 2 * shell
    assert m["unpaired_fraction"] == pytest.approx(shell / bonds)
    assert m["displacement"] < 1e-6
    atoms.rattle(stdev=0.1, seed=1)
    assert frame_family(atoms) == "vacancy"  # a thermal vacancy frame is still a vacancy


def test_atom_counts_of_vacancy_cells():
    assert [fam._missing_sites(n) for n in (15, 31, 53, 107, 127, 249, 255)] == [1] * 7
    assert [fam._missing_sites(n) for n in (1, 3, 7, 16, 26, 54, 106, 108)] == [0] * 8


@pytest.mark.parametrize("build", [
    lambda: fcc111("Cu", size=(2, 2, 4), a=A_CU, vacuum=8.0),
    lambda: surface(bulk("Mo", "bcc", a=A_MO, cubic=True), (1, 1, 0), 4, vacuum=8.0),
])
def test_surface_gap_is_the_vacuum(build):
    slab = build()
    normal = np.cross(slab.cell[0], slab.cell[1])
    normal /= np.linalg.norm(normal)
    heights = slab.positions @ normal
    expected = abs(slab.cell[2] @ normal) - (heights.max() - heights.min())  # 2 × 8 Å
    m = family_measures(slab)
    assert frame_family(slab) == "surface"
    assert m["vacuum_axis"] == 2
    assert m["vacuum_gap"] == pytest.approx(expected, abs=0.1)
    assert m["vacuum_gap"] == pytest.approx(16.0, abs=0.1)


def test_vacuum_gap_counts_the_periodic_wrap():
    slab = fcc111("Cu", size=(2, 2, 4), a=A_CU, vacuum=8.0)
    slab.pbc = True
    slab.translate([0.0, 0.0, 12.0])  # the slab now straddles the cell boundary
    slab.wrap()
    assert slab.positions[:, 2].max() - slab.positions[:, 2].min() > 16.0
    assert family_measures(slab)["vacuum_gap"] == pytest.approx(16.0, abs=0.1)
    slab.rattle(stdev=0.1, seed=2)
    assert frame_family(slab) == "surface"


def test_chunked_bond_search_matches(monkeypatch):
    atoms = cu108()
    atoms.rattle(stdev=0.08, seed=4)
    whole = family_measures(atoms)
    monkeypatch.setattr(fam, "_CHUNK_PAIRS", 500)
    assert family_measures(atoms) == pytest.approx(whole, rel=1e-12)


def test_hcp_at_rest_has_half_its_bonds_unpaired():
    ideal = bulk("Zr", "hcp", a=3.23, c=3.23 * np.sqrt(8 / 3)).repeat((3, 3, 2))
    m = family_measures(ideal)
    assert frame_family(ideal) == "ground"  # ideal close packing: isotropic fabric
    assert m["unpaired_fraction"] == pytest.approx(0.5)  # the out-of-plane bonds have no opposite
    assert m["displacement"] < 1e-6


def test_frame_without_volume_is_refused():
    with pytest.raises(InputError, match="non-zero volume"):
        frame_family(Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]]))


def mixed_frames():
    vacancy = cu108()
    del vacancy[0]
    rattled = cu108()
    rattled.rattle(stdev=0.1, seed=5)
    return [cu108(), deformed(cu108(), SHEAR), rattled, vacancy, fcc111("Cu", size=(2, 2, 4), a=A_CU, vacuum=8.0)]


def test_split_by_families():
    frames = mixed_frames()
    assert frame_families(frames) == ["ground", "strained", "aimd", "vacancy", "surface"]
    train, test = split_by_families(frames, ["surface", "vacancy"])
    assert train.tolist() == [0, 1, 2] and test.tolist() == [3, 4]
    train, test = split_by_families(frames, "aimd")  # one name, not its letters
    assert train.tolist() == [0, 1, 3, 4] and test.tolist() == [2]


def test_split_by_families_refuses_bad_requests():
    frames = mixed_frames()
    with pytest.raises(InputError, match="unknown configuration family 'slab'; choose from surface, vacancy"):
        split_by_families(frames, ["surface", "slab"])
    with pytest.raises(InputError, match="no test family given"):
        split_by_families(frames, [])
    with pytest.raises(InputError, match="no frame is in the test families ground"):
        split_by_families(frames[1:], ["ground"])
    with pytest.raises(InputError, match="every frame is in the test families"):
        split_by_families(frames, list(FAMILIES))


#: Frames per family (train, test) measured on the Zuo et al. (2020) data; docs/families.md.
ZUO_COUNTS = {
    "Cu": {"surface": (10, 2), "vacancy": (36, 4), "aimd": (108, 12), "strained": (107, 13), "ground": (1, 0)},
    "Ni": {"surface": (11, 2), "vacancy": (36, 4), "aimd": (108, 12), "strained": (107, 13), "ground": (1, 0)},
    "Mo": {"surface": (9, 2), "vacancy": (21, 3), "aimd": (108, 12), "strained": (54, 6), "ground": (2, 0)},
    "Li": {"surface": (11, 2), "vacancy": (36, 4), "aimd": (172, 20), "strained": (21, 3), "ground": (1, 0)},
}


@pytest.fixture(scope="module")
def zuo_families():
    if not ZUO.is_dir():
        pytest.skip("../shared/data/zuo2020 not present")
    from ase.io import read

    return {(element, split): Counter(frame_families(read(ZUO / f"{element}_{split}.xyz", index=":")))
            for element in ZUO_COUNTS for split in ("train", "test")}


@pytest.mark.parametrize("element", sorted(ZUO_COUNTS))
def test_zuo_families(zuo_families, element):
    train, test = zuo_families[element, "train"], zuo_families[element, "test"]
    assert {f: (train[f], test[f]) for f in FAMILIES} == ZUO_COUNTS[element]
    assert sum(train[f] >= 5 for f in FAMILIES) >= 3
