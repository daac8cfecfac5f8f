"""CLI contract: bad input → exit 2 + one line, no traceback, no output; seeds reproduce."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

from mlipdoe.generate import write_frames, zr_example

SMALL = ("--n-max", "4", "--l-max", "3", "--soap-cutoff", "4.5", "--n-sparse", "15", "-q")


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pool") / "pool.xyz"
    write_frames(zr_example(25, seed=0), path)
    return path


def _bad_files(tmp_path):
    good = zr_example(3, seed=0)
    files = {}
    files["missing"] = tmp_path / "nope.xyz"
    (tmp_path / "garbage.xyz").write_text("this is not\na structure file\n")
    files["unreadable"] = tmp_path / "garbage.xyz"
    (tmp_path / "empty.xyz").write_text("")
    files["empty"] = tmp_path / "empty.xyz"
    (tmp_path / "noatoms.xyz").write_text('0\nLattice="3 0 0 0 3 0 0 0 3" Properties=species:S:1:pos:R:3 pbc="T T T"\n')
    files["no atoms"] = tmp_path / "noatoms.xyz"
    nan = good[0].copy()
    pos = nan.positions.copy()
    pos[2, 1] = np.nan
    nan.positions = pos
    write_frames([good[1], nan], tmp_path / "nan.xyz")
    files["nan"] = tmp_path / "nan.xyz"
    close = good[0].copy()
    close.positions[5] = close.positions[4] + [0.2, 0.0, 0.0]
    write_frames([close], tmp_path / "close.xyz")
    files["close"] = tmp_path / "close.xyz"
    return files


EXPECTED = {
    "missing": "not found",
    "unreadable": "garbage.xyz",
    "empty": "empty",
    "no atoms": "no atoms",
    "nan": "(NaN|non-finite|inf)",
    "close": "atoms 4 and 5",
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_bad_pool_gives_exit_2_one_line_no_output(tmp_path, case):
    files = _bad_files(tmp_path)
    out, rec = tmp_path / "out" / "train.xyz", tmp_path / "out" / "design.json"
    out.parent.mkdir()
    proc = run_cli("select", files[case], "-n", "2", "-o", out, "--record", rec, *SMALL)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    import re

    assert re.search(EXPECTED[case], lines[0], flags=re.I), lines[0]
    assert not out.exists() and not rec.exists()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("n, message", [("0", "positive"), ("-2", "positive"), ("26", "exceeds the 25 frames")])
def test_bad_n_gives_exit_2(tmp_path, pool_file, n, message):
    out = tmp_path / "train.xyz"
    proc = run_cli("select", pool_file, "-n", n, "-o", out, "--record", tmp_path / "d.json", *SMALL)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_same_seed_same_record_and_frames(tmp_path, pool_file):
    records = []
    for run in ("a", "b", "c"):
        seed = "7" if run != "c" else "8"
        proc = run_cli("select", pool_file, "-n", "5", "-o", tmp_path / f"{run}.xyz", "--record",
                       tmp_path / f"{run}.json", "--seed", seed, *SMALL)
        assert proc.returncode == 0, proc.stderr
        data = json.loads((tmp_path / f"{run}.json").read_text())
        data.pop("timings_s")
        records.append(data)
    assert records[0] == records[1]
    assert records[0]["sparse_points"] != records[2]["sparse_points"]
    assert (tmp_path / "a.xyz").read_bytes() == (tmp_path / "b.xyz").read_bytes()
    from ase.io import read

    frames = read(tmp_path / "a.xyz", index=":")
    assert [a.info["pool_index"] for a in frames] == records[0]["selected"]
    assert [a.info["mlipdoe_rank"] for a in frames] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([a.info["mlipdoe_gain"] for a in frames], records[0]["gains"])


def test_verify_detects_tampered_record(tmp_path, pool_file):
    rec = tmp_path / "d.json"
    assert run_cli("select", pool_file, "-n", "4", "-o", tmp_path / "t.xyz", "--record", rec, *SMALL).returncode == 0
    ok = run_cli("verify", "--record", rec)  # the pool from the record
    assert ok.returncode == 0 and "OK" in ok.stdout
    data = json.loads(rec.read_text())
    data["selected"][0] = min(set(range(25)) - set(data["selected"]) - set(data["fixed"]))
    rec.write_text(json.dumps(data))
    bad = run_cli("verify", "--record", rec, "--pool", pool_file)
    assert bad.returncode == 1 and "MISMATCH" in bad.stdout


def test_generate_and_demo(tmp_path):
    proc = run_cli("generate", "-o", tmp_path / "g.xyz", "-n", "12", "--max-strain", "0.03", "--rattle", "0.01")
    assert proc.returncode == 0, proc.stderr
    from ase.io import read

    frames = read(tmp_path / "g.xyz", index=":")
    assert len(frames) == 12 and all(len(a.info["strain"]) == 6 for a in frames)
    demo = run_cli("demo", "-o", tmp_path / "demo", "--pool-size", "40", "-n", "5", "--n-sparse", "15", "-q")
    assert demo.returncode == 0, demo.stderr
    for name in ("pool.xyz", "train.xyz", "design.json", "gain_curve.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    assert len(read(tmp_path / "demo" / "train.xyz", index=":")) == 5


def test_default_design_is_i_on_energy_and_force_rows(tmp_path, pool_file):
    """No --criterion and no --observe: the evidence-backed default (i, energy + force rows), said
    on stdout and kept in the record; --criterion alone keeps energy rows."""
    import json

    proc = run_cli("select", pool_file, "-n", "3", "-o", tmp_path / "t.xyz", "--record", tmp_path / "d.json", *SMALL)
    assert proc.returncode == 0, proc.stderr
    assert "default design: i-optimal on energy + force rows" in proc.stdout
    rec = json.loads((tmp_path / "d.json").read_text())
    assert rec["criterion"] == "i" and rec["observations"] == ["energy", "forces"]
    proc = run_cli("select", pool_file, "-n", "3", "--criterion", "i", "-o", tmp_path / "e.xyz", "--record",
                   tmp_path / "e.json", *SMALL)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "e.json").read_text())["observations"] == ["energy"]
