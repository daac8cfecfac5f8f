"""Tests for mlipdoe.pool: reading, global indexing, validation, duplicates."""

import hashlib
import warnings

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from mlipdoe.exceptions import InputError
from mlipdoe.pool import (
    DuplicateFramesWarning,
    FrameInfo,
    Pool,
    PoolFile,
    pool_from_frames,
    read_frames,
    read_pool,
)


def _cu(shift=0.0, config_type=None):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.positions[0] += shift
    if config_type is not None:
        atoms.info["config_type"] = config_type
    return atoms


def _molecule(d=1.0):
    return Atoms("CO", positions=[[0, 0, 0], [0, 0, d]])  # zero cell, pbc False


def _one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_multi_file_global_indexing_and_metadata(tmp_path):
    f1, f2 = tmp_path / "a.xyz", tmp_path / "b.extxyz"
    ase.io.write(f1, [_cu(0.01, "bulk"), _cu(0.02, "bulk")], format="extxyz")
    ase.io.write(f2, [_molecule(1.1), _cu(0.03), _molecule(1.2)], format="extxyz")

    pool = read_pool([f1, f2])

    assert isinstance(pool, Pool)
    assert len(pool) == 5
    assert [fi.index for fi in pool.info] == list(range(5))
    assert [(fi.source, fi.index_in_file) for fi in pool.info] == [
        (str(f1), 0), (str(f1), 1), (str(f2), 0), (str(f2), 1), (str(f2), 2)
    ]
    assert pool.config_types == ["bulk", "bulk", None, None, None]
    np.testing.assert_array_equal(pool.n_atoms, [4, 4, 2, 4, 2])
    assert pool.n_atoms.dtype.kind == "i"
    assert pool.info[2].species == (6, 8)
    assert pool.species == (6, 8, 29)
    assert pool.duplicates == []
    # frame order matches files, global index 3 is the second frame of b
    assert pool.subset([3])[0].positions[0, 0] == pytest.approx(0.03)
    assert [len(a) for a in pool.subset([4, 0])] == [2, 4]

    assert [pf.n_frames for pf in pool.files] == [2, 3]
    assert pool.files[0].path == str(f1)
    assert pool.files[1].sha256 == hashlib.sha256(f2.read_bytes()).hexdigest()
    d = pool.files[0].to_dict()
    assert d == {"path": str(f1), "n_frames": 2, "sha256": pool.files[0].sha256}
    assert PoolFile.from_dict(d) == pool.files[0]
    assert FrameInfo(**{**pool.info[2].to_dict(), "species": (6, 8)}) == pool.info[2]


def test_single_path_reads_all_frames_and_config_type_is_str(tmp_path):
    path = tmp_path / "traj.xyz"
    frames = [_cu(0.01 * k) for k in range(4)]
    frames[1].info["config_type"] = 7
    ase.io.write(path, frames, format="extxyz")
    pool = read_pool(str(path))
    assert len(pool) == 4  # all frames, not ASE's default last frame
    assert pool.config_types[1] == "7"
    assert len(read_frames(path)) == 4


def test_subset_out_of_range():
    pool = pool_from_frames([_cu()])
    with pytest.raises(InputError, match="out of range"):
        pool.subset([1])


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.xyz"
    with pytest.raises(InputError, match="pool file not found") as excinfo:
        read_pool([missing])
    assert str(missing) in _one_line(excinfo)


def test_unparseable_file(tmp_path):
    bad = tmp_path / "bad.xyz"
    bad.write_text("3\nnot a comment line = [\nX 0 0\ngarbage\n")
    with pytest.raises(InputError, match="cannot read pool file") as excinfo:
        read_pool(bad)
    assert str(bad) in _one_line(excinfo)


def test_unknown_format(tmp_path):
    bad = tmp_path / "data.weird_extension"
    bad.write_text("hello\n")
    with pytest.raises(InputError, match="cannot read pool file") as excinfo:
        read_pool(bad)
    _one_line(excinfo)


def test_empty_pool(tmp_path):
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    with pytest.raises(InputError, match="empty pool: no frames in") as excinfo:
        read_pool([empty, tmp_path / "empty.xyz"])
    _one_line(excinfo)
    with pytest.raises(InputError, match="empty pool"):
        pool_from_frames([])


def test_frame_without_atoms(tmp_path):
    with pytest.raises(InputError, match=r"frame 1 \(<memory>:1\) has no atoms") as excinfo:
        pool_from_frames([_cu(), Atoms()])
    _one_line(excinfo)


def test_nonfinite_positions():
    atoms = _cu()
    atoms.positions[2, 1] = np.nan
    with pytest.raises(InputError, match=r"frame 0 .*non-finite.*atom 2") as excinfo:
        pool_from_frames([atoms])
    _one_line(excinfo)


def test_nonfinite_cell():
    atoms = _cu()
    atoms.cell[0, 0] = np.inf
    with pytest.raises(InputError, match="non-finite.*cell") as excinfo:
        pool_from_frames([atoms])
    _one_line(excinfo)


def test_periodic_with_zero_cell():
    atoms = _molecule()
    atoms.pbc = True
    with pytest.raises(InputError, match="periodic.*degenerate") as excinfo:
        pool_from_frames([atoms])
    _one_line(excinfo)


