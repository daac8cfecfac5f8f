"""Tests for mlipdoe.generate: strains, sampling, generator, writing."""

import os

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from mlipdoe.exceptions import InputError
from mlipdoe.generate import (
    VOIGT,
    deform,
    generate_strained,
    sample_strains,
    strain_matrix,
    strain_to_voigt,
    write_frames,
    zr_example,
)


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)


def test_strain_matrix_engineering_shear():
    eps = strain_matrix([1, 2, 3, 4, 5, 6])
    expected = np.array([[1, 3, 2.5], [3, 2, 2], [2.5, 2, 3]])
    np.testing.assert_array_equal(eps, expected)
    assert VOIGT == ("xx", "yy", "zz", "yz", "xz", "xy")
    np.testing.assert_array_equal(strain_to_voigt(eps), [1, 2, 3, 4, 5, 6])


def test_strain_matrix_rejects_bad_input():
    with pytest.raises(InputError, match="6 finite numbers") as excinfo:
        strain_matrix([0.1, 0.2])
    _one_line(excinfo)
    with pytest.raises(InputError, match="6 finite numbers"):
        strain_matrix([0, 0, 0, 0, 0, np.nan])


def test_deform_round_trip_recovers_strain():
    atoms = bulk("Zr", "hcp", a=3.232, c=5.147).repeat((2, 1, 1))
    voigt = np.array([0.01, -0.02, 0.015, 0.004, -0.006, 0.008])
    new = deform(atoms, voigt)
    # cell_new = cell @ (I + eps)  =>  eps = cell^-1 cell_new - I
    eps = np.linalg.solve(atoms.cell.array, new.cell.array) - np.eye(3)
    np.testing.assert_allclose(eps, eps.T, atol=1e-12)
    np.testing.assert_allclose(strain_to_voigt(eps), voigt, atol=1e-12)
    # atoms move with the cell, original untouched
    np.testing.assert_allclose(new.get_scaled_positions(), atoms.get_scaled_positions(), atol=1e-12)
    np.testing.assert_allclose(new.positions, atoms.positions @ (np.eye(3) + strain_matrix(voigt)), atol=1e-12)
    assert not np.allclose(atoms.cell.array, new.cell.array)


@pytest.mark.parametrize("method", ["sobol", "lhs"])
def test_strains_within_bounds_and_deterministic(method):
    x = sample_strains(37, max_strain=0.03, method=method, seed=4)
    assert x.shape == (37, 6)
    assert np.all(np.abs(x) <= 0.03)
    assert np.all(x.max(axis=0) > 0.02) and np.all(x.min(axis=0) < -0.02)  # covers the cube
    np.testing.assert_array_equal(x, sample_strains(37, max_strain=0.03, method=method, seed=4))
    assert not np.array_equal(x, sample_strains(37, max_strain=0.03, method=method, seed=5))


def test_sobol_first_n_of_power_of_two_and_no_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x10 = sample_strains(10, max_strain=0.1, seed=1)
        x16 = sample_strains(16, max_strain=0.1, seed=1)
        x1 = sample_strains(1, max_strain=0.1, seed=1)
    np.testing.assert_array_equal(x10, x16[:10])
    assert x1.shape == (1, 6)


def test_lhs_is_latin():
    n = 20
    x = sample_strains(n, max_strain=1e-2, method="lhs", seed=0)
    u = (x / 1e-2 + 1) / 2
    for k in range(6):
        assert sorted(np.floor(u[:, k] * n).astype(int)) == list(range(n))


@pytest.mark.parametrize("method", ["sobol", "lhs"])
def test_min_strain_shell(method):
    x = sample_strains(256, max_strain=0.04, min_strain=0.025, method=method, seed=2)
    r = np.abs(x).max(axis=1)
    assert np.all(r >= 0.025 - 1e-15) and np.all(r <= 0.04 + 1e-15)
    # directions are kept: same sign pattern as the unshelled cube sample
    cube = sample_strains(256, max_strain=0.04, method=method, seed=2)
    np.testing.assert_array_equal(np.sign(x), np.sign(cube))
    # radius spread over the shell, not piled at one end
    assert r.min() < 0.03 and r.max() > 0.039


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(n=0, max_strain=0.1), "n must be an integer >= 1"),
        (dict(n=5, max_strain=0.0), "max_strain > 0"),
        (dict(n=5, max_strain=0.1, min_strain=0.1), "min_strain < max_strain"),
        (dict(n=5, max_strain=0.1, method="grid"), "unknown strain sampling method"),
        (dict(n=5, max_strain=0.1, seed=-1), "seed must be an integer >= 0"),
    ],
)
def test_sample_strains_validation(kwargs, pattern):
    with pytest.raises(InputError, match=pattern) as excinfo:
        sample_strains(**kwargs)
    _one_line(excinfo)


def test_generate_strained_info_and_determinism():
    kw = dict(n_frames=6, max_strain=0.02, rattle=0.01, supercell=(2, 1, 1), seed=3)
    frames = generate_strained("Zr", **kw)
    again = generate_strained("Zr", **kw)
    assert len(frames) == 6
    for f, g in zip(frames, again):
        np.testing.assert_array_equal(f.positions, g.positions)
        np.testing.assert_array_equal(f.cell.array, g.cell.array)
        assert f.info == g.info
    other = generate_strained("Zr", **{**kw, "seed": 4})
    assert not np.array_equal(frames[0].positions, other[0].positions)
    f = frames[0]
    assert f.info["config_type"] == "strain"
    assert isinstance(f.info["mlipdoe_generator"], str)
    assert len(f.info["strain"]) == 6 and all(isinstance(v, float) for v in f.info["strain"])
    # cell is exactly the strained supercell of the Zr default lattice
    base = bulk("Zr", "hcp", a=3.232, c=5.147).repeat((2, 1, 1))
    np.testing.assert_allclose(f.cell.array, base.cell.array @ (np.eye(3) + strain_matrix(f.info["strain"])))
    # rattle displaced atoms away from the affine positions
    affine = deform(base, f.info["strain"]).positions
    disp = f.positions - affine
    assert 0 < np.abs(disp).max() < 0.1


