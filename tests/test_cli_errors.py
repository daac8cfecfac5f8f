"""The command line's error contract: every usage error or bad input is exit 2 and one line on
stderr, never a traceback; outputs are refused before anything is written; the selected frames
carry the pool's labels so `fit` works on them."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from conftest import run_cli

from mlipdoe.cli import main
from mlipdoe.generate import generate_strained, write_frames

SMALL = ("--n-max", "4", "--l-max", "3", "--soap-cutoff", "4.5", "--n-sparse", "10", "-q")
NODIR = "output directory does not exist"
COMMANDS = ["generate", "select", "score", "verify", "demo", "fit", "evaluate", "benchmark", "assess", "grade",
            "store", "store build"]


def cli(*args):
    """Run ``main`` in this process; returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code, err, *, contains=None):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("error: "), lines[0]
    if contains is not None:
        assert contains in lines[0], lines[0]
    return lines[0]


def _emt_labelled(frames):
    """Frames with EMT energies, forces and stress on a SinglePointCalculator (a labelled pool)."""
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = EMT()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
                   "stress": atoms.get_stress()}
        atoms.calc = SinglePointCalculator(atoms, **results)
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_errors")
    frames = generate_strained("Cu", structure="fcc", n_frames=12, max_strain=0.03, rattle=0.03, seed=2)
    for k, atoms in enumerate(frames):
        atoms.info["config_type"] = "bulk" if k % 2 else "strained"
        atoms.arrays["tag_vector"] = np.full((len(atoms), 2), float(k))  # an extra per-atom array
    labelled = _emt_labelled(frames)
    write(d / "pool.xyz", labelled, format="extxyz")
    code, out, err = cli("select", d / "pool.xyz", "-n", "4", "-o", d / "train.xyz", "--record", d / "design.json",
                         *SMALL)
    assert code == 0, err
    return d


# ------------------------------------------------------------------ usage errors, everywhere


NO_ARGS = {c: c.split() for c in COMMANDS if c != "demo"}  # demo runs with its defaults
NO_ARGS["(bare)"] = []
BAD_VALUE = {
    "(bare)": ["nosuchcommand"],
    "generate": ["-o", "g.xyz", "-n", "abc"],
    "select": ["pool.xyz", "-n", "abc"],
    "score": ["--record", "missing.json"],
    "verify": ["--record", "missing.json"],
    "demo": ["-n", "abc"],
    "fit": ["t.xyz", "-o", "m", "--n-sparse", "abc"],
    "evaluate": ["m", "missing.xyz"],
    "benchmark": ["p.xyz", "--test", "t.xyz", "--n-random", "abc"],
    "assess": ["--train", "t.xyz", "--max-std", "abc"],
    "grade": ["f.xyz", "--record", "r.json", "--keep-above", "abc"],
    "store": ["nosuchcommand"],
    "store build": ["p.xyz", "--store", "s", "--chunk-size", "abc"],
}


