"""Linear ACE design rows (mlipdoe.model.ace) against python-ace's own predictions and finite differences."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111

from mlipdoe.exceptions import ConfigurationError, InputError
from mlipdoe.model import ace as ace_mod
from mlipdoe.model.ace import AceBasis, ace_rows, file_sha256

HAVE_PYACE = importlib.util.find_spec("pyace") is not None

#: A small binary basis: 20 functions per element, ranks 1-3.
SMALL = {"cutoff": 4.5, "nradmax_by_orders": (6, 3, 2), "lmax_by_orders": (0, 2, 1),
         "number_of_functions_per_element": 20}
NI, CU = 28, 29
SPECIES = (NI, CU)


@pytest.fixture(scope="module")
def pyace():
    if not HAVE_PYACE:
        pytest.skip("python-ace is not installed (mlipdoe[ace])")
    return ace_mod.load_pyace()


def _binary(seed=1, reps=(2, 1, 1)):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * reps
    atoms.numbers[[1, 5]] = NI
    atoms.rattle(0.08, seed=seed)
    return atoms


def _triclinic():
    atoms = bulk("Cu", "fcc", a=3.55) * (2, 1, 1)     # primitive fcc cell, 2 atoms, smaller than the cutoff
    atoms.numbers[1] = NI
    atoms.cell[2] += [0.3, -0.2, 0.1]
    atoms.rattle(0.05, seed=4)
    return atoms


def _pyace_order_to_columns(bset, species, c, count_column=True):
    """Model coefficient vector from pyace's basis_coeffs order (elements in pyace's order)."""
    names = list(bset.elements_name)
    counts = [len(r1) + len(rk) for r1, rk in zip(bset.basis_rank1, bset.basis)]
    starts = np.concatenate([[0], np.cumsum(counts)])
    from ase.data import chemical_symbols
    out = []
    for z in species:
        mu = names.index(chemical_symbols[z])
        if count_column:
            out.append([0.0])
        out.append(c[starts[mu]:starts[mu + 1]])
    return np.concatenate(out)


# --------------------------------------------------------------------------- dicts and errors (no package needed)

def test_dict_round_trip_and_strict_keys(tmp_path):
    basis = AceBasis(elements=("Cu", "Ni"), **SMALL, count_column=False)
    assert basis.elements == ("Ni", "Cu")                  # increasing atomic number
    again = AceBasis.from_dict(basis.to_dict())
    assert again == basis and again.to_dict() == basis.to_dict()
    with pytest.raises(ConfigurationError, match="nradmax"):
        AceBasis.from_dict({**basis.to_dict(), "nradmax": [3]})
    path = tmp_path / "pot.yaml"
    path.write_text("not checked here\n")
    f = AceBasis(path=str(path))
    assert f.from_file and f.resolve(SPECIES).sha256 == file_sha256(path)
    assert AceBasis.from_dict(f.resolve(SPECIES).to_dict()) == f.resolve(SPECIES)
    with pytest.raises(ConfigurationError, match="potential file"):
        AceBasis.from_dict({"path": str(path), "cutoff": 4.0})
    with pytest.raises(ConfigurationError, match="takes no hyperparameters"):
        AceBasis(path=str(path), cutoff=4.0).validate()


@pytest.mark.parametrize("bad, match", [
    ({"cutoff": -1.0}, "cutoff"),
    ({"cutoff": 3.0, "dcut": 3.0}, "dcut"),
    ({"nradmax_by_orders": (6, 3), "lmax_by_orders": (0, 2, 1)}, "one value per rank"),
    ({"lmax_by_orders": (1, 2, 2, 1)}, "start with 0"),
    ({"nradmax_by_orders": (6, 0, 2, 1)}, "integers >= 1"),
    ({"number_of_functions_per_element": 0}, "number_of_functions"),
    ({"count_column": "yes"}, "count_column"),
    ({"sha256": "ab" * 32}, "needs the potential file"),
])
def test_bad_hypers_refused(bad, match):
    with pytest.raises(ConfigurationError, match=match):
        AceBasis(**bad).validate()


def test_without_python_ace_a_configuration_error(monkeypatch):
    monkeypatch.setattr(ace_mod, "_PYACE", None)
    monkeypatch.setitem(sys.modules, "pyace", None)        # import pyace -> ImportError
    with pytest.raises(ConfigurationError, match=r"mlipdoe\[ace\]"):
        next(ace_rows([_binary()], AceBasis(**SMALL), species=SPECIES))


# --------------------------------------------------------------------------- rows against python-ace

def test_energy_rows_are_sums_of_pyace_projections(pyace):
    from pyace.activelearning import compute_B_projections

    basis = AceBasis(**SMALL)
    frames = [_binary(1), _triclinic()]
    bset = basis.basis_set(SPECIES)
    names = list(bset.elements_name)
    lay = basis.layout(SPECIES)
    rows = list(ace_rows(frames, basis, species=SPECIES, local=True))
    for atoms, r in zip(frames, rows):
        assert r.energy.shape == (basis.n_features(SPECIES),) and r.forces is None
        np.testing.assert_allclose(r.local.sum(axis=0), r.energy, rtol=0, atol=1e-12)
        proj = compute_B_projections(bset, [atoms])          # pyace's own atomic environments
        for t, z in enumerate(SPECIES):
            mu = names.index(atoms[np.flatnonzero(atoms.numbers == z)[0]].symbol)
            o, k = lay.offsets[t], lay.n_functions[t]
            assert r.energy[o] == np.count_nonzero(atoms.numbers == z)   # the count column
            np.testing.assert_allclose(r.energy[o + 1: o + 1 + k], proj[mu].sum(axis=0), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(r.local[atoms.numbers == z][:, o + 1: o + 1 + k], proj[mu],
                                       rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("count_column", [True, False])
def test_rows_reproduce_the_linear_potential(pyace, count_column):
    basis = AceBasis(**SMALL, count_column=count_column)
    bset = basis.basis_set(SPECIES)
    c = np.random.default_rng(3).normal(size=len(bset.basis_coeffs))
    bset.basis_coeffs = c
    beta = _pyace_order_to_columns(bset, SPECIES, c, count_column)
    for atoms in (_binary(2), _triclinic()):
        atoms.calc = pyace.PyACECalculator(bset)
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        r = next(ace_rows([atoms], basis, species=SPECIES, forces=True))
        assert abs(r.energy @ beta - energy) <= 1e-8 * abs(energy)
        np.testing.assert_allclose(r.forces @ beta, forces.ravel(), rtol=0, atol=1e-8 * np.abs(forces).max())
        if count_column:
            lay = basis.layout(SPECIES)
            assert not r.forces[:, list(lay.offsets)].any()


def test_force_rows_match_central_differences(pyace):
    basis = AceBasis(**SMALL)
    atoms = _binary(5)
    r = next(ace_rows([atoms], basis, species=SPECIES, forces=True))
    h = 1e-4
    plus, minus = [], []
    for i in range(len(atoms)):
        for a in range(3):
            for sign, store in ((1, plus), (-1, minus)):
                moved = atoms.copy()
                moved.positions[i, a] += sign * h
                store.append(moved)
    ep = np.array([x.energy for x in ace_rows(plus, basis, species=SPECIES)])
    em = np.array([x.energy for x in ace_rows(minus, basis, species=SPECIES)])
    fd = -(ep - em) / (2 * h)
    scale = np.abs(r.forces).max()
    assert scale > 0.1
    np.testing.assert_allclose(r.forces, fd, rtol=0, atol=1e-6 * scale)


# --------------------------------------------------------------------------- cells

def test_small_cell_and_supercell(pyace):
    basis = AceBasis(**SMALL)
    cell = _triclinic()
    big = cell * (2, 2, 1)
    r1, r2 = ace_rows([cell, big], basis, species=SPECIES)
    np.testing.assert_allclose(r2.energy, 4 * r1.energy, rtol=1e-11, atol=1e-10)


@pytest.mark.parametrize("pbc", [(True, True, False), (True, False, False), (False, False, False)])
def test_partly_periodic_frames_equal_a_vacuum_box(pyace, pbc):
    basis = AceBasis(**SMALL)
    slab = fcc111("Cu", (2, 2, 3), a=3.6, vacuum=0.0, periodic=True)
    slab.numbers[[0, 7]] = NI
    slab.rattle(0.05, seed=6)
    frame = slab.copy()
    frame.pbc = pbc
    boxed = slab.copy()                      # the same atoms, vacuum of 20 Å along each non-periodic vector
    cell = boxed.cell.array.copy()
    for k in range(3):
        if not pbc[k]:
            cell[k] *= 1 + 20.0 / np.linalg.norm(cell[k])
    boxed.set_cell(cell, scale_atoms=False)
    boxed.pbc = True
    a, b = ace_rows([frame, boxed], basis, species=SPECIES, forces=True)
    np.testing.assert_allclose(a.energy, b.energy, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(a.forces, b.forces, rtol=1e-12, atol=1e-10)


# --------------------------------------------------------------------------- species and files

def test_species_checks(pyace):
    basis = AceBasis(**SMALL)
    with pytest.raises(InputError, match="frame 1.*Zr"):
        list(ace_rows([_binary(), Atoms("Zr2", positions=[[0, 0, 0], [2.5, 0, 0]])], basis, species=SPECIES))
    with pytest.raises(ConfigurationError, match="no functions for Zr"):
        next(ace_rows([_binary()], AceBasis(elements=("Cu", "Ni"), **SMALL), species=(NI, CU, 40)))
    r = next(ace_rows([_binary()], AceBasis(elements=("Cu", "Ni", "Al"), **SMALL), species=SPECIES))
    assert r.energy.shape == (2 * 21,)       # functions of Ni and Cu only; Al's columns are not the model's


def test_potential_file(pyace, tmp_path):
    hypers = AceBasis(elements=("Cu", "Ni"), **SMALL)
    path = tmp_path / "linear.yaml"
    hypers.basis_configuration().save(str(path))
    from_file = AceBasis(path=str(path)).resolve(SPECIES)
    assert from_file.sha256 == file_sha256(path)
    assert from_file.feature_labels(SPECIES) == hypers.feature_labels(SPECIES)
    frames = [_binary(7)]
    (a,), (b,) = (list(ace_rows(frames, x, species=SPECIES, forces=True)) for x in (hypers, from_file))
    np.testing.assert_array_equal(a.energy, b.energy)
    np.testing.assert_array_equal(a.forces, b.forces)
    path.write_text(path.read_text() + "\n")
    with pytest.raises(ConfigurationError, match="changed"):
        next(ace_rows(frames, from_file, species=SPECIES))


@pytest.mark.parametrize("embedding, bond, match", [
    ({"npot": "FinnisSinclairShiftedScaled", "fs_parameters": [1, 1, 1, 0.5], "ndensity": 2}, {}, "non-linear embed"),
    (None, {"r_in": 1.5, "delta_in": 0.2, "inner_cutoff_type": "zbl"}, "zbl inner cutoff"),
    (None, {"core-repulsion": [100.0, 5.0]}, "core repulsion"),
])
def test_non_linear_files_refused(pyace, tmp_path, embedding, bond, match):
    config = AceBasis(elements=("Cu",), **SMALL).potential_config()
    if embedding is not None:
        config["embeddings"]["ALL"] = embedding
    config["bonds"]["ALL"].update(bond)
    path = tmp_path / "pot.yaml"
    pyace.create_multispecies_basis_config(config).save(str(path))
    with pytest.raises(ConfigurationError, match=match):
        next(ace_rows([bulk("Cu")], AceBasis(path=str(path)), species=("Cu",)))


def test_import_leaves_the_root_logger_alone():
    if not HAVE_PYACE:
        pytest.skip("python-ace is not installed (mlipdoe[ace])")
    code = ("import logging; from mlipdoe.model.ace import load_pyace; load_pyace(); "
            "r = logging.getLogger(); print(r.level, len(r.handlers))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(30), "0"]