def test_vacancies_reduce_atom_count_deterministically():
    frames = generate_strained("Zr", n_frames=4, supercell=(2, 2, 1), vacancies=2, seed=1)
    assert all(len(f) == 8 - 2 for f in frames)
    assert {f.info["config_type"] for f in frames} == {"strain_vacancy"}
    again = generate_strained("Zr", n_frames=4, supercell=(2, 2, 1), vacancies=2, seed=1)
    for f, g in zip(frames, again):
        np.testing.assert_array_equal(f.positions, g.positions)


def test_base_atoms_and_file(tmp_path):
    cu = bulk("Cu", "fcc", a=3.6)
    from_atoms = generate_strained(cu, n_frames=3, supercell=2, seed=0)
    assert all(len(f) == 8 and set(f.get_chemical_symbols()) == {"Cu"} for f in from_atoms)
    path = tmp_path / "cu.xyz"
    ase.io.write(path, [cu, bulk("Al", "fcc", a=4.05)], format="extxyz")
    from_file = generate_strained(str(path), n_frames=3, supercell=2, seed=0)
    for f, g in zip(from_atoms, from_file):
        np.testing.assert_allclose(f.cell.array, g.cell.array, atol=1e-12)
        assert set(g.get_chemical_symbols()) == {"Cu"}  # first frame only
    fcc_al = generate_strained("Al", structure="fcc", n_frames=2, supercell=1)
    assert len(fcc_al[0]) == 1


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(n_frames=0), "n_frames must be an integer >= 1"),
        (dict(max_strain=0.5), "max_strain < 0.5"),
        (dict(max_strain=0.02, min_strain=0.03), "min_strain < max_strain"),
        (dict(min_strain=-0.01), "0 <= min_strain"),
        (dict(rattle=-0.1), "rattle must be"),
        (dict(vacancies=16), "vacancies=16 must be fewer than the 16 atoms"),
        (dict(supercell=(2, 0, 2)), "supercell must be 3 positive integers"),
        (dict(supercell=(2, 2)), "supercell must be 3 positive integers"),
        (dict(supercell=(2.0, 2, 2)), "supercell must be 3 positive integers"),
        (dict(method="random"), "unknown strain sampling method"),
    ],
)
def test_generate_strained_validation(kwargs, pattern):
    with pytest.raises(InputError, match=pattern) as excinfo:
        generate_strained("Zr", n_frames=kwargs.pop("n_frames", 2), **kwargs)
    _one_line(excinfo)


def test_bad_base(tmp_path):
    with pytest.raises(InputError, match="base structure file not found") as excinfo:
        generate_strained(tmp_path / "missing.xyz")
    _one_line(excinfo)
    with pytest.raises(InputError, match="cannot build bulk") as excinfo:
        generate_strained("Xx")
    _one_line(excinfo)


def test_zr_example_is_hcp_zr():
    frames = zr_example(8, seed=0)
    assert len(frames) == 8
    for f in frames:
        assert set(f.get_chemical_symbols()) == {"Zr"}
        assert len(f) == 2 * 8  # 2-atom hcp cell, 2x2x2
        assert f.pbc.all()
        assert {"strain", "config_type", "mlipdoe_generator"} <= set(f.info)
        assert max(abs(v) for v in f.info["strain"]) <= 0.03
        eps = np.linalg.solve(bulk("Zr", "hcp", a=3.232, c=5.147).repeat(2).cell.array, f.cell.array) - np.eye(3)
        np.testing.assert_allclose(strain_to_voigt(eps), f.info["strain"], atol=1e-12)
    a, b, c, *_ = bulk("Zr", "hcp", a=3.232, c=5.147).cell.cellpar()
    assert c / a == pytest.approx(1.593, abs=1e-3)
    np.testing.assert_array_equal(frames[3].positions, zr_example(8, seed=0)[3].positions)


def test_write_frames_round_trip_and_atomic(tmp_path):
    frames = zr_example(3, seed=1, supercell=(1, 1, 1))
    path = tmp_path / "pool.xyz"
    path.write_text("old content\n")  # replaced, not appended to
    write_frames(frames, path)
    assert sorted(os.listdir(tmp_path)) == ["pool.xyz"]  # no temp file left
    back = ase.io.read(path, index=":")
    assert len(back) == 3
    for f, g in zip(frames, back):
        np.testing.assert_allclose(g.positions, f.positions, atol=1e-6)
        np.testing.assert_allclose(g.cell.array, f.cell.array, atol=1e-6)
        np.testing.assert_allclose(g.info["strain"], f.info["strain"], atol=1e-12)
        assert g.info["config_type"] == f.info["config_type"]
        assert g.info["mlipdoe_generator"] == f.info["mlipdoe_generator"]


def test_write_frames_failure_leaves_nothing(tmp_path):
    path = tmp_path / "out.xyz"
    with pytest.raises(Exception):
        write_frames([object()], path)  # ASE cannot write this
    assert os.listdir(tmp_path) == []
    with pytest.raises(InputError, match="no frames"):
        write_frames([], path)
    with pytest.raises(InputError, match="output directory does not exist"):
        write_frames(zr_example(1, supercell=1), tmp_path / "missing" / "out.xyz")
