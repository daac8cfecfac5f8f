"""Shared fixtures: small, fast pools and hyperparameters."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from mlipdoe.descriptors import SOAP

#: ../shared/data as CI sees it (repo at X/main, data at X/shared/data).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

#: The EAM potential that labels generated Zr frames in label-backed tests.
EAM_FILE = SHARED_DATA / "eam" / "Zr_mm.eam.fs"


def eam_labelled(frames):
    """Copies of ``frames`` with EAM labels in ``info["energy"]`` / ``arrays["force"]``."""
    from ase.calculators.eam import EAM

    calc = EAM(potential=str(EAM_FILE))
    out = []
    for atoms in frames:
        a = atoms.copy()
        a.calc = calc
        a.info["energy"] = a.get_potential_energy()
        a.arrays["force"] = a.get_forces()
        a.calc = None
        out.append(a)
    return out


#: A small SOAP that keeps tests fast.
SMALL_SOAP = SOAP(cutoff=4.5, cutoff_transition_width=0.5, n_max=4, l_max=3, atom_sigma=0.5)


@pytest.fixture
def small_soap():
    return SMALL_SOAP


@pytest.fixture(scope="session")
def zr_pool():
    """60 deformed, rattled hcp Zr frames (16 atoms)."""
    from mlipdoe.generate import zr_example

    return zr_example(60, seed=1)


@pytest.fixture(scope="session")
def zr_pool_unrattled():
    """Elastically deformed hcp Zr without rattle: K_MM is badly conditioned."""
    from mlipdoe.generate import generate_strained

    return generate_strained("Zr", n_frames=60, max_strain=0.03, rattle=0.0, seed=2)


@pytest.fixture(scope="session")
def cuni_pool():
    """Rattled, strained fcc Cu cells with random Ni substitutions (binary)."""
    from mlipdoe.generate import generate_strained

    frames = generate_strained("Cu", structure="fcc", n_frames=40, max_strain=0.03, rattle=0.05, seed=3,
                               supercell=(2, 2, 2))
    rng = np.random.default_rng(3)
    for atoms in frames:
        numbers = atoms.numbers.copy()
        numbers[rng.choice(len(atoms), size=rng.integers(1, 6), replace=False)] = 28
        atoms.numbers = numbers
    return frames


def run_cli(*args, cwd=None):
    """Run the installed CLI entry point in a subprocess; returns CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-c", "from mlipdoe.cli import main; main()", *map(str, args)],
        capture_output=True, text=True, cwd=cwd,
    )


OBS_EFV = ("energy", "forces", "virials")


@pytest.fixture(scope="module")
def energy_and_force_models(cuni_pool):
    """The same 12 Cu/Ni frames and sparse points with energy, energy+force and all rows."""
    from mlipdoe.model import build_model

    frames = cuni_pool[:12]
    energy = build_model(frames, soap=SMALL_SOAP, n_sparse=10, seed=0)
    locations = energy.sparse.location_list()
    forces = build_model(frames, soap=SMALL_SOAP, sparse_locations=locations, observations=("energy", "forces"))
    full = build_model(frames, soap=SMALL_SOAP, sparse_locations=locations, observations=OBS_EFV)
    return frames, energy, forces, full
