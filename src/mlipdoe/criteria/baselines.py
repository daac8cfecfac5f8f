"""Descriptor-space baselines: farthest-point sampling and CUR on mean-pooled SOAP.

Both work on one vector per frame, the mean over its atoms of the unit SOAP vectors
(concatenated per centre species, then normalised to unit length) — the usual
"structure descriptor" of FPS/CUR training-set selection (e.g. skmatter, ASAP).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..descriptors import iter_descriptors, make_descriptor
from .base import Criterion, ExistingRows
from .maximin import SpaceFilling, normalise_rows


def mean_pooled_descriptors(frames, soap, *, chunk_size: int = 100) -> np.ndarray:
    """Unit-normalised mean-pooled SOAP vector of each frame.

    Parameters
    ----------
    frames : sequence of ase.Atoms
    soap : SOAP
        Hyperparameters (species must cover the frames).
    chunk_size : int
        Frames per descriptor call.

    Returns
    -------
    (n_frames, n_species · D) array
        x̄_s = [Σ_{i∈s, Z_i=z} x_i]_z / n_s, then scaled to ‖x̄_s‖ = 1.
    """
    frames = list(frames)
    descriptor = make_descriptor(soap)
    species = list(soap.species) if soap.species is not None else sorted(
        {int(z) for a in frames for z in np.unique(a.numbers)})
    out = None
    for first, desc in iter_descriptors(descriptor, frames, chunk_size=chunk_size):
        D = desc.dimension
        if out is None:
            out = np.zeros((len(frames), len(species) * D))
        for z, block in desc.blocks.items():
            k = species.index(int(z))
            np.add.at(out, (first + block.frame, slice(k * D, (k + 1) * D)), block.values)
    n = np.array([len(a) for a in frames], dtype=float)
    return normalise_rows(out / n[:, None])


class _DescriptorBaseline:
    """Mixin: pool vectors given (``vectors``) or computed from ``frames`` at initialise."""

    def _setup(self, vectors, frames, soap, existing, existing_vectors):
        self.vectors = None if vectors is None else normalise_rows(vectors)
        self.frames = frames
        self.soap = soap
        self.existing = existing
        self.existing_vectors = None if existing_vectors is None else normalise_rows(existing_vectors)

    def _descriptor_vectors(self, model) -> tuple[np.ndarray, np.ndarray]:
        from ..exceptions import ConfigurationError

        soap = self.soap or model.soap
        if self.vectors is None:
            if self.frames is None:
                raise ConfigurationError(f"criterion {self.name!r} needs the pool frames or their vectors")
            self.vectors = mean_pooled_descriptors(self.frames, soap)
        if len(self.vectors) != model.n_frames:
            raise ConfigurationError(f"{len(self.vectors)} descriptor vectors for a pool of {model.n_frames} frames")
        if self.existing_vectors is None:
            if self.existing is not None and self.existing.frames:
                self.existing_vectors = mean_pooled_descriptors(self.existing.frames, soap)
            else:
                self.existing_vectors = np.empty((0, self.vectors.shape[1]))
        return self.vectors, self.existing_vectors


class FarthestPointSampling(_DescriptorBaseline, SpaceFilling):
    """``fps``: maximin Euclidean distance between mean-pooled unit SOAP vectors
    (farthest-point sampling, Gonzalez 1985; as ``skmatter.sample_selection.FPS``).

    Greedy on this criterion picks, after the first frame (lowest index, or the fixed
    ones), the frame farthest from the design: exactly FPS. Update and cost: see
    :class:`~mlipdoe.criteria.maximin.SpaceFilling`, O(N D) per pick.

    Options: ``vectors`` (N, D) precomputed, or ``frames`` (+ ``soap``, default the
    model's) to compute them with :func:`mean_pooled_descriptors`; ``existing``
    (its ``frames``) or ``existing_vectors``.
    """

    name = "fps"

    def __init__(self, *, vectors=None, frames=None, soap=None, existing: ExistingRows | None = None,
                 existing_vectors=None):
        SpaceFilling.__init__(self)
        self._setup(vectors, frames, soap, existing, existing_vectors)

    def _vectors(self, model):
        return self._descriptor_vectors(model)


class CURSelection(_DescriptorBaseline, Criterion):
    """``cur``: captured variance ‖X P_S‖_F² of the pool's mean-pooled SOAP matrix X (N × D),
    P_S the orthogonal projector onto the span of the design's vectors.

    Greedy on it is deterministic column(-row)-subset CUR: each pick is the frame whose
    residual direction e_c = r_c/‖r_c‖ (r_c = x_c projected off the span) carries the
    most remaining variance, gain = r_cᵀ XᵀX r_c / ‖r_c‖² — the rank-adaptive form of
    leverage-score CUR (Mahoney & Drineas 2009; greedy CSSP, Farahat et al. 2011), in
    place of skmatter's top-k-singular-vector leverage score.

    Incremental update: keep the residual matrix R = X (I − P_S) (N × D); adding i
    appends e = r_i/‖r_i‖ and R ← R − (R e) eᵀ (O(N D)); gains of all candidates cost
    O(N D²) (one product with G = XᵀX). Removing rebuilds by Gram–Schmidt
    (O(|S| N D)). Frames already in the span gain 0. Not submodular in general.
    """

    name = "cur"
    span_tol = 1e-14
    _state_attrs = ("members", "_R", "_basis", "_value")

    def __init__(self, *, vectors=None, frames=None, soap=None, existing: ExistingRows | None = None,
                 existing_vectors=None):
        Criterion.__init__(self)
        self._setup(vectors, frames, soap, existing, existing_vectors)

    def initialize(self, model, *, fixed: Sequence[int] = (), seed: int = 0) -> "CURSelection":
        self.model = model
        self.seed = int(seed)
        self.fixed = [int(f) for f in fixed]
        self.members = []
        X, extra = self._descriptor_vectors(model)
        self._G = X.T @ X
        self._extra = extra
        self._rebuild()
        return self

    def _rebuild(self) -> None:
        X = self.vectors
        self._R = X.copy()
        self._basis = []
        self._value = 0.0
        for v in list(self._extra) + [X[i] for i in self.fixed + self.members]:
            self._append(v)

    def _append(self, v: np.ndarray) -> float:
        r = v - sum((float(e @ v) * e for e in self._basis), np.zeros_like(v))
        r = r - sum((float(e @ r) * e for e in self._basis), np.zeros_like(v))  # re-orthogonalise
        nr2 = float(r @ r)
        if nr2 < self.span_tol:
            return 0.0
        e = r / np.sqrt(nr2)
        self._basis.append(e)
        self._R -= np.outer(self._R @ e, e)
        delta = float(e @ self._G @ e)
        self._value += delta
        return delta

    def gains(self, candidates: np.ndarray) -> np.ndarray:
        R = self._R[np.asarray(candidates, dtype=np.int64)]
        nr2 = np.einsum("ij,ij->i", R, R)
        num = np.einsum("ij,ij->i", R @ self._G, R)
        return np.where(nr2 < self.span_tol, 0.0, num / np.where(nr2 < self.span_tol, 1.0, nr2))

    def add(self, index: int) -> float:
        index = int(index)
        delta = self._append(self.vectors[index])
        self.members.append(index)
        return delta

    remove = Criterion._remove_by_rebuild

    def value(self) -> float:
        return self._value