def test_close_contact_names_frame_pair_and_distance(tmp_path):
    path = tmp_path / "close.xyz"
    ase.io.write(path, [_molecule(1.1), _molecule(0.3)], format="extxyz")
    with pytest.raises(InputError, match=r"frame 1 \(.*close\.xyz:1\).*atoms 0 and 1.*0\.3000 Å") as excinfo:
        read_pool(path)
    _one_line(excinfo)
    # lowering min_distance accepts it; non-periodic zero-cell frames are fine
    assert len(read_pool(path, min_distance=0.2)) == 2


def test_close_contact_across_periodic_boundary():
    # 0.4 Å apart only through the boundary along x (direct distance 9.6 Å)
    atoms = Atoms("H2", positions=[[0.2, 5, 5], [9.8, 5, 5]], cell=[10, 10, 10], pbc=True)
    with pytest.raises(InputError, match=r"atoms 0 and 1 are 0\.4000 Å") as excinfo:
        pool_from_frames([atoms])
    _one_line(excinfo)
    atoms.pbc = False  # no images: fine
    assert len(pool_from_frames([atoms])) == 1


def _random_frames(rng, count):
    """Small frames in skewed cells (some thinner than 2 × the cutoff, some mixed or no pbc)."""
    frames = []
    for _ in range(count):
        n = int(rng.integers(2, 7))
        cell = np.diag(rng.uniform(1.5, 4.0, 3)) + np.triu(rng.uniform(-1.5, 1.5, (3, 3)), 1)
        pbc = [True, True, True] if rng.random() < 0.8 else list(rng.random(3) < 0.5)
        frac = rng.uniform(-0.5, 1.5, (n, 3))  # partly outside the cell (unwrapped MD)
        frames.append(Atoms(f"Cu{n}", positions=frac @ cell, cell=cell, pbc=pbc))
    return frames


def test_contact_check_agrees_with_ase_neighbor_list():
    """The batched pair check reports exactly the frames and closest pairs that ASE's
    neighbour list finds, over random skewed cells (the fast path and the fallback)."""
    from ase.neighborlist import neighbor_list

    from mlipdoe.pool import _check_contacts

    rng = np.random.default_rng(5)
    frames = _random_frames(rng, 400)
    r = 0.9
    bad = []
    for k, atoms in enumerate(frames):
        i, j, d = neighbor_list("ijd", atoms, r)
        if len(d):
            bad.append((k, float(d.min())))
    assert 20 < len(bad) < 380  # both outcomes are exercised
    good = [a for k, a in enumerate(frames) if k not in dict(bad)]
    _check_contacts(good, [f"frame {k}" for k in range(len(good))], r)  # no false alarms
    for k, dmin in bad[:60]:
        sub = good[:k] + [frames[k]]  # the bad frame last, after frames that pass
        with pytest.raises(InputError, match=rf"frame {len(sub) - 1}: .* {dmin:.4f} Å apart"):
            _check_contacts(sub, [f"frame {q}" for q in range(len(sub))], r)


def test_contact_through_a_non_nearest_image_of_a_thin_skewed_cell():
    """Width 1.2 Å < 2 × 0.9 Å: the wrapped fractional difference is 1.76 Å, but another
    periodic image is 0.81 Å away (ASE finds it); the check must not miss it."""
    from ase.neighborlist import neighbor_list

    cell = [[1.273, -0.633, -1.044], [0.0, 1.625, -0.094], [0.0, 0.0, 2.432]]
    frac = np.array([[0.58, 0.191, 0.976], [0.107, 0.452, 0.395]])
    atoms = Atoms("Cu2", positions=frac @ np.array(cell), cell=cell, pbc=True)
    i, j, d = neighbor_list("ijd", atoms, 0.9)
    dmin = float(d[i != j].min())
    assert dmin < 0.9
    with pytest.raises(InputError, match=rf"atoms 0 and 1 are {dmin:.4f} Å apart"):
        pool_from_frames([atoms], min_distance=0.9)


def test_duplicates_warn_once_and_are_recorded(tmp_path):
    path = tmp_path / "dup.xyz"
    a, b = _cu(0.01), _cu(0.02)
    a_again = a.copy()
    a_again.positions[1] += 1e-10  # within tolerance
    ase.io.write(path, [a, b, a_again, b.copy(), _cu(0.01 + 1e-4)], format="extxyz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = read_pool(path)
    dup_warnings = [w for w in caught if issubclass(w.category, DuplicateFramesWarning)]
    assert len(dup_warnings) == 1
    assert "2 duplicate" in str(dup_warnings[0].message)
    assert pool.duplicates == [(2, 0), (3, 1)]
    assert len(pool) == 5  # duplicates are kept


def test_no_warning_without_duplicates():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DuplicateFramesWarning)
        pool = pool_from_frames([_cu(0.0), _cu(0.1)])
    assert pool.duplicates == []


def test_pbc_difference_is_not_duplicate():
    a = _cu()
    b = a.copy()
    b.pbc = [True, True, False]
    assert pool_from_frames([a, b]).duplicates == []


def test_pool_from_frames_hash_is_deterministic():
    p1 = pool_from_frames([_cu(0.0), _cu(0.1)], source="gen")
    p2 = pool_from_frames([_cu(0.0), _cu(0.1)], source="gen")
    p3 = pool_from_frames([_cu(0.0), _cu(0.2)], source="gen")
    assert p1.files == p2.files
    assert p1.files[0].sha256 != p3.files[0].sha256
    assert p1.info[1].source == "gen"
