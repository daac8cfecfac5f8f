"""Label-backed fitting: the sparse GPR of the spec, its gap_fit twin, and evaluation.

The built-in fit is the posterior mean of spec section 2, solved in whitened
coordinates (spec section 5) by :func:`mlipdoe.model.rows.posterior_mean` on the model
layer's rows (:func:`mlipdoe.model.gap_featomic.iter_observation_rows`):

    F̃ = I + Σ_s Ψ_sᵀ Λ_s⁻¹ Ψ_s,     β = F̃⁻¹ Σ_s Ψ_sᵀ Λ_s⁻¹ y_s,     α = L⁻ᵀ β.

The energy labels have an average per-atom offset e0 = mean_s E_s / n_s removed first
(gap_fit ``e0_method=average``). Predictions are ψ_s β on the same rows.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.linalg
from ase import Atoms

from .atomic import atomic_output, output_folder
from .descriptors import SOAP, AtomicDescriptors, SpeciesBlock, make_descriptor
from .design import atomic_write_text
from .exceptions import ConfigurationError, InputError, NumericalError
from .hypers import Noise
from .model.gap_featomic import (
    chunk_energy_rows,
    iter_observation_rows,
    observation_block,
)
from .model.kernels import Kernel, SparsePoints, cholesky_with_jitter
from .model.rows import ObservationRows, posterior_mean, whiten

MODEL_FORMAT = "mlipdoe.gpr/1"

__all__ = [
    "GPRModel", "Labels", "Prediction", "ErrorTable", "read_labels", "fit_gpr", "fit_from_rows",
    "label_vectors", "evaluate", "fit_gap_fit", "GapFitModel", "load_model", "average_e0",
    "fit_gap_exact", "fit_gap_fit_exact", "fit_gap_fit_own", "write_gap_fit_training", "GapExactGPR", "predict_rows", "run_gap_fit",
]


# ---------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------
@dataclass
class Labels:
    """Reference labels of a list of frames.

    Attributes
    ----------
    energy : (N,) array
        Total energies (eV).
    forces : list of (n_s, 3) arrays, or None
        Forces (eV/Å); None when the frames carry no forces.
    n_atoms : (N,) int array
    config_types : list of str or None
    """

    energy: np.ndarray
    forces: list | None
    n_atoms: np.ndarray
    config_types: list

    def subset(self, indices: Sequence[int]) -> "Labels":
        idx = [int(i) for i in indices]
        return Labels(self.energy[idx], [self.forces[i] for i in idx] if self.forces is not None else None,
                      self.n_atoms[idx], [self.config_types[i] for i in idx])


def _calc_result(atoms: Atoms, name: str):
    calc = atoms.calc
    if calc is None:
        return None
    results = getattr(calc, "results", {}) or {}
    return results.get(name)


_NOT_FORCES = ("positions", "momenta", "numbers")


def _keys(mapping, *, skip=()) -> str:
    keys = [str(k) for k in mapping if k not in skip]
    return ", ".join(sorted(keys)) or "none"


def _vector_arrays(atoms: Atoms) -> list[str]:
    """Names of per-atom 3-vector arrays that could hold forces."""
    return sorted(k for k, v in atoms.arrays.items()
                  if k not in _NOT_FORCES and np.shape(v) == (len(atoms), 3) and np.issubdtype(np.asarray(v).dtype,
                                                                                                np.floating))


def read_labels(frames: Sequence[Atoms], *, energy_key: str = "energy", forces_key: str | None = "force",
                require_forces: bool = False, named: Sequence[str] = ()) -> Labels:
    """Energies and forces from each frame's calculator, else ``info[energy_key]`` and
    ``arrays[forces_key]`` (the defaults match the Zuo et al. 2020 extxyz files).

    ``forces_key=None`` reads energies only. ``named`` lists the labels (``"energy"``,
    ``"forces"``) whose key the user chose: those are read from the key, before any
    calculator result, and every frame must have it. Raises :class:`InputError`, naming
    the keys the frame has, for a frame without an energy; for forces on some frames but
    not on others; for no forces at all when ``require_forces`` or when the frames hold
    another per-atom vector array (a forces key that does not match the file is never
    read as "no forces").
    """
    energies, forces, cts = [], [], []
    missing: list[int] = []
    for k, atoms in enumerate(frames):
        if "energy" in named:
            e = atoms.info.get(energy_key)
            if e is None:
                hint = "; it has a calculator energy, read without --energy-key" if _calc_result(
                    atoms, "energy") is not None else ""
                raise InputError(f"frame {k} has no info[{energy_key!r}] (its info keys: {_keys(atoms.info)}{hint})")
        else:
            e = _calc_result(atoms, "energy")
            if e is None:
                e = atoms.info.get(energy_key)
        if e is None:
            raise InputError(f"frame {k} has no energy: no calculator result and no info[{energy_key!r}] "
                             f"(its info keys: {_keys(atoms.info)}; set --energy-key)")
        energies.append(float(e))
        f = None
        if forces_key is not None and "forces" in named:
            f = atoms.arrays.get(forces_key)
            if f is None:
                hint = "; it has calculator forces, read without --forces-key" if _calc_result(
                    atoms, "forces") is not None else ""
                raise InputError(f"frame {k} has no arrays[{forces_key!r}] (its per-atom arrays: "
                                 f"{_keys(atoms.arrays, skip=_NOT_FORCES)}{hint})")
        elif forces_key is not None:
            f = _calc_result(atoms, "forces")
            if f is None:
                f = atoms.arrays.get(forces_key)
        if f is None:
            missing.append(k)
        else:
            f = np.asarray(f, dtype=np.float64)
            if f.shape != (len(atoms), 3):
                raise InputError(f"frame {k}: forces have shape {f.shape}, expected ({len(atoms)}, 3)")
        forces.append(f)
        cts.append(str(atoms.info.get("config_type", "default")))
    have_forces = forces_key is not None and not missing
    if forces_key is not None and missing:
        k = missing[0]
        keys = _keys(frames[k].arrays, skip=_NOT_FORCES)
        if len(missing) < len(frames):
            raise InputError(f"{len(missing)} of {len(frames)} frames have no forces (first: frame {k}, no calculator "
                             f"result and no arrays[{forces_key!r}]; its per-atom arrays: {keys}); label every "
                             f"frame, or fit energies only (--no-forces)")
        candidates = _vector_arrays(frames[k])
        if require_forces or candidates:
            raise InputError(f"no forces on any frame: no calculator result and no arrays[{forces_key!r}] (per-atom "
                             f"arrays of frame {k}: {keys}); set --forces-key, or fit energies only (--no-forces)")
    n = np.array([len(a) for a in frames], dtype=np.int64)
    return Labels(np.array(energies), forces if have_forces else None, n, cts)


def average_e0(labels: Labels) -> float:
    """gap_fit ``e0_method=average``: mean over frames of E_s / n_s (eV/atom)."""
    return float(np.mean(labels.energy / labels.n_atoms))


# ---------------------------------------------------------------------------
# the fitted model
# ---------------------------------------------------------------------------
@dataclass
class Prediction:
    """Predicted energies (N,) (eV) and forces (list of (n_s, 3), or None)."""

    energy: np.ndarray
    forces: list | None
    n_atoms: np.ndarray


@dataclass
class GPRModel:
    """A fitted sparse GPR (GAP) in whitened coordinates.

    Attributes
    ----------
    beta : (M,) array
        Whitened weights; α = L⁻ᵀ β are the GAP coefficients.
    e0 : float
        Per-atom energy offset (eV/atom).
    """

    soap: SOAP
    kernel: Kernel
    noise: Noise
    sparse: SparsePoints
    L: np.ndarray
    beta: np.ndarray
    e0: float
    jitter: float = 0.0
    observations: tuple = ("energy",)
    meta: dict = field(default_factory=dict)

    @property
    def alpha(self) -> np.ndarray:
        return scipy.linalg.solve_triangular(self.L.T, self.beta, lower=False)

    @property
    def M(self) -> int:
        return len(self.beta)

    def predict_rows(self, rows: Sequence[ObservationRows], *, forces: bool = True) -> Prediction:
        """Predictions ψ β (+ e0 n) from the model layer's whitened rows of each frame."""
        return predict_rows(rows, self.beta, self.e0, forces=forces)

    def rows(self, frames: Sequence[Atoms], *, forces: bool = True) -> list[ObservationRows]:
        """The model layer's whitened rows of ``frames`` on this model's sparse points."""
        observations = ("energy", "forces") if forces else ("energy",)
        return [r for _, r in iter_observation_rows(make_descriptor(self.soap), list(frames), sparse=self.sparse,
                                                    kernel=self.kernel, L=self.L, noise=self.noise,
                                                    observations=observations)]

    def predict(self, frames: Sequence[Atoms], *, forces: bool = True) -> Prediction:
        """Energies (and forces) of new frames."""
        return self.predict_rows(self.rows(frames, forces=forces), forces=forces)

    # -- persistence (no pickles) -----------------------------------------
    def save(self, directory) -> None:
        """Write ``model.json`` (hypers) and ``arrays.npz`` (L, β, sparse vectors)."""
        directory = output_folder(directory, what="model folder")
        arrays = {"L": self.L, "beta": self.beta}
        for z in self.sparse.species:
            arrays[f"sparse_vectors_{z}"] = self.sparse.vectors[z]
            arrays[f"sparse_locations_{z}"] = np.asarray(self.sparse.locations[z], dtype=np.int64)
        with atomic_output(directory / "arrays.npz", suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        meta = {
            "format": MODEL_FORMAT, "engine": "builtin", "descriptor": self.soap.to_dict(),
            "kernel": self.kernel.to_dict(), "noise": self.noise.to_dict(), "e0": self.e0,
            "jitter": self.jitter, "observations": list(self.observations),
            "species": list(self.sparse.species), "meta": self.meta,
        }
        atomic_write_text(directory / "model.json", json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory) -> "GPRModel":
        directory = Path(directory)
        try:
            meta = json.loads((directory / "model.json").read_text())
        except FileNotFoundError:
            raise InputError(f"{directory} is not a model directory (no model.json)") from None
        if meta.get("format") != MODEL_FORMAT or meta.get("engine") != "builtin":
            raise InputError(f"{directory}/model.json is not a built-in mlipdoe model")
        with np.load(directory / "arrays.npz", allow_pickle=False) as npz:
            species = tuple(int(z) for z in meta["species"])
            sparse = SparsePoints(species, {z: npz[f"sparse_vectors_{z}"] for z in species},
                                  {z: npz[f"sparse_locations_{z}"] for z in species}, [])
            L, beta = npz["L"], npz["beta"]
        return cls(SOAP.from_dict(meta["descriptor"]), Kernel.from_dict(meta["kernel"]),
                   Noise.from_dict(meta["noise"]), sparse, L, beta, float(meta["e0"]), float(meta["jitter"]),
                   tuple(meta["observations"]), meta.get("meta", {}))


# ---------------------------------------------------------------------------
# fitting
# ---------------------------------------------------------------------------
def label_vectors(rows: Sequence[ObservationRows], labels: Labels, e0: float) -> list[np.ndarray]:
    """Observed values in each frame's row order: E_s − e0 n_s, then forces (atom-major)."""
    out = []
    for k, r in enumerate(rows):
        y = [np.array([labels.energy[k] - e0 * labels.n_atoms[k]])]
        if np.any(r.kind == "force"):
            if labels.forces is None:
                raise ConfigurationError("the rows carry force rows but the labels have no forces")
            y.append(np.asarray(labels.forces[k], dtype=float).reshape(-1))
        if np.any(r.kind == "virial"):
            raise ConfigurationError("virial labels are not read by the built-in fit")
        out.append(np.concatenate(y))
    return out


def fit_from_rows(rows: Sequence[ObservationRows], labels: Labels, *, e0: float | None = None) -> tuple[np.ndarray, float]:
    """β = F̃⁻¹ Σ_s Ψ_sᵀ Λ_s⁻¹ y_s (spec section 2, whitened) on the model layer's rows.

    Parameters
    ----------
    rows : list of ObservationRows
        Whitened rows per training frame (energy, optionally forces), with their noise.
    labels : Labels
        Labels of the same frames, in the same order.
    e0 : float, optional
        Per-atom offset; default :func:`average_e0` of the labels.

    Returns
    -------
    beta : (M,) array
    e0 : float
    """
    if len(rows) == 0:
        raise InputError("cannot fit on an empty training set")
    if e0 is None:
        e0 = average_e0(labels)
    try:
        beta = posterior_mean(rows, label_vectors(rows, labels, e0), rows[0].psi.shape[1])
    except np.linalg.LinAlgError:
        raise NumericalError("the whitened information matrix is not positive definite") from None
    return beta, float(e0)


def fit_gpr(frames: Sequence[Atoms], labels: Labels | None = None, *, soap: SOAP, kernel: Kernel = Kernel(),
            noise: Noise = Noise(), sparse: SparsePoints, use_forces: bool = True,
            energy_key: str = "energy", forces_key: str = "force") -> GPRModel:
    """Fit the built-in sparse GPR on ``frames`` with the given sparse points.

    Parameters
    ----------
    frames : list of ase.Atoms
        Training frames (labels read by :func:`read_labels` unless ``labels`` given).
    sparse : SparsePoints
        Sparse points (e.g. of a design record's pool).
    use_forces : bool
        Fit force labels too (when the labels have them).
    """
    if labels is None:
        labels = read_labels(frames, energy_key=energy_key, forces_key=forces_key)
    use_forces = use_forces and labels.forces is not None
    if soap.species is None:
        soap = soap.with_species(sparse.species)
    t0 = time.perf_counter()
    L, jitter = cholesky_with_jitter(sparse.kernel_matrix(kernel))
    obs = ("energy", "forces") if use_forces else ("energy",)
    rows = [r for _, r in iter_observation_rows(make_descriptor(soap), list(frames), sparse=sparse, kernel=kernel,
                                                L=L, noise=noise, observations=obs,
                                                config_types=labels.config_types)]
    beta, e0 = fit_from_rows(rows, labels)
    return GPRModel(soap, kernel, noise, sparse, L, beta, e0, jitter, obs,
                    {"n_train": len(frames), "fit_seconds": round(time.perf_counter() - t0, 3)})


# ---------------------------------------------------------------------------
# gap_fit bridge
# ---------------------------------------------------------------------------
def _gap_string(soap: SOAP, kernel: Kernel, z: int, n_sparse: int, index_file: str) -> str:
    species = " ".join(str(s) for s in soap.species)
    return (f"soap cutoff={soap.cutoff} cutoff_transition_width={soap.cutoff_transition_width} "
            f"n_max={soap.n_max} l_max={soap.l_max} atom_sigma={soap.atom_sigma} zeta={kernel.zeta} "
            f"delta={kernel.delta} covariance_type=dot_product n_species={len(soap.species)} "
            f"species_Z={{{species}}} Z={z} n_sparse={n_sparse} sparse_method=index_file "
            f"sparse_file={index_file}")


@dataclass
class GapFitModel:
    """A potential written by the real ``gap_fit``; predicts via quippy."""

    directory: Path
    meta: dict

    def predict(self, frames: Sequence[Atoms], *, forces: bool = True, **_) -> Prediction:
        from quippy.potential import Potential

        pot = Potential(param_filename=str(self.directory / "gp.xml"))
        energies, flist = [], []
        for atoms in frames:
            a = atoms.copy()
            a.calc = pot
            energies.append(a.get_potential_energy())
            if forces:
                flist.append(np.array(a.get_forces()))
        return Prediction(np.array(energies), flist if forces else None, np.array([len(a) for a in frames]))

    @classmethod
    def load(cls, directory) -> "GapFitModel":
        directory = Path(directory)
        meta = json.loads((directory / "model.json").read_text())
        return cls(directory, meta)


def fit_gap_fit(frames: Sequence[Atoms], labels: Labels | None = None, *, soap: SOAP, kernel: Kernel = Kernel(),
                noise: Noise = Noise(), sparse_frames: Sequence[Atoms] = (), sparse_locations: Sequence = (),
                output, use_forces: bool = True, energy_key: str = "energy", forces_key: str = "force",
                executable: str = "gap_fit", timeout: float = 3600) -> GapFitModel:
    """Run the real ``gap_fit`` (quippy-ase) with the built-in fit's hypers and sparse points.

    ``sparse_locations`` are ``[k, atom]`` pairs into ``sparse_frames``. Frames holding
    sparse points that are not training frames are appended with a per-frame
    ``energy_sigma`` of 1e3 eV, their energy set to e0·n (so the average e0 is unchanged)
    and no forces, so they carry the sparse points but (practically) no data. gap_fit's ``sparse_method=index_file`` then gets, per centre
    species, the 1-based indices of those atoms among that species' atoms in file order.
    """
    import ase.io

    if shutil.which(executable) is None:
        raise ConfigurationError(f"{executable!r} not found: install quippy-ase (pip install 'mlipdoe[gap]')")
    if labels is None:
        labels = read_labels(frames, energy_key=energy_key, forces_key=forces_key)
    use_forces = use_forces and labels.forces is not None
    if soap.species is None:
        soap = soap.with_species(sorted({int(z) for a in frames for z in a.numbers}))
    output = output_folder(output, what="gap_fit folder")
    e0 = average_e0(labels)
    train = []
    for k, atoms in enumerate(frames):
        a = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        a.info["energy"] = float(labels.energy[k])
        a.info["config_type"] = labels.config_types[k]
        if use_forces:
            a.arrays["force"] = labels.forces[k]
        train.append(a)
    # map sparse points to frames of the file (reuse identical training frames)
    key = lambda a: (a.numbers.tobytes(), np.round(a.positions, 8).tobytes(), np.round(a.cell.array, 8).tobytes())  # noqa: E731
    where = {key(a): k for k, a in enumerate(train)}
    file_loc = []
    for f, atom in np.asarray(sparse_locations, dtype=np.int64).reshape(-1, 2):
        src = sparse_frames[int(f)]
        k = where.get(key(src))
        if k is None:
            a = Atoms(src.numbers, src.positions, cell=src.cell, pbc=src.pbc)
            a.info["energy"] = e0 * len(a)
            a.info["energy_sigma"] = 1e3
            a.info["config_type"] = "sparse_carrier"      # no forces: carries sparse points only
            train.append(a)
            k = where[key(src)] = len(train) - 1
        file_loc.append((k, int(atom)))
    if not file_loc:
        raise InputError("gap_fit needs sparse points (from a design record)")
    # per-species 1-based index of each atom among that species' atoms in file order
    gaps = []
    for z in soap.species:
        counter, idx = 0, {}
        for k, a in enumerate(train):
            for i in np.flatnonzero(a.numbers == z):
                counter += 1
                idx[(k, int(i))] = counter
        chosen = sorted(idx[(k, i)] for k, i in file_loc if train[k].numbers[i] == z)
        if not chosen:
            continue
        fname = f"sparse_index_{z}.txt"
        atomic_write_text(output / fname, "\n".join(str(c) for c in chosen) + "\n")
        gaps.append(_gap_string(soap, kernel, z, len(chosen), fname))
    ase.io.write(output / "train.xyz", train, format="extxyz")
    sig = f"{{{noise.energy} {noise.force} {noise.virial} 0.0}}"
    cmd = [executable, "at_file=train.xyz", "gap={" + " : ".join(gaps) + "}", f"default_sigma={sig}",
           "e0_method=average", "energy_parameter_name=energy", "force_parameter_name=force",
           "sigma_parameter_name=sigma",
           f"sigma_per_atom={'T' if noise.per_atom else 'F'}", "sparse_jitter=1e-8", "gp_file=gp.xml"]
    seconds = run_gap_fit(cmd[1:], cwd=output, executable=executable, timeout=timeout)
    meta = {"format": MODEL_FORMAT, "engine": "gap_fit", "command": cmd, "descriptor": soap.to_dict(),
            "kernel": kernel.to_dict(), "noise": noise.to_dict(), "e0_average": e0,
            "n_train": len(frames), "n_carrier_frames": len(train) - len(frames),
            "fit_seconds": round(seconds, 3)}
    atomic_write_text(output / "model.json", json.dumps(meta, indent=1))
    return GapFitModel(output, meta)


def run_gap_fit(args: Sequence[str], *, cwd: Path, executable: str = "gap_fit", timeout: float = 3600) -> float:
    """Run ``gap_fit`` with ``args`` in ``cwd`` (log in ``gap_fit.log``); return the wall time (s)."""
    if shutil.which(executable) is None:
        raise ConfigurationError(f"{executable!r} not found: install quippy-ase (pip install 'mlipdoe[gap]')")
    cmd = [executable, *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    atomic_write_text(Path(cwd) / "gap_fit.log", proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise NumericalError(f"gap_fit failed (exit {proc.returncode}): {' | '.join(tail)}")
    return time.perf_counter() - t0


def _labelled_copy(atoms: Atoms, labels: Labels, k: int, names: dict, use_forces: bool) -> Atoms:
    """``atoms`` with its labels under gap_fit's parameter names (and gap_fit's per-frame sigmas kept)."""
    from .model.gap_quippy import FORCE_ATOM_SIGMA_KEY, FRAME_SIGMA_KEYS

    a = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    a.info[names["energy"]] = float(labels.energy[k])
    if labels.config_types[k] is not None:
        a.info[names["config_type"]] = labels.config_types[k]
    for key in FRAME_SIGMA_KEYS.values():
        if key in atoms.info:
            a.info[key] = float(atoms.info[key])
    if FORCE_ATOM_SIGMA_KEY in atoms.arrays:
        a.arrays[FORCE_ATOM_SIGMA_KEY] = np.asarray(atoms.arrays[FORCE_ATOM_SIGMA_KEY], dtype=float)
    if use_forces:
        a.arrays[names["force"]] = np.asarray(labels.forces[k], dtype=float)
    return a


def write_gap_fit_training(frames: Sequence[Atoms], labels: Labels, spec, path, *, use_forces: bool = True) -> None:
    """``frames`` with ``labels`` under gap_fit's parameter names of ``spec``, as extxyz at ``path`` (atomic)."""
    import ase.io

    names = gap_fit_label_names(spec)
    train = [_labelled_copy(a, labels, k, names, use_forces and labels.forces is not None)
             for k, a in enumerate(frames)]
    with atomic_output(path, suffix=".xyz") as tmp:
        ase.io.write(tmp, train, format="extxyz")


def _gap_fit_notes(log_path: Path) -> list[str]:
    """What gap_fit changed from what it was asked (its own warnings), one line each."""
    notes = []
    for line in log_path.read_text(errors="replace").splitlines():
        if "number of sparse points changed to" in line:
            notes.append("gap_fit lowered n_sparse to the number of environments in the training set")
    return notes


def fit_gap_fit_exact(frames: Sequence[Atoms], labels: Labels, model, *, output, use_forces: bool = True,
                      timeout: float = 3600) -> GapFitModel:
    """Train the real gap_fit on ``frames`` with exactly the model of a GAP-exact design.

    ``model`` is a :class:`~mlipdoe.model.gap_quippy.GapExactModel` (e.g. from
    :func:`mlipdoe.api.model_from_record`); its sparse points are handed over in gap_fit's
    FILE format and its gap_fit arguments are used as they are (:mod:`mlipdoe.export`).
    """
    import shlex

    from .export import write_gap_fit_inputs

    output = output_folder(output, what="gap_fit folder")
    write_gap_fit_training(frames, labels, model.spec, output / "train.xyz", use_forces=use_forces)
    args = write_gap_fit_inputs(model, output)
    seconds = run_gap_fit([*shlex.split(args), "at_file=train.xyz", "gp_file=gp.xml"], cwd=output, timeout=timeout)
    meta = {"format": MODEL_FORMAT, "engine": "gap_fit", "gap_fit_args": args, "n_train": len(frames),
            "sparse_points": "design", "fit_seconds": round(seconds, 3), "notes": _gap_fit_notes(output / "gap_fit.log")}
    atomic_write_text(output / "model.json", json.dumps(meta, indent=1))
    return GapFitModel(output, meta)


def fit_gap_fit_own(frames: Sequence[Atoms], labels: Labels, spec, *, output, use_forces: bool = True,
                    timeout: float = 3600) -> GapFitModel:
    """Train the real gap_fit on ``frames`` with the user's arguments ``spec`` as they are.

    gap_fit chooses its own sparse points among the training frames (``sparse_method`` of
    ``spec``), as a user's run does. Where gap_fit lowers ``n_sparse`` to the number of
    environments it has, ``meta["notes"]`` says so.
    """
    import shlex

    output = output_folder(output, what="gap_fit folder")
    write_gap_fit_training(frames, labels, spec, output / "train.xyz", use_forces=use_forces)
    args = spec.template_args()
    seconds = run_gap_fit([*shlex.split(args), "at_file=train.xyz", "gp_file=gp.xml"], cwd=output, timeout=timeout)
    meta = {"format": MODEL_FORMAT, "engine": "gap_fit", "gap_fit_args": args, "n_train": len(frames),
            "sparse_points": "gap_fit", "fit_seconds": round(seconds, 3), "notes": _gap_fit_notes(output / "gap_fit.log")}
    atomic_write_text(output / "model.json", json.dumps(meta, indent=1))
    return GapFitModel(output, meta)


def gap_fit_label_names(spec) -> dict:
    """The info/arrays keys gap_fit reads labels from (``*_parameter_name``, gap_fit's defaults)."""
    opts = spec.label_options
    return {"energy": opts.get("energy_parameter_name", "energy"), "force": opts.get("force_parameter_name", "force"),
            "config_type": opts.get("config_type_parameter_name", "config_type")}


def gap_fit_e0(spec, labels: Labels) -> float:
    """gap_fit's per-atom energy offset for these labels: ``e0`` if given, else by ``e0_method``.

    ``average``: the mean of E_s / n_s (:func:`average_e0`); ``isolated`` (gap_fit's default):
    the energy of the single-atom training frame — gap_fit aborts without one per species, and
    so does this. ``e0_offset`` is added. One e0 for all species only.
    """
    opts = spec.label_options
    if "e0" in opts:
        try:
            e0 = float(opts["e0"])
        except ValueError:
            raise ConfigurationError(f"e0={opts['e0']}: the built-in fit takes one e0 for all species; use "
                                     "--engine gap_fit for per-species e0") from None
    elif str(opts.get("e0_method", "isolated")).lower() == "average":
        e0 = average_e0(labels)
    else:
        single = [labels.energy[k] for k in range(len(labels.energy)) if labels.n_atoms[k] == 1]
        if len(single) != 1:
            raise ConfigurationError(
                f"e0_method=isolated (gap_fit's default) needs one single-atom training frame, found {len(single)} "
                "(gap_fit aborts the same way): give e0=… or e0_method=average in the gap_fit arguments")
        e0 = float(single[0])
    return e0 + float(opts.get("e0_offset", 0.0))


@dataclass
class GapExactGPR:
    """The built-in fit on a GAP-exact model: β on the model's whitened rows."""

    model: object
    beta: np.ndarray
    e0: float
    observations: tuple = ("energy",)
    meta: dict = field(default_factory=dict)

    @property
    def M(self) -> int:
        return len(self.beta)

    def predict(self, frames: Sequence[Atoms], *, forces: bool = True) -> Prediction:
        obs = ("energy", "forces") if forces else ("energy",)
        return predict_rows(self.model.observation_rows(list(frames), observations=obs), self.beta, self.e0,
                            forces=forces)

    def save(self, directory) -> None:
        """``model.json`` (the gap_fit arguments) and ``arrays.npz`` (L, β, sparse points)."""
        directory = output_folder(directory, what="model folder")
        sp = self.model.sparse
        arrays = {"L": self.model.L, "beta": self.beta}
        for k in range(len(sp.labels)):
            arrays[f"sparse_vectors_{k}"] = sp.vectors[k]
            arrays[f"sparse_cutoffs_{k}"] = sp.cutoffs[k]
            arrays[f"sparse_locations_{k}"] = sp.locations[k]
        with atomic_output(directory / "arrays.npz", suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        meta = {"format": MODEL_FORMAT, "engine": "builtin-gap_fit", "gap_fit": self.model.spec.to_dict(),
                "species": list(sp.species), "e0": self.e0, "jitter": self.model.jitter,
                "observations": list(self.observations), "meta": self.meta}
        atomic_write_text(directory / "model.json", json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory, meta: dict) -> "GapExactGPR":
        from .gap_spec import GapFitSpec
        from .model.gap_quippy import row_model

        spec = GapFitSpec.from_dict(meta["gap_fit"])
        with np.load(Path(directory) / "arrays.npz", allow_pickle=False) as npz:
            n = sum(1 for key in npz.files if key.startswith("sparse_vectors_"))
            parts = [[npz[f"sparse_{what}_{k}"] for k in range(n)] for what in ("vectors", "cutoffs", "locations")]
            L, beta = npz["L"], npz["beta"]
        model = row_model(spec, meta["species"], *parts, L=L, jitter=float(meta["jitter"]))
        return cls(model, beta, float(meta["e0"]), tuple(meta["observations"]), meta.get("meta", {}))


def fit_gap_exact(frames: Sequence[Atoms], labels: Labels, model, *, use_forces: bool = True) -> GapExactGPR:
    """The built-in posterior mean on a GAP-exact model's rows of ``frames`` (what gap_fit computes)."""
    use_forces = use_forces and labels.forces is not None
    obs = ("energy", "forces") if use_forces else ("energy",)
    t0 = time.perf_counter()
    rows = model.observation_rows(list(frames), observations=obs, config_types=labels.config_types)
    beta, e0 = fit_from_rows(rows, labels, e0=gap_fit_e0(model.spec, labels))
    return GapExactGPR(model, beta, e0, obs, {"n_train": len(frames), "fit_seconds": round(time.perf_counter() - t0, 3)})


def predict_rows(rows: Sequence[ObservationRows], beta: np.ndarray, e0: float, *, forces: bool = True) -> Prediction:
    """Predictions ψ β (+ e0 n) from whitened rows of each frame."""
    n_atoms = np.array([r.n_atoms for r in rows], dtype=np.int64)
    energy = np.array([r.psi[0] @ beta for r in rows]) + e0 * n_atoms
    f = [(r.psi[r.kind == "force"] @ beta).reshape(-1, 3) for r in rows] if forces else None
    return Prediction(energy, f, n_atoms)


def load_model(directory):
    """A :class:`GPRModel`, :class:`GapExactGPR` or :class:`GapFitModel` from a model directory."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / "model.json").read_text())
    except FileNotFoundError:
        raise InputError(f"{directory} is not a model directory (no model.json)") from None
    if meta.get("engine") == "gap_fit":
        return GapFitModel.load(directory)
    if meta.get("engine") == "builtin-gap_fit":
        return GapExactGPR.load(directory, meta)
    return GPRModel.load(directory)


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------
@dataclass
class ErrorTable:
    """Test errors, overall and per config_type.

    ``rows``: list of dicts with group, n_frames, energy_rmse/energy_mae (eV/atom),
    force_rmse/force_mae (eV/Å per component; NaN without forces).
    """

    rows: list

    def overall(self) -> dict:
        return self.rows[0]


def _errors(pred_e, ref_e, n, pred_f, ref_f) -> dict:
    de = (pred_e - ref_e) / n
    out = {"n_frames": int(len(de)), "energy_rmse": float(np.sqrt(np.mean(de**2))) if len(de) else np.nan,
           "energy_mae": float(np.mean(np.abs(de))) if len(de) else np.nan}
    if pred_f is not None and ref_f is not None and len(pred_f):
        d = np.concatenate([(p - r).reshape(-1) for p, r in zip(pred_f, ref_f)])
        out["force_rmse"] = float(np.sqrt(np.mean(d**2)))
        out["force_mae"] = float(np.mean(np.abs(d)))
    else:
        out["force_rmse"] = out["force_mae"] = float("nan")
    return out


def evaluate(prediction: Prediction, labels: Labels) -> ErrorTable:
    """Energy RMSE/MAE per atom and force RMSE/MAE per component, overall and per config_type."""
    rows = [{"group": "all", **_errors(prediction.energy, labels.energy, labels.n_atoms, prediction.forces,
                                       labels.forces)}]
    cts = np.array(labels.config_types)
    for ct in sorted(set(labels.config_types)):
        idx = np.flatnonzero(cts == ct)
        pf = [prediction.forces[i] for i in idx] if prediction.forces is not None else None
        rf = [labels.forces[i] for i in idx] if labels.forces is not None else None
        rows.append({"group": ct, **_errors(prediction.energy[idx], labels.energy[idx], labels.n_atoms[idx], pf, rf)})
    return ErrorTable(rows)


def parity_plot(prediction: Prediction, labels: Labels, path, *, title: str = "") -> None:
    """Energy-per-atom and force-component parity plots in one PNG (atomic, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import save_figure

    n_panels = 2 if (prediction.forces is not None and labels.forces is not None) else 1
    fig, axes = plt.subplots(1, n_panels, figsize=(5 * n_panels, 4.5), squeeze=False)
    ax = axes[0, 0]
    cts = np.array(labels.config_types)
    for ct in sorted(set(labels.config_types)):
        idx = np.flatnonzero(cts == ct)
        ax.scatter(labels.energy[idx] / labels.n_atoms[idx], prediction.energy[idx] / labels.n_atoms[idx], s=12,
                   label=ct)
    lo, hi = ax.get_xlim()
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.set_xlabel("reference energy (eV/atom)")
    ax.set_ylabel("predicted energy (eV/atom)")
    if len(set(labels.config_types)) <= 12:
        ax.legend(fontsize=7)
    if n_panels == 2:
        ax = axes[0, 1]
        ref = np.concatenate([f.reshape(-1) for f in labels.forces])
        pred = np.concatenate([f.reshape(-1) for f in prediction.forces])
        ax.scatter(ref, pred, s=3, alpha=0.5)
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set_xlabel("reference force (eV/Å)")
        ax.set_ylabel("predicted force (eV/Å)")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


# ---------------------------------------------------------------------------
# engine agreement (built-in vs gap_fit)
# ---------------------------------------------------------------------------
def quippy_soap_descriptors(frames: Sequence[Atoms], soap: SOAP) -> AtomicDescriptors:
    """quippy's (GAP's own) unit SOAP vectors of ``frames`` in the descriptor container.

    The same container as featomic's, so the model layer computes the rows on them.
    """
    from quippy.descriptors import Descriptor

    species = " ".join(str(z) for z in soap.species)
    blocks = {}
    for z in soap.species:
        d = Descriptor(f"soap cutoff={soap.cutoff} cutoff_transition_width={soap.cutoff_transition_width} "
                       f"n_max={soap.n_max} l_max={soap.l_max} atom_sigma={soap.atom_sigma} "
                       f"n_species={len(soap.species)} species_Z={{{species}}} Z={z}")
        values, frame, atom = [], [], []
        for k, atoms in enumerate(frames):
            where = np.flatnonzero(atoms.numbers == z)
            if len(where):
                values.append(np.asarray(d.calc(atoms)["data"], dtype=np.float64))
                frame.append(np.full(len(where), k))
                atom.append(where)
        if values:
            X = np.concatenate(values)
            blocks[int(z)] = SpeciesBlock(X, np.linalg.norm(X, axis=1), np.concatenate(frame), np.concatenate(atom))
    return AtomicDescriptors(blocks, len(frames))


def compare_engines(train: Sequence[Atoms], test: Sequence[Atoms], *, soap: SOAP, kernel: Kernel = Kernel(),
                    noise: Noise = Noise(), n_sparse: int = 50, output, energy_key: str = "energy",
                    forces_key: str = "force") -> dict:
    """Built-in fit vs gap_fit on the same frames, hypers and sparse points.

    Two comparisons: (1) energies + forces, built-in on featomic SOAP vs gap_fit;
    (2) energies only, built-in on quippy's SOAP vectors vs gap_fit — the same
    descriptors, so any difference is the fitting maths.

    Returns
    -------
    dict with test energy RMSEs (eV/atom) and rms prediction differences (eV/atom, eV/Å).
    """
    from .model import build_model

    train_labels = read_labels(train, energy_key=energy_key, forces_key=forces_key)
    test_labels = read_labels(test, energy_key=energy_key, forces_key=forces_key)
    model = build_model(train, soap=soap, kernel=kernel, noise=noise, n_sparse=n_sparse)
    soap, sparse, locs = model.soap, model.sparse, model.sparse.location_list()
    ours = fit_gpr(train, train_labels, soap=soap, kernel=kernel, noise=noise, sparse=sparse)
    gap = fit_gap_fit(train, train_labels, soap=soap, kernel=kernel, noise=noise, sparse_frames=train,
                      sparse_locations=locs, output=Path(output) / "gap_fit_ef")
    po, pg = ours.predict(test), gap.predict(test)
    n = test_labels.n_atoms
    res = {
        "featomic_energy_rmse": float(np.sqrt(np.mean(((po.energy - test_labels.energy) / n) ** 2))),
        "gap_fit_energy_rmse": float(np.sqrt(np.mean(((pg.energy - test_labels.energy) / n) ** 2))),
        "featomic_vs_gap_fit_energy": float(np.sqrt(np.mean(((po.energy - pg.energy) / n) ** 2))),
    }
    if po.forces is not None and pg.forces is not None and test_labels.forces is not None:
        res["featomic_force_rmse"] = float(np.sqrt(np.mean(np.concatenate(
            [(a - b).ravel() for a, b in zip(po.forces, test_labels.forces)]) ** 2)))
        res["gap_fit_force_rmse"] = float(np.sqrt(np.mean(np.concatenate(
            [(a - b).ravel() for a, b in zip(pg.forces, test_labels.forces)]) ** 2)))
        res["featomic_vs_gap_fit_force"] = float(np.sqrt(np.mean(np.concatenate(
            [(a - b).ravel() for a, b in zip(po.forces, pg.forces)]) ** 2)))
    # (2) identical descriptors: quippy SOAP in the built-in solver, energies only
    qtrain, qtest = quippy_soap_descriptors(train, soap), quippy_soap_descriptors(test, soap)

    def vector_at(f, a):
        block = qtrain.blocks[int(train[f].numbers[a])]
        return block.values[np.flatnonzero((block.frame == f) & (block.atom == a))[0]]

    Zs = {z: np.array([vector_at(f, a) for f, a in sparse.locations[z]]) for z in sparse.species}
    qsparse = SparsePoints(sparse.species, Zs, sparse.locations, [])
    L, _ = cholesky_with_jitter(qsparse.kernel_matrix(kernel))

    def rows(desc, frames):
        psi = whiten(L, chunk_energy_rows(desc, qsparse, kernel))
        return [observation_block(noise, len(a), a.info.get("config_type"), p) for a, p in zip(frames, psi)]

    energy_only = Labels(train_labels.energy, None, train_labels.n_atoms, train_labels.config_types)
    beta, e0 = fit_from_rows(rows(qtrain, train), energy_only)
    pq = np.array([r.psi[0] @ beta for r in rows(qtest, test)]) + e0 * n
    gap_e = fit_gap_fit(train, energy_only, soap=soap, kernel=kernel, noise=noise, sparse_frames=train,
                        sparse_locations=locs, output=Path(output) / "gap_fit_e", use_forces=False)
    pge = gap_e.predict(test, forces=False).energy
    res["quippy_soap_energy_rmse"] = float(np.sqrt(np.mean(((pq - test_labels.energy) / n) ** 2)))
    res["quippy_soap_vs_gap_fit_energy"] = float(np.sqrt(np.mean(((pq - pge) / n) ** 2)))
    return res
