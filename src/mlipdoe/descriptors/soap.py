"""SOAP power spectrum with GAP-style hyperparameter names, computed by featomic."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Sequence

import numpy as np
from ase import Atoms

from ..exceptions import ConfigurationError, InputError
from .base import AtomicDescriptors, SpeciesBlock


@dataclass(frozen=True)
class SOAP:
    """SOAP hyperparameters, named as in gap_fit.

    Parameters
    ----------
    cutoff : float
        Cutoff radius (Å).
    cutoff_transition_width : float
        Width of the shifted-cosine smoothing at the cutoff (Å).
    n_max : int
        Number of radial functions (featomic ``max_radial = n_max - 1``).
    l_max : int
        Maximum angular momentum (featomic ``max_angular``).
    atom_sigma : float
        Gaussian width of the atomic density (Å).
    species : tuple of int or None
        Atomic numbers the descriptor covers (neighbour and centre species);
        ``None`` means "the species of the pool", resolved when a model is built.
    backend : str
        ``"featomic"`` (default).
    """

    cutoff: float = 5.0
    cutoff_transition_width: float = 0.5
    n_max: int = 8
    l_max: int = 6
    atom_sigma: float = 0.5
    species: tuple[int, ...] | None = None
    backend: str = "featomic"

    def __post_init__(self):
        if self.species is not None:
            object.__setattr__(self, "species", tuple(sorted({int(z) for z in self.species})))

    def validate(self) -> "SOAP":
        if not self.cutoff > 0:
            raise ConfigurationError(f"SOAP cutoff must be > 0, got {self.cutoff}")
        if not 0 <= self.cutoff_transition_width < self.cutoff:
            raise ConfigurationError("cutoff_transition_width must be in [0, cutoff)")
        if self.n_max < 1 or self.l_max < 0:
            raise ConfigurationError("n_max must be >= 1 and l_max >= 0")
        if not self.atom_sigma > 0:
            raise ConfigurationError("atom_sigma must be > 0")
        if self.backend != "featomic":
            raise ConfigurationError(f"unknown descriptor backend {self.backend!r} (available: featomic)")
        return self

    def with_species(self, species: Sequence[int]) -> "SOAP":
        return SOAP(**{**asdict(self), "species": tuple(species)})

    def featomic_hypers(self) -> dict:
        """The equivalent ``featomic.SoapPowerSpectrum`` keyword arguments."""
        return {
            "cutoff": {
                "radius": float(self.cutoff),
                "smoothing": {"type": "ShiftedCosine", "width": float(self.cutoff_transition_width)},
            },
            "density": {"type": "Gaussian", "width": float(self.atom_sigma)},
            "basis": {
                "type": "TensorProduct",
                "max_angular": int(self.l_max),
                "radial": {"type": "Gto", "max_radial": int(self.n_max) - 1},
            },
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["species"] = list(self.species) if self.species is not None else None
        # record layout of the spec: backend first
        return {"backend": d.pop("backend"), **d}

    @classmethod
    def from_dict(cls, data: dict) -> "SOAP":
        from ..hypers import check_keys

        names = {f.name for f in fields(cls)}
        check_keys(data, names, "descriptor")
        kwargs = dict(data)
        if kwargs.get("species") is not None:
            kwargs["species"] = tuple(kwargs["species"])
        return cls(**kwargs)


class FeatomicSOAP:
    """featomic ``SoapPowerSpectrum`` with per-atom unit normalisation.

    Neighbour-species pairs are moved into the properties over the *fixed* species
    list, so every chunk has the same feature layout whatever species it contains.

    Gradients (when requested) are stored raw, before normalisation, in
    ``SpeciesBlock.gradients[name] = (values, samples)`` with featomic's layout:
    ``"positions"``: values (n_grad, 3, D) and samples (n_grad, 3) columns
    (row in block, frame in chunk, atom); ``"strain"``: values (n_grad, 3, 3, D) and
    samples (n_grad, 1) (row in block).
    """

    def __init__(self, soap: SOAP):
        if soap.species is None:
            raise ConfigurationError("FeatomicSOAP needs an explicit species list")
        self.soap = soap.validate()
        self.species = soap.species
        from featomic import SoapPowerSpectrum
        from metatensor import Labels

        self._calculator = SoapPowerSpectrum(**soap.featomic_hypers())
        sp = self.species
        pairs = [(a, b) for i, a in enumerate(sp) for b in sp[i:]]
        self._pairs = Labels(["neighbor_1_type", "neighbor_2_type"], np.array(pairs, dtype=np.int32))

    def to_dict(self) -> dict:
        return self.soap.to_dict()

    def compute(self, frames: Sequence[Atoms], *, gradients: Sequence[str] = ()) -> AtomicDescriptors:
        if len(frames) == 0:
            return AtomicDescriptors({}, 0)
        for k, atoms in enumerate(frames):
            extra = set(np.unique(atoms.numbers).tolist()) - set(self.species)
            if extra:
                raise InputError(
                    f"frame {k} of the chunk contains species {sorted(extra)} that the descriptor "
                    f"does not cover (species {list(self.species)})"
                )
        tensor = self._calculator.compute(list(frames), gradients=list(gradients) or None)
        tensor = tensor.keys_to_properties(self._pairs)
        blocks: dict[int, SpeciesBlock] = {}
        for key, block in tensor.items():
            z = int(key["center_type"])
            raw = np.asarray(block.values, dtype=np.float64)
            if raw.shape[0] == 0:
                continue
            norms = np.linalg.norm(raw, axis=1)
            if np.any(norms == 0):
                bad = int(np.flatnonzero(norms == 0)[0])
                s = block.samples.values[bad]
                raise InputError(
                    f"atom {int(s[1])} of frame {int(s[0])} in the chunk has no neighbour within the "
                    f"cutoff ({self.soap.cutoff} Å): its SOAP vector is zero; increase --soap-cutoff"
                )
            samples = np.asarray(block.samples.values, dtype=np.int64)
            grads = {}
            for name in gradients:
                g = block.gradient(name)
                grads[name] = (np.asarray(g.values, dtype=np.float64), np.asarray(g.samples.values, dtype=np.int64))
            blocks[z] = SpeciesBlock(
                values=raw / norms[:, None], norms=norms, frame=samples[:, 0].copy(), atom=samples[:, 1].copy(),
                gradients=grads,
            )
        return AtomicDescriptors(blocks, len(frames))


def make_descriptor(soap: SOAP):
    """The backend object for ``soap`` (species must be resolved)."""
    soap.validate()
    if soap.backend == "featomic":
        return FeatomicSOAP(soap)
    raise ConfigurationError(f"unknown descriptor backend {soap.backend!r}")
