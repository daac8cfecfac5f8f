"""gap_fit argument parsing and rendering (mlipdoe.gap_spec), checked against the real gap_fit."""

import json
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import replace

import numpy as np
import pytest

from mlipdoe.exceptions import ConfigurationError, InputError
from mlipdoe.gap_spec import (
    GapDescriptor,
    GapFitSpec,
    parse_descriptor,
    parse_gap_fit_args,
    read_gap_fit_args,
    species_order,
    write_sparse_file,
)
from mlipdoe.hypers import Noise

SOAP = "soap cutoff=4 n_max=3 l_max=2 atom_sigma=0.5 delta=1 zeta=2 covariance_type=dot_product n_sparse=4"
TWO_B = "distance_2b cutoff=4 delta=0.5 covariance_type=ard_se theta_uniform=1.0 n_sparse=6 sparse_method=uniform"
THREE_B = "angle_3b cutoff=3 delta=0.1 covariance_type=gaussian theta_uniform=1 n_sparse=3"
SIGMA = "default_sigma={0.01 0.1 0.05 0}"
TEXT = f"gap={{{SOAP} : {TWO_B} : {THREE_B}}} {SIGMA}"


def test_parse_defaults_follow_gap_fit():
    spec = parse_gap_fit_args(TEXT)
    soap, two, three = spec.descriptors
    assert (spec.sigma_per_atom, spec.sparse_jitter, spec.config_type_sigma, spec.label_options) == (
        True, 1.0e-10, {}, {})
    assert spec.default_sigma == (0.01, 0.1, 0.05, 0.0)
    assert soap.hypers == {"cutoff": "4", "n_max": "3", "l_max": "2", "atom_sigma": "0.5"}
    assert (soap.kind, soap.delta, soap.zeta, soap.theta_uniform, soap.n_sparse) == ("soap", 1.0, 2.0, None, 4)
    assert (soap.sparse_method, soap.add_species, soap.f0, soap.sparse_file) == ("random", True, 0.0, None)
    assert soap.hyper("cutoff_transition_width") == "0.50" and soap.hyper("normalise") == "T"
    assert (two.covariance_type, two.theta_uniform, two.zeta, two.sparse_method) == ("ard_se", 1.0, None, "uniform")
    assert three.covariance_type == "ard_se"  # gaussian is gap_fit's alias of ard_se


def test_aliases_case_and_spacing_give_the_same_spec():
    canonical = parse_gap_fit_args(
        "gap={soap cutoff=4 n_max=3 l_max=2 atom_sigma=0.5 normalise=F delta=1 zeta=2 covariance_type=dot_product "
        "n_sparse=4 : distance_2b cutoff=4 delta=0.5 covariance_type=ard_se theta_uniform=1 n_sparse=6 "
        "sparse_method=cur_points : angle_3b cutoff=3 Z=8 Z1=8 Z2=40 add_species=F delta=1 "
        "covariance_type=ard_se theta_uniform=1 n_sparse=2} default_sigma={0.01 0.1 0.05 0} "
        "config_type_sigma={bulk:0.002:0.2:0.1:0} sigma_per_atom=F baseline_ip_args={IP LJ} do_copy_atoms_file=F")
    aliased = parse_gap_fit_args(
        "GAP={SOAP Cutoff=4 N_MAX=3 l_max=2 atom_gaussian_width=0.5 normalize=false energy_scale=1 soap_exponent=2 "
        "covariance_type=DOT_PRODUCT n_sparse=4 : distance_2b cutoff=4 delta=0.5 covariance_type=Gaussian "
        "lengthscale_uniform=1 n_sparse=6 sparse_method=CUR_POINTS ; angle_3b cutoff=3 Z_center=8 Z1=8 Z2=40 "
        "add_species=f delta=1 covariance_type=ard_se theta_uniform=1 n_sparse=2}, "
        "default_kernel_regularisation = {0.01 0.1 0.05 0} config_type_kernel_regularisation={bulk:0.002:0.2:0.1:0} "
        "kernel_regularisation_is_per_atom=FALSE core_ip_args={IP LJ} do_copy_at_file=f")
    assert aliased == canonical
    assert canonical.label_options == {"baseline_ip_args": "{IP LJ}", "do_copy_atoms_file": "F"}


@pytest.mark.parametrize("word,value", [("T", True), ("true", True), ("TRUE", True), ("t", True), ("F", False),
                                        ("false", False), ("False", False), ("f", False)])
