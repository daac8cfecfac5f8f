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

    Only the independent components are computed: within one neighbour species
    p_{n₁n₂l} = p_{n₂n₁l}, so those blocks keep n₁ ≤ n₂ with the n₁ < n₂ components
    times √2 (featomic's blocks of two different species already carry √2). Dot
    products and norms, hence every kernel value, are those of the full power spectrum,
    while the vectors and their gradients are 44 % shorter for n_max = 8, l_max = 6
    (252 of 448 components for one species); featomic computes only the selected components.

    Gradients (when requested) are stored raw, before normalisation, in
    ``SpeciesBlock.gradients[name] = (values, samples)`` with featomic's layout:
    ``"positions"``: values (n_grad, 3, D) and samples (n_grad, 3) columns
    (row in block, frame in chunk, atom); ``"strain"``: values (n_grad, 3, 3, D) and
    samples (n_grad, 1) (row in block). With one species the √2 weights are not applied to
    the gradients but given as ``SpeciesBlock.gradient_scale`` (one pass less over the
    largest array of the force pass).
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
        self._selection = independent_components(sp, soap.n_max, soap.l_max)
        self._weights: dict[int, np.ndarray] = {}

    def to_dict(self) -> dict:
        return self.soap.to_dict()

    def _merge_pairs(self, tensor, index: dict, centre: int, gradients: Sequence[str]):
        """One centre species' blocks over the fixed neighbour-pair list, weighted (class docstring).

        Returns ``(values (n, D), samples (n, 2) [frame, atom], {name: (gradient values, samples)},
        gradient_scale)`` or None when the chunk has no centre of this species. A pair missing from the chunk, or
        a sample or gradient sample missing from one pair's block, contributes zeros.
        """
        weights = self._pair_weights()
        parts = []
        for a, b in self._pairs.values.tolist():
            k = index.get((centre, a, b))
            blk = tensor.block(k) if k is not None else None
            parts.append(blk if blk is not None and blk.values.shape[0] else None)
        present = {k: blk for k, blk in enumerate(parts) if blk is not None}
        if not present:
            return None
        if len(parts) == 1:  # one species: the block itself, gradients unweighted (gradient_scale)
            blk = parts[0]
            grads = {name: (np.asarray(blk.gradient(name).values, dtype=np.float64),
                            np.asarray(blk.gradient(name).samples.values, dtype=np.int64)) for name in gradients}
            return (np.asarray(blk.values, dtype=np.float64) * weights[0],
                    np.asarray(blk.samples.values, dtype=np.int64), grads, weights[0])
        cols = np.concatenate([[0], np.cumsum([len(w) for w in weights])])
        own = {k: np.asarray(blk.samples.values, dtype=np.int64) for k, blk in present.items()}
        samples = np.unique(np.concatenate(list(own.values())), axis=0)  # (frame, atom), sorted as featomic's
        span = int(samples[:, 1].max()) + 1
        code = samples[:, 0] * span + samples[:, 1]
        row_of = {k: np.searchsorted(code, x[:, 0] * span + x[:, 1]) for k, x in own.items()}
        raw = np.zeros((len(samples), cols[-1]))
        for k, blk in present.items():
            raw[row_of[k], cols[k]:cols[k + 1]] = np.asarray(blk.values) * weights[k]
        grads = {}
        for name in gradients:
            # a gradient sample is (row, [frame, moved atom]); rows are renumbered into the merged samples
            keyed = {}
            for k, blk in present.items():
                g = blk.gradient(name)
                gs = np.asarray(g.samples.values, dtype=np.int64)
                keyed[k] = (np.column_stack([row_of[k][gs[:, 0]], gs[:, 1:]]), np.asarray(g.values))
            stacked = np.concatenate([x for x, _ in keyed.values()])
            out_samples, inverse = np.unique(stacked, axis=0, return_inverse=True)
            inverse = inverse.reshape(-1)
            tail = next(iter(keyed.values()))[1].shape[1:-1]  # (3,) positions, (3, 3) strain
            values = np.zeros((len(out_samples),) + tail + (cols[-1],))
            at = 0
            for k, (x, v) in keyed.items():
                values[inverse[at:at + len(x)], ..., cols[k]:cols[k + 1]] = v * weights[k]
                at += len(x)
            grads[name] = (values, out_samples)
        return raw, samples, grads, None

    def _pair_weights(self) -> list[np.ndarray]:
        """Per neighbour pair (fixed order) the weights of its selected components, (l, n₁, n₂) order."""
        if not self._weights:
            for k, (a, b) in enumerate(self._pairs.values.tolist()):
                n = pair_components(a == b, self.soap.n_max, self.soap.l_max)
                self._weights[k] = np.where((a == b) & (n[:, 1] < n[:, 2]), np.sqrt(2.0), 1.0)
        return [self._weights[k] for k in range(len(self._pairs))]

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
        tensor = self._calculator.compute(list(frames), gradients=list(gradients) or None,
                                          selected_properties=self._selection)
        index = {tuple(key): k for k, key in enumerate(tensor.keys.values.tolist())}
        blocks: dict[int, SpeciesBlock] = {}
        for z in self.species:
            merged = self._merge_pairs(tensor, index, z, gradients)
            if merged is None:
                continue
            raw, samples, grads, scale = merged
            norms = np.linalg.norm(raw, axis=1)
            if np.any(norms == 0):
                bad = int(np.flatnonzero(norms == 0)[0])
                raise InputError(
                    f"atom {int(samples[bad, 1])} of frame {int(samples[bad, 0])} in the chunk has no neighbour "
                    f"within the cutoff ({self.soap.cutoff} Å): its SOAP vector is zero; increase --soap-cutoff"
                )
            blocks[z] = SpeciesBlock(
                values=raw / norms[:, None], norms=norms, frame=samples[:, 0].copy(), atom=samples[:, 1].copy(),
                gradients=grads, gradient_scale=scale if gradients else None,
            )
        return AtomicDescriptors(blocks, len(frames))


def pair_components(same_species: bool, n_max: int, l_max: int) -> np.ndarray:
    """(l, n₁, n₂) of the independent components of one neighbour pair (P, 3): n₁ ≤ n₂ for one species."""
    return np.array([(ell, n1, n2) for ell in range(l_max + 1) for n1 in range(n_max) for n2 in range(n_max)
                     if not same_species or n1 <= n2], dtype=np.int32)


def independent_components(species: Sequence[int], n_max: int, l_max: int):
    """featomic ``selected_properties``: :func:`pair_components` for every (centre, pair) key."""
    from metatensor import Labels, TensorBlock, TensorMap

    keys, blocks = [], []
    for centre in species:
        for i, a in enumerate(species):
            for b in species[i:]:
                props = pair_components(a == b, n_max, l_max)
                keys.append((centre, a, b))
                blocks.append(TensorBlock(values=np.zeros((1, len(props))), samples=Labels.single(), components=[],
                                          properties=Labels(["l", "n_1", "n_2"], props)))
    return TensorMap(Labels(["center_type", "neighbor_1_type", "neighbor_2_type"], np.array(keys, dtype=np.int32)),
                     blocks)


def make_descriptor(soap: SOAP):
    """The backend object for ``soap`` (species must be resolved)."""
    soap.validate()
    if soap.backend == "featomic":
        return FeatomicSOAP(soap)
    raise ConfigurationError(f"unknown descriptor backend {soap.backend!r}")
