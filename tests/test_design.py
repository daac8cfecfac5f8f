"""The design record: JSON Schema, validation on read and write, format versions."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from conftest import SMALL_SOAP, run_cli

from mlipdoe import design, schemas
from mlipdoe.api import select
from mlipdoe.budget import KINDS
from mlipdoe.exceptions import InputError
from mlipdoe.generate import generate_strained, write_frames
from mlipdoe.model import OBSERVABLES

# The fields of docs/information-model.md section 4, plus ``notes`` (format 2), written out
# here rather than taken from mlipdoe.design so that a change on either side is noticed.
DOCUMENTED = (
    "format", "pool", "descriptor", "kernel", "noise", "observations", "sparse_points", "criterion",
    "optimizer", "seed", "budget", "fixed", "selected", "gains", "value", "log_det_K_MM", "timings_s",
    "versions", "notes",
)


@pytest.fixture(scope="module")
def result():
    pool = generate_strained("Zr", n_frames=12, max_strain=0.05, rattle=0.02, seed=1)
    return select(pool, n=3, criterion="d", soap=SMALL_SOAP, n_sparse=6, seed=0)


@pytest.fixture
def written(result, tmp_path):
    path = tmp_path / "design.json"
    design.write_record(result.record, path)
    return path, json.loads(path.read_text())


def refusal(data, tmp_path) -> str:
    """The message with which read_record refuses ``data`` written to a file (one line)."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError) as info:
        design.read_record(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_schemas_are_valid_draft_2020_12_package_data():
    for name in schemas.SCHEMAS:
        schema = schemas.load(name)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)
    record_schema = schemas.load("design-record")
    assert tuple(record_schema["required"]) == DOCUMENTED == design.REQUIRED
    assert record_schema["properties"]["format"] == {"const": design.FORMAT}
    props = record_schema["properties"]
    assert props["observations"]["items"]["enum"] == list(OBSERVABLES)
    assert props["budget"]["properties"]["kind"]["enum"] == list(KINDS)


def test_record_written_by_select_validates_and_round_trips(result, written):
    path, data = written
    assert data["format"] == "mlipdoe.design/3" and data["notes"] == []
    assert list(data)[: len(DOCUMENTED)] == list(DOCUMENTED)
    jsonschema.validate(data, schemas.load("design-record"), cls=jsonschema.Draft202012Validator)
    again = design.read_record(path)
    assert again == result.record
    assert again.to_dict() == data


@pytest.mark.parametrize("name", DOCUMENTED[1:])
def test_each_required_field_removed_is_refused(written, tmp_path, name):
    _, data = written
    del data[name]
    assert refusal(data, tmp_path).endswith(f"missing required field {name!r}")


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d.update(seed="0"), "field 'seed' must be of type integer, got string"),
    (lambda d: d.update(selected=[1, 2.5]), "field 'selected[1]' must be of type integer, got number"),
    (lambda d: d.update(selected=[-1]), "field 'selected[0]'"),
    (lambda d: d.update(gains=[None]), "field 'gains[0]' must be of type number, got null"),
    (lambda d: d.update(value=True), "field 'value' must be of type number, got boolean"),
    (lambda d: d.update(notes="dropped 2 points"), "field 'notes' must be of type array, got string"),
    (lambda d: d.update(notes=[3]), "field 'notes[0]' must be of type string, got integer"),
    (lambda d: d["budget"].update(kind="frames"), "field 'budget.kind' must be one of \"count\", \"atoms\", \"cost\""),
    (lambda d: d["kernel"].update(type="ard_se"), "field 'kernel.type' must be one of \"dot_product\", \"gap_fit\", \"linear\", got \"ard_se\""),
    (lambda d: d["noise"].update(energy=0), "field 'noise.energy'"),
    (lambda d: d["pool"][0].pop("sha256"), "missing required field 'pool[0].sha256'"),
    (lambda d: d["sparse_points"].__setitem__(0, [1]), "field 'sparse_points[0]'"),
    (lambda d: d.update(observations=["energy", "stress"]), "field 'observations[1]' must be one of"),
    (lambda d: d.update(jitter="1e-8"), "field 'jitter' must be of type number, got string"),
])
def test_wrong_content_is_refused_naming_the_field(written, tmp_path, mutate, expected):
    _, data = written
    mutate(data)
    assert expected in refusal(data, tmp_path)


def test_not_json_nan_and_not_an_object_are_refused(written, tmp_path):
    path, _ = written
    text = path.read_text()
    bad = tmp_path / "nan.json"
    bad.write_text(text.replace('"value": ', '"value": NaN, "was": ', 1))
    with pytest.raises(InputError, match="NaN is not valid JSON"):
        design.read_record(bad)
    bad.write_text(text[:-20])
    with pytest.raises(InputError, match="cannot read design record"):
        design.read_record(bad)
    assert "not a JSON object" in refusal([1, 2], tmp_path)


def test_previous_format_is_read_with_defaults(result, written, tmp_path):
    _, data = written
    old = copy.deepcopy(data)
    old["format"] = "mlipdoe.design/1"
    del old["notes"]
    old_path = tmp_path / "old.json"
    old_path.write_text(json.dumps(old))
    record = design.read_record(old_path)
    assert record.notes == [] and record == result.record
    assert record.to_dict() == data
    # written again, it is a current record
    again = tmp_path / "again.json"
    design.write_record(record, again)
    assert json.loads(again.read_text()) == data
    # an old record is still checked
    del old["selected"]
    assert refusal(old, tmp_path).endswith("missing required field 'selected'")


@pytest.mark.parametrize(("fmt", "expected"), [
    ("mlipdoe.design/4", "format mlipdoe.design/4 is newer than the newest this mlipdoe reads (mlipdoe.design/3)"),
    ("mlipdoe.design/0", "format mlipdoe.design/0 is not one this mlipdoe reads (it reads mlipdoe.design/1, "
                         "mlipdoe.design/2, mlipdoe.design/3)"),
    ("mlipdoe.assess/1", "not a design record (format is 'mlipdoe.assess/1', expected 'mlipdoe.design/3')"),
    (None, "not a design record (format is None, expected 'mlipdoe.design/3')"),
])
def test_other_formats_are_refused_naming_both(written, tmp_path, fmt, expected):
    _, data = written
    data["format"] = fmt
    assert expected in refusal(data, tmp_path)


def test_write_record_validates_before_writing(result, tmp_path):
    path = tmp_path / "design.json"
    path.write_text("previous\n")
    bad = copy.deepcopy(result.record)
    bad.notes = ["sampled 1000 environments", ""]
    with pytest.raises(InputError, match=r"refusing to write design record .*field 'notes\[1\]'"):
        design.write_record(bad, path)
    assert path.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["design.json"]
    good = copy.deepcopy(result.record)
    good.notes = ["dropped 1 sparse point as a duplicate"]
    design.write_record(good, path)
    assert design.read_record(path).notes == ["dropped 1 sparse point as a duplicate"]


def test_report_schema_refuses_with_one_line():
    with pytest.raises(InputError) as info:
        schemas.check({"format": "mlipdoe.assess/1"}, "report", "report.json")
    assert str(info.value).startswith("report.json: missing required field")
    assert "\n" not in str(info.value)


def test_cli_refuses_an_invalid_record_with_one_line(result, written, tmp_path):
    _, data = written
    write_frames(result.pool.frames, tmp_path / "pool.xyz")
    data["budget"]["kind"] = "frames"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    r = run_cli("assess", "--record", bad, "--pool", tmp_path / "pool.xyz", "--report", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "field 'budget.kind'" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