def test_logicals_as_gap_fit_reads_them(word, value):
    spec = parse_gap_fit_args(f"gap={{{SOAP}}} {SIGMA} sigma_per_atom={word}")
    assert spec.sigma_per_atom is value


REFUSALS = [
    (f"gap={{{SOAP}}} {SIGMA} foo=1 bar=2", r"unknown keys foo, bar in gap_fit arguments"),
    (f"gap={{{SOAP} l_maxx=4}} {SIGMA}", r"unknown key l_maxx in soap descriptor"),
    (f"gap={{{TWO_B} l_max=4}} {SIGMA}", r"unknown key l_max in distance_2b descriptor"),
    (f"gap={{soap_turbo l_max=8 delta=1 covariance_type=dot_product zeta=2 n_sparse=4}} {SIGMA}",
     r"soap_turbo is not supported \(supported: soap, distance_2b, angle_3b\)"),
    (f"gap={{cutoff=4 delta=1 covariance_type=dot_product zeta=2 n_sparse=4}} {SIGMA}", r"one kind word"),
    (f"gap={{{TWO_B.replace('theta_uniform=1.0', 'theta_fac=0.5')}}} {SIGMA}", r"theta_fac .*give theta_uniform"),
    (f"gap={{{TWO_B.replace('theta_uniform', 'lengthscale_file')}}} {SIGMA}", r"lengthscale_file .*theta_uniform"),
    (f"gap={{{SOAP}}} {SIGMA} at_file=train.xyz", r"leave out at_file/gp_file"),
    (f"gap={{{SOAP}}} {SIGMA} gp_file=gap.xml", r"leave out at_file/gp_file"),
    (f"gap={{{SOAP}}} {SIGMA} config_file=args.txt", r"config_file"),
    (f"gap={{{SOAP}}} {SIGMA} force_mask_parameter_name=mask", r"force masks are not supported"),
    (f"gap={{{SOAP}}} {SIGMA} sigma_parameter_name=s", r"per-frame sigmas are not supported"),
    (f"gap={{{SOAP}}} {SIGMA} hessian_delta=0.01", r"Hessian observations are not supported"),
    (f"gap={{{SOAP} average=T}} {SIGMA}", r"averaged SOAP"),
    (f"gap={{{TWO_B.replace('ard_se', 'pp')}}} {SIGMA}", r"covariance_type=pp is not supported"),
    (f"gap={{{SOAP.replace('zeta=2 ', '')}}} {SIGMA}", r"dot_product needs zeta"),
    (f"gap={{{TWO_B} zeta=2}} {SIGMA}", r"ard_se needs theta_uniform \(and no zeta\)"),
    (f"gap={{{SOAP.replace('delta=1 ', '')}}} {SIGMA}", r"missing delta"),
    (f"gap={{{SOAP.replace('atom_sigma=0.5 ', '')}}} {SIGMA}", r"missing atom_sigma"),
    (f"gap={{{SOAP}}}", r"need default_sigma"),
    (SIGMA, r"need gap"),
    (f"gap={{{SOAP}}} default_sigma={{0.01 0.1 0}}", r"default_sigma needs 4 values"),
    (f"gap={{{SOAP} delta=2}} {SIGMA}", r"delta given twice"),
    (f"gap={{{SOAP} energy_scale=2}} {SIGMA}", r"energy_scale given twice"),
    (f"gap={{{SOAP}}} {SIGMA} default_kernel_regularisation={{1 1 1 1}}", r"given twice"),
    (f"gap={{{SOAP} config_type_n_sparse={{{{a:3}}}}}} {SIGMA}", r"n_sparse > 0 or config_type_n_sparse"),
    (f"gap={{{SOAP.replace('n_sparse=4', '')}}} {SIGMA}", r"n_sparse > 0 or config_type_n_sparse"),
    (f"gap={{{SOAP} sparse_file=pts.txt}} {SIGMA}", r"sparse_file goes with sparse_method=file"),
    (f"gap={{{SOAP} sparse_method=fps}} {SIGMA}", r"unknown sparse_method 'fps'"),
    (f"gap={{{SOAP} Z=8}} {SIGMA}", r"add_species=T sets Z; give add_species=F"),
    (f"gap={{{TWO_B} Z1=8 Z2=8}} {SIGMA}", r"add_species=T sets Z1, Z2"),
    (f"gap={{{SOAP} add_species=0}} {SIGMA}", r"add_species='0' is not a logical"),
    (f"gap={{{SOAP} add_species=.false.}} {SIGMA}", r"is not a logical"),
    (f"gap={{{SOAP.replace('cutoff=4', 'cutoff=abc')}}} {SIGMA}", r"cutoff='abc' is not a real number"),
    (f"gap={{{SOAP.replace('n_max=3', 'n_max=3.5')}}} {SIGMA}", r"n_max='3.5' is not an integer"),
    (f"gap={{{SOAP} {SIGMA}", r"unbalanced \{"),
    (f"gap={{{SOAP}}} {SIGMA} config_type_sigma={{bulk:0.1:0.2}}", r"config_type_sigma needs groups of 5"),
    (f"gap={{{SOAP}}} {SIGMA} e0_method=median", r"e0_method must be one of isolated, average"),
    (f"gap={{{SOAP}}} {SIGMA} verbosity=verbose", r"verbosity must be one of NORMAL"),
    (f"gap={{{SOAP}}} {SIGMA} e0= force_parameter_name=f", r"no value for e0"),
    (f"gap={{{SOAP.replace('n_sparse=4', 'config_type_n_sparse={{a:3:a:4}}')}}} {SIGMA}", r"config_type is listed twice"),
    # gap_fit strips one brace level at the descriptor split: a single-braced list falls apart
    (f"gap={{{SOAP} add_species=F n_species=2 species_Z={{8 40}}}} {SIGMA}", r"unknown key 40 in soap"),
]