@pytest.mark.parametrize("command", list(NO_ARGS))
def test_no_arguments_is_one_line_exit_2(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(*cli(*NO_ARGS[command])[::2])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["(bare)", *COMMANDS])
def test_unknown_option_is_one_line_exit_2(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    words = [] if command == "(bare)" else command.split()
    line = assert_one_line_error(*cli(*words, "--bogus")[::2])
    assert "--bogus" in line and "--help" in line


@pytest.mark.parametrize("command", list(BAD_VALUE))
def test_bad_value_is_one_line_exit_2(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    words = [] if command == "(bare)" else command.split()
    assert_one_line_error(*cli(*words, *BAD_VALUE[command])[::2])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["(bare)", *COMMANDS])
def test_help_works_without_bool_placeholder(command):
    words = [] if command == "(bare)" else command.split()
    code, out, err = cli(*words, "--help")
    assert code == 0, err
    assert "Usage: mlipdoe" in out and "<bool>" not in out


def test_version():
    from mlipdoe import __version__

    code, out, err = cli("--version")
    assert code == 0 and out.strip() == f"mlipdoe {__version__}" and not err


def test_real_entry_point_usage_errors(tmp_path):
    """The installed entry point (a subprocess): no command, a bad integer, --version."""
    r = run_cli(cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: missing command (see 'mlipdoe --help')"]
    r = run_cli("select", "pool.xyz", "-n", "abc", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "'-n' / '--n-frames'" in r.stderr
    r = run_cli("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("mlipdoe ")


# ------------------------------------------------------------------ output paths


def test_output_paths_are_refused_before_anything_is_written(files, tmp_path):
    pool = files / "pool.xyz"
    missing = tmp_path / "no" / "such"
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me\n")
    a_folder = tmp_path / "a_folder"
    a_folder.mkdir()
    cases = [
        (("select", pool, "-n", "2", "-o", missing / "t.xyz", "--record", tmp_path / "d.json"), NODIR),
        (("select", pool, "-n", "2", "-o", tmp_path / "t.xyz", "--record", missing / "d.json"), NODIR),
        (("select", pool, "-n", "2", "-o", a_folder, "--record", tmp_path / "d.json"), "is a folder"),
        (("generate", "-o", missing / "g.xyz"), NODIR),
        (("fit", files / "train.xyz", "-o", a_file), "exists and is not a folder"),
        (("fit", files / "train.xyz", "-o", missing / "m"), NODIR),
        (("evaluate", tmp_path / "m", files / "train.xyz", "--plot", missing / "p.png"), NODIR),
        (("evaluate", tmp_path / "m", files / "train.xyz", "--json", missing / "e.json"), NODIR),
        (("assess", "--train", files / "train.xyz", "--report", a_file), "exists and is not a folder"),
        (("assess", "--train", files / "train.xyz", "--report", missing / "r"), NODIR),
        (("benchmark", pool, "--test", pool, "-o", a_file), "exists and is not a folder"),
        (("grade", pool, "--record", files / "design.json", "-o", missing / "g.xyz"), NODIR),
        (("demo", "-o", a_file), "exists and is not a folder"),
        (("demo", "-o", missing / "demo"), NODIR),
        (("store", "build", pool, "--store", a_file), "exists and is not a folder"),
        (("store", "build", pool, "--store", missing / "s"), NODIR),
    ]
    for args, message in cases:
        code, _, err = cli(*args)
        assert_one_line_error(code, err, contains=message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_folder"]
    assert a_file.read_text() == "keep me\n" and not list(a_folder.iterdir())


def test_demo_refuses_n_above_pool_size_and_leaves_nothing(tmp_path):
    code, _, err = cli("demo", "-o", tmp_path / "demo", "--pool-size", "30", "-n", "400", "-q")
    assert_one_line_error(code, err, contains="-n must be between 1 and --pool-size (30)")
    assert not list(tmp_path.iterdir())


def test_atomic_folder_leaves_nothing_on_error_and_follows_umask(tmp_path):
    from mlipdoe.atomic import atomic_folder

    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "out") as tmp:
            (tmp / "first.txt").write_text("partial")
            raise RuntimeError("boom")
    assert not list(tmp_path.iterdir())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    (tmp_path / "out" / "same.txt").write_text("old")
    with atomic_folder(tmp_path / "out") as tmp:
        import tempfile

        fd, name = tempfile.mkstemp(dir=tmp)  # 0600, as mkstemp makes it
        os.close(fd)
        os.replace(name, tmp / "same.txt")
    mask = os.umask(0)
    os.umask(mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["old.txt", "same.txt"]
    assert stat.S_IMODE((tmp_path / "out" / "same.txt").stat().st_mode) == 0o666 & ~mask


# ------------------------------------------------------------------ record-driven commands


def _tampered(files, tmp_path, field, value):
    data = json.loads((files / "design.json").read_text())
    data[field] = value
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("selected", [[0, 1, 99], [0, -1], [0, "abc"], [2, 2]])
def test_verify_refuses_bad_indices(files, tmp_path, selected):
    rec = _tampered(files, tmp_path, "selected", selected)
    assert_one_line_error(*cli("verify", "--record", rec)[::2])


def test_record_commands_find_the_pool_from_the_record(files, tmp_path):
    code, out, err = cli("verify", "--record", files / "design.json")
    assert code == 0 and "OK" in out, err
    code, out, err = cli("score", "--record", files / "design.json")
    assert code == 0 and "maximin" in out, err
    code, out, err = cli("grade", files / "pool.xyz", "--record", files / "design.json")
    assert code == 0 and "frames have γ > 1" in out, err
    changed = tmp_path / "pool.xyz"
    frames = read(files / "pool.xyz", index=":")
    write(changed, frames[:-1], format="extxyz")
    rec = _tampered(files, tmp_path, "pool", [{"path": str(changed), "n_frames": 12,
                                              "sha256": json.loads((files / "design.json").read_text())["pool"][0][
                                                  "sha256"]}])
    assert_one_line_error(*cli("verify", "--record", rec)[::2], contains="--pool")
    code, out, err = cli("verify", "--record", rec, "--pool", files / "pool.xyz")
    assert code == 0 and "OK" in out, err


# ------------------------------------------------------------------ select options


def test_criterion_is_case_insensitive(files, tmp_path):
    code, _, err = cli("select", files / "pool.xyz", "-n", "3", "--criterion", "D", "-o", tmp_path / "t.xyz",
                       "--record", tmp_path / "d.json", *SMALL)
    assert code == 0, err
    assert json.loads((tmp_path / "d.json").read_text())["criterion"] == "d"


@pytest.mark.parametrize("extra, message", [
    (("--target", "POOL"), "--target is not used by criterion d"),
    (("--target-observable", "energy"), "--target-observable is not used by criterion d"),
    (("--restarts", "2"), "only used with --optimizer exchange"),
    (("--cost-power", "2"), "only used with --budget-cost"),
    (("--memory-limit", "1GB"), "only used with --store"),
    (("--sigma-force", "0.2"), "--sigma-force is not used without forces in --observe"),
    (("--sigma-virial", "0.2"), "--sigma-virial is not used without virials in --observe"),
])
def test_select_refuses_options_it_would_ignore(files, tmp_path, extra, message):
    extra = [str(files / "pool.xyz") if e == "POOL" else e for e in extra]
    code, _, err = cli("select", files / "pool.xyz", "-n", "3", "--criterion", "d", "-o", tmp_path / "t.xyz",
                       "--record", tmp_path / "d.json", *extra, *SMALL)
    assert_one_line_error(code, err, contains=message)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ labels survive selection


def test_selected_frames_carry_the_pool_labels_and_fit_works(files, tmp_path):
    pool = read(files / "pool.xyz", index=":")
    train = read(files / "train.xyz", index=":")
    record = json.loads((files / "design.json").read_text())
    assert [a.info["pool_index"] for a in train] == record["selected"]
    for atoms in train:
        src = pool[atoms.info["pool_index"]]
        assert atoms.info["config_type"] == src.info["config_type"]
        np.testing.assert_array_equal(atoms.arrays["tag_vector"], src.arrays["tag_vector"])
        # extxyz keeps 16 significant digits: the labels are the pool's, not recomputed
        np.testing.assert_allclose(atoms.get_potential_energy(), src.get_potential_energy(), rtol=1e-14)
        np.testing.assert_allclose(atoms.get_forces(), src.get_forces(), rtol=0, atol=1e-14)
        np.testing.assert_allclose(atoms.get_stress(), src.get_stress(), rtol=0, atol=1e-14)
    model = tmp_path / "model"
    code, out, err = cli("fit", files / "train.xyz", "-o", model, "--n-max", "4", "--l-max", "3", "--soap-cutoff",
                         "4.5", "--n-sparse", "10")
    assert code == 0, err
    assert "energy, forces" in out
    mask = os.umask(0)
    os.umask(mask)
    for name in ("arrays.npz", "model.json"):
        assert stat.S_IMODE((model / name).stat().st_mode) == 0o666 & ~mask, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_selected_frames_keep_calculator_results_in_memory():
    from mlipdoe.api import select, selected_frames
    from mlipdoe.descriptors import SOAP

    frames = _emt_labelled(generate_strained("Cu", structure="fcc", n_frames=6, max_strain=0.03, seed=4))
    result = select(frames, n=2, soap=SOAP(cutoff=4.5, n_max=4, l_max=3), n_sparse=8)
    for atoms, index in zip(selected_frames(result), result.selected):
        src = frames[index].calc.results
        assert set(atoms.calc.results) == set(src)
        assert atoms.calc.results["energy"] == src["energy"]
        assert atoms.calc.results["forces"] is not src["forces"]  # a copy, not shared
        np.testing.assert_array_equal(atoms.calc.results["forces"], src["forces"])


def test_wrong_label_keys_name_the_keys_the_file_has(tmp_path):
    frames = _emt_labelled(generate_strained("Cu", structure="fcc", n_frames=4, max_strain=0.03, seed=5))
    plain = []
    for atoms in frames:
        a = atoms.copy()
        a.info["dft_energy"] = atoms.get_potential_energy()
        a.arrays["dft_force"] = atoms.get_forces()
        plain.append(a)  # labels only in info/arrays, no calculator
    write_frames(plain, tmp_path / "plain.xyz")
    base = ("fit", tmp_path / "plain.xyz", "-o", tmp_path / "m", *SMALL[:-1])
    line = assert_one_line_error(*cli(*base, "--energy-key", "nope")[::2])
    assert "info['nope']" in line and "dft_energy" in line
    line = assert_one_line_error(*cli(*base, "--energy-key", "dft_energy", "--forces-key", "nope")[::2])
    assert "arrays['nope']" in line and "dft_force" in line
    line = assert_one_line_error(*cli(*base, "--energy-key", "dft_energy")[::2])  # default key: no silent energies
    assert "dft_force" in line and "--forces-key" in line
    code, out, err = cli(*base, "--energy-key", "dft_energy", "--forces-key", "dft_force")
    assert code == 0 and "energy, forces" in out, err


def test_notes_of_the_record_go_to_stderr(files, tmp_path):
    data = json.loads((files / "design.json").read_text())
    data["notes"] = ["2 sparse points dropped (duplicates)", "second note"]
    rec = tmp_path / "noted.json"
    rec.write_text(json.dumps(data))
    code, out, err = cli("score", "--record", rec)
    assert code == 0, err
    assert err.splitlines() == ["note: 2 sparse points dropped (duplicates)", "note: second note"]
