"""The pool index: a warm run reads a validated extxyz pool without parsing it."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from conftest import EAM_FILE, SMALL_SOAP, eam_labelled, run_cli

from mlipdoe.generate import zr_example
from mlipdoe.pool import read_pool
from mlipdoe.pool_index import (
    POOL_INDEX,
    LazyFrames,
    read_pool_indexed,
    write_pool_index,
)


def _same_atoms(a, b):
    assert np.array_equal(a.numbers, b.numbers)
    assert np.array_equal(a.positions, b.positions)
    assert np.array_equal(a.cell.array, b.cell.array)
    assert np.array_equal(a.pbc, b.pbc)
    assert set(a.info) == set(b.info)
    for key in a.info:
        assert np.array_equal(a.info[key], b.info[key]), key
    assert set(a.arrays) == set(b.arrays)
    for key in a.arrays:
        assert np.array_equal(a.arrays[key], b.arrays[key])


@pytest.fixture()
def two_files(tmp_path):
    """Two extxyz files: config types, per-atom arrays and a duplicated frame."""
    frames = zr_example(12, seed=5)
    if EAM_FILE.exists():
        frames = eam_labelled(frames)
    for k, a in enumerate(frames):
        a.info["config_type"] = "strain" if k % 3 else "bulk"
        a.info["note"] = f"frame {k} of 12"
    frames[7] = frames[2].copy()  # duplicate (warned and recorded)
    paths = [tmp_path / "a.xyz", tmp_path / "b.xyz"]
    ase.io.write(paths[0], frames[:5], format="extxyz")
    ase.io.write(paths[1], frames[5:], format="extxyz")
    return [str(p) for p in paths]


def test_indexed_pool_equals_a_full_read(two_files, tmp_path):
    with pytest.warns(UserWarning, match="1 duplicate"):
        full = read_pool(two_files)
    index = tmp_path / POOL_INDEX
    assert write_pool_index(full, index)
    with pytest.warns(UserWarning, match="1 duplicate"):
        lazy = read_pool_indexed(two_files, index)
    assert isinstance(lazy.frames, LazyFrames) and lazy.frames.n_parsed == 0
    assert lazy.info == full.info and lazy.files == full.files and lazy.duplicates == full.duplicates
    assert lazy.species == full.species and list(lazy.n_atoms) == list(full.n_atoms)
    assert lazy.frames.n_parsed == 0  # metadata came from the index
    for k in (11, 0, 5, 4, 7):  # any order, across the file boundary
        _same_atoms(lazy.frames[k], full.frames[k])
    for a, b in zip(lazy.frames, full.frames):  # iteration
        _same_atoms(a, b)
    for a, b in zip(lazy.frames[3:8], full.frames[3:8]):  # slices
        _same_atoms(a, b)


def test_changed_file_or_validation_falls_back_to_a_full_read(two_files, tmp_path):
    with pytest.warns(UserWarning):
        full = read_pool(two_files)
    index = tmp_path / POOL_INDEX
    write_pool_index(full, index)
    with pytest.warns(UserWarning):
        assert isinstance(read_pool_indexed(two_files, index, min_distance=0.4).frames, list)
    # same size, one digit changed: the sha256 catches it
    text = open(two_files[1]).read()
    pos = text.index("\n", text.index("\n") + 1) + 5  # inside the first atom line
    digit = "1" if text[pos] != "1" else "2"
    open(two_files[1], "w").write(text[:pos] + digit + text[pos + 1:])
    with pytest.warns(UserWarning):
        again = read_pool_indexed(two_files, index)
    assert isinstance(again.frames, list)
    assert again.files[1].sha256 != full.files[1].sha256
    # a corrupt index is ignored, never trusted
    index.write_text("{not json")
    with pytest.warns(UserWarning):
        assert isinstance(read_pool_indexed(two_files, index).frames, list)


def test_only_extxyz_pools_are_indexed(tmp_path):
    frames = zr_example(3, seed=1)
    path = tmp_path / "pool.traj"
    ase.io.write(path, frames)
    assert not write_pool_index(read_pool([str(path)]), tmp_path / POOL_INDEX)
    assert not (tmp_path / POOL_INDEX).exists()


def test_warm_store_selection_parses_only_the_picks(tmp_path):
    """A warm `select --store` run: same design and byte-identical frames as the cold run,
    and in-process the indexed pool parses only the selected frames (+1 for the
    descriptor size)."""
    import mlipdoe
    from mlipdoe.api import selected_frames
    from mlipdoe.store import build_model_stored

    pool_file = tmp_path / "pool.xyz"
    ase.io.write(pool_file, zr_example(40, seed=2), format="extxyz")
    store = tmp_path / "rows.store"
    args = ["select", pool_file, "-n", "6", "--criterion", "d", "--store", store, "--n-sparse", "12", "--n-max", "4", "--l-max", "3",
            "--soap-cutoff", "4.5", "-q"]
    cold = run_cli(*args, "-o", tmp_path / "cold.xyz", "--record", tmp_path / "cold.json")
    assert cold.returncode == 0, cold.stderr
    assert (store / POOL_INDEX).exists()
    warm = run_cli(*args, "-o", tmp_path / "warm.xyz", "--record", tmp_path / "warm.json")
    assert warm.returncode == 0, warm.stderr
    assert (tmp_path / "cold.xyz").read_bytes() == (tmp_path / "warm.xyz").read_bytes()
    records = [json.loads((tmp_path / f"{r}.json").read_text()) for r in ("cold", "warm")]
    assert records[0]["selected"] == records[1]["selected"]
    assert records[1]["store"]["chunks_computed"] == 0

    pool = read_pool_indexed([str(pool_file)], store / POOL_INDEX)
    model = build_model_stored(pool.frames, store=store, soap=SMALL_SOAP, n_sparse=12, sparse_sample=50_000,
                               config_types=pool.config_types, pool_sha256=[f.sha256 for f in pool.files],
                               n_atoms=pool.n_atoms, species=pool.species)
    result = mlipdoe.select(pool, n=6, model=model)
    picked = selected_frames(result)
    assert result.selected == records[0]["selected"]
    assert pool.frames.n_parsed == 1 + len(picked)