@pytest.mark.parametrize("text,match", REFUSALS)
def test_refusals_name_the_key(text, match):
    with pytest.raises(ConfigurationError, match=match):
        parse_gap_fit_args(text)


def test_from_dict_is_strict():
    d = parse_gap_fit_args(TEXT).to_dict()
    with pytest.raises(ConfigurationError, match="unknown gap_fit arguments key 'extra'"):
        GapFitSpec.from_dict({**d, "extra": 1})
    desc = d["descriptors"][0]
    with pytest.raises(ConfigurationError, match="unknown gap_fit descriptor key 'cutof'"):
        GapDescriptor.from_dict({**desc, "cutof": 4})
    with pytest.raises(ConfigurationError, match="unknown key l_maxx in soap descriptor"):
        GapDescriptor.from_dict({**desc, "hypers": {**desc["hypers"], "l_maxx": "4"}})
    with pytest.raises(ConfigurationError, match="unknown key bogus in gap_fit label options"):
        GapFitSpec.from_dict({**d, "label_options": {"bogus": "1"}})
    with pytest.raises(ConfigurationError, match="need 'descriptors' and 'default_sigma'"):
        GapFitSpec.from_dict({"descriptors": d["descriptors"]})


FULL = (f"gap={{{SOAP} central_weight=0.5 : {TWO_B} : angle_3b cutoff=3 Z=8 Z1=8 Z2=40 add_species=F delta=1 "
        "covariance_type=ard_se theta_uniform=1 config_type_n_sparse={{bulk:3:surf:2}} f0=0.25} "
        "default_sigma={0.002 0.2 0.1 0.01} config_type_sigma={bulk:0.001:0.1:0.05:0:surf:0.003:0.3:0.2:0} "
        "sigma_per_atom=F sparse_jitter=1.0e-8 e0={Zr:-1.5:O:-0.5} e0_method=average force_parameter_name=forces "
        "virial_parameter_name=vir rnd_seed=3")


def test_round_trips():
    spec = parse_gap_fit_args(FULL)
    assert GapFitSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert parse_gap_fit_args(spec.template_args()) == spec
    species = [40, 8]
    expanded = parse_gap_fit_args(spec.gap_fit_args(species))
    assert expanded.descriptors == tuple(spec.expanded(species))
    assert replace(expanded, descriptors=spec.descriptors) == spec
    three = spec.descriptors[2]
    assert (three.config_type_n_sparse, three.n_sparse, three.f0) == ({"bulk": 3, "surf": 2}, 0, 0.25)
    assert spec.label_options["e0"] == "{Zr:-1.5:O:-0.5}"


def test_expansion_counts_and_strings():
    spec = parse_gap_fit_args(TEXT)
    species = [40, 8, 1]
    soap, two, three = (d.expand(species) for d in spec.descriptors)
    assert [d.descriptor_string() for d in soap] == [
        f"soap cutoff=4 n_max=3 l_max=2 atom_sigma=0.5 n_species=3 Z={z} species_Z={{40 8 1}}" for z in species]
    assert [(d.hypers["Z1"], d.hypers["Z2"]) for d in two] == [
        ("40", "40"), ("40", "8"), ("40", "1"), ("8", "8"), ("8", "1"), ("1", "1")]
    assert len(three) == 3 * 6 and [d.hypers["Z"] for d in three[:7]] == ["40"] * 6 + ["8"]
    assert all(not d.add_species and d.n_sparse == orig.n_sparse
               for ds, orig in zip((soap, two, three), spec.descriptors) for d in ds)
    assert len(spec.expanded(species)) == 3 + 6 + 18
    with pytest.raises(ConfigurationError, match="call expand"):
        spec.descriptors[0].descriptor_string()
    with pytest.raises(ConfigurationError, match="distinct atomic numbers"):
        spec.descriptors[0].expand([8, 8])


def test_noise_mapping():
    spec = parse_gap_fit_args(f"gap={{{SOAP}}} default_sigma={{0.002 0.2 0.1 0}} "
                              "config_type_sigma={bulk:0.001:0.1:0.05:0:surf:0.003:0.3:0.2:0}")
    assert spec.noise() == Noise(energy=0.002, force=0.2, virial=0.1, per_atom=True, per_config_type={
        "bulk": {"energy": 0.001, "force": 0.1, "virial": 0.05}, "surf": {"energy": 0.003, "force": 0.3,
                                                                         "virial": 0.2}})
    # gap_fit: energy sigma = σ_E(config_type, else "default") · sqrt(N) when per atom
    n, cts = np.array([4, 9, 2]), ["bulk", None, "liquid"]
    expected = np.array([0.001 * 2, 0.002 * 3, 0.002 * np.sqrt(2)]) ** 2
    assert np.allclose(spec.noise().energy_variance(n, cts), expected, rtol=1e-12)
    # a "default" row replaces default_sigma for frames of no listed config_type, as in gap_fit
    spec = parse_gap_fit_args(f"gap={{{SOAP}}} default_sigma={{1 1 1 1}} sigma_per_atom=F "
                              "config_type_sigma={default:0.004:0.4:0.3:0}")
    assert spec.noise() == Noise(energy=0.004, force=0.4, virial=0.3, per_atom=False)


def test_read_file_and_species_order(tmp_path):
    path = tmp_path / "args.txt"
    path.write_text(f"gap={{{SOAP} :\n {TWO_B}}}\n{SIGMA}\nforce_parameter_name=forces\n")
    assert read_gap_fit_args(path) == parse_gap_fit_args(f"gap={{{SOAP} : {TWO_B}}} {SIGMA} "
                                                         "force_parameter_name=forces")
    with pytest.raises(InputError, match="cannot read gap_fit arguments"):
        read_gap_fit_args(tmp_path / "missing.txt")
    assert species_order([np.array([40, 8, 8]), np.array([1, 40]), np.array([8, 6])]) == [40, 8, 1, 6]


def test_descriptor_strings_build_quippy_descriptors():
    descriptors = pytest.importorskip("quippy.descriptors")
    dims = [descriptors.Descriptor(d.descriptor_string()).dimensions()
            for d in parse_gap_fit_args(TEXT).expanded([40, 8])]
    # soap: 2 species, n_max=3, l_max=2 → (n_species n_max)(n_species n_max + 1)/2 (l_max + 1) + 1
    assert dims == [6 * 7 // 2 * 3 + 1] * 2 + [1] * 3 + [3] * 6


# ------------------------------------------------------------------ against the real gap_fit
gap_fit_needed = pytest.mark.skipif(shutil.which("gap_fit") is None, reason="gap_fit not on PATH")


@pytest.fixture
def training(tmp_path):
    """Three Zr/O cells with fake energies and forces (enough for gap_fit to run)."""
    ase_io = pytest.importorskip("ase.io")
    from ase import Atoms

    rng = np.random.default_rng(7)
    frames = []
    for config_type in ("bulk", "bulk", "surf"):
        grid = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)], dtype=float)
        a = Atoms("ZrO2ZrO2Zr2", positions=2.3 * grid + rng.normal(0, 0.15, (8, 3)), cell=4.6 * np.eye(3), pbc=True)
        a.info["energy"] = float(rng.normal())
        a.arrays["forces"] = rng.normal(size=(8, 3))
        a.info["config_type"] = config_type
        frames.append(a)
    ase_io.write(tmp_path / "train.xyz", frames)
    return tmp_path, frames


def _gap_fit(cwd, args: str, gp: str = "gp.xml"):
    run = subprocess.run(["gap_fit", *shlex.split(args), "at_file=train.xyz", f"gp_file={gp}"], cwd=cwd,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    return ET.parse(cwd / gp).getroot()


LABELS = " force_parameter_name=forces e0=0.0"


@gap_fit_needed
def test_add_species_expansion_matches_gap_fit(training):
    tmp, frames = training
    text = f"gap={{{SOAP} add_species=T : {TWO_B} : {THREE_B}}} {SIGMA}{LABELS}"
    spec = parse_gap_fit_args(text)
    # gap_fit writes each expanded descriptor without add_species (it blanks add_species=T)
    strings = [c.find("descriptor").text for c in _gap_fit(tmp, text).iter("gpCoordinates")]
    assert not any("add_species" in s for s in strings)
    ours = spec.expanded(species_order(frames))
    assert species_order(frames) == [40, 8] and len(ours) == 2 + 3 + 6
    assert [parse_descriptor(s + " add_species=F") for s in strings] == ours


@gap_fit_needed
def test_exported_args_run_through_gap_fit(training):
    tmp, _ = training
    spec = parse_gap_fit_args(f"gap={{{SOAP} : {TWO_B} : {THREE_B}}} {SIGMA}{LABELS}")
    species = [8, 40]  # any order: the exported descriptors are explicit
    root = _gap_fit(tmp, spec.gap_fit_args(species))
    assert [parse_descriptor(c.find("descriptor").text) for c in root.iter("gpCoordinates")] == spec.expanded(species)
    # gap_fit's own config_file holds the same text (newlines are blanks)
    (tmp / "args.txt").write_text(spec.gap_fit_args(species).replace(" : ", " :\n") + "\nat_file=train.xyz "
                                  "gp_file=gp_cfg.xml\n")
    run = subprocess.run(["gap_fit", "config_file=args.txt"], cwd=tmp, capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 0, run.stdout[-3000:]
    assert (tmp / "gp_cfg.xml").exists()


@gap_fit_needed
def test_every_rendered_option_reaches_gap_fit(training):
    tmp, _ = training
    spec = parse_gap_fit_args(FULL)
    root = _gap_fit(tmp, spec.gap_fit_args([40, 8]))
    coords = list(root.iter("gpCoordinates"))
    three = coords[-1]  # angle_3b: config_type_n_sparse bulk:3 + surf:2, f0=0.25
    assert (int(three.attrib["n_sparseX"]), float(three.attrib["signal_mean"])) == (5, 0.25)
    assert [int(c.attrib["n_sparseX"]) for c in coords[:5]] == [4, 4, 6, 6, 6]
    assert {int(e.attrib["Z"]): float(e.attrib["value"]) for e in root.iter("e0") if float(e.attrib["value"])} == {
        40: -1.5, 8: -0.5}
    command = root.find(".//command_line").text
    assert "sigma_per_atom=F" in command and "sparse_jitter=1e-08" in command and "rnd_seed=3" in command


@gap_fit_needed
def test_sparse_files_in_gap_fit_file_format(training):
    descriptors = pytest.importorskip("quippy.descriptors")
    tmp, frames = training
    spec = parse_gap_fit_args(f"gap={{{SOAP} : {TWO_B} : {THREE_B}}} {SIGMA}{LABELS}")
    species = species_order(frames)
    expected, files = [], []
    for k, d in enumerate(spec.expanded(species)):
        out = [descriptors.Descriptor(d.descriptor_string()).calc(a) for a in frames]
        X = np.concatenate([o["data"] for o in out if "data" in o and len(o["data"])])
        c = np.concatenate([o["covariance_cutoff"] for o in out if "data" in o and len(o["data"])])
        pick = np.arange(min(3, len(X)))
        write_sparse_file(tmp / f"sparse{k}.txt", X[pick], c[pick])
        expected.append((X[pick], c[pick]))
        files.append(f"sparse{k}.txt")
    text = spec.gap_fit_args(species, sparse_files=files)
    assert "n_sparse" not in text and text.count("sparse_method=file") == len(files)
    coords = list(_gap_fit(tmp, text).iter("gpCoordinates"))
    assert len(coords) == len(expected)
    for coord, (X, c) in zip(coords, expected):
        got = np.loadtxt(tmp / coord.attrib["sparseX_filename"]).reshape(len(X), -1)
        cut = np.array([float(s.attrib["sparseCutoff"]) for s in coord.findall("sparseX")])
        assert int(coord.attrib["n_sparseX"]) == len(X)
        np.testing.assert_array_equal(got, X)  # the file's digits round-trip exactly
        np.testing.assert_allclose(cut, c, rtol=1e-15, atol=0)
    with pytest.raises(ConfigurationError, match="2 sparse files for 11 expanded descriptors"):
        spec.gap_fit_args(species, sparse_files=files[:2])
