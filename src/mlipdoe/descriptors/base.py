"""Descriptor protocol and the containers it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import numpy as np
from ase import Atoms


@dataclass
class SpeciesBlock:
    """Descriptors of all centres of one species in a chunk of frames.

    Attributes
    ----------
    values : (n_env, D) float64
        Unit-length descriptor vectors x_i.
    norms : (n_env,) float64
        Norms |p_i| of the raw vectors before normalisation (for gradients).
    frame : (n_env,) int64
        Frame index of each centre, counted from the start of the chunk.
    atom : (n_env,) int64
        Atom index of each centre inside its frame.
    gradients : dict
        Optional raw (un-normalised) gradients, keyed by ``"positions"`` or
        ``"strain"``; the layout is the backend's and documented there.
    gradient_scale : (D,) float64 or None
        Per-component factor the stored gradients still need: ∂p/∂r = gradients × gradient_scale
        (a backend that weights components folds the weights into what multiplies the
        gradients instead of rewriting them). None means 1.
    """

    values: np.ndarray
    norms: np.ndarray
    frame: np.ndarray
    atom: np.ndarray
    gradients: dict = field(default_factory=dict)
    gradient_scale: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frame)


@dataclass
class AtomicDescriptors:
    """Per-species descriptor blocks of a chunk of ``n_frames`` frames."""

    blocks: dict[int, SpeciesBlock]
    n_frames: int

    @property
    def dimension(self) -> int:
        return next(iter(self.blocks.values())).values.shape[1] if self.blocks else 0


class Descriptor(Protocol):
    """What a descriptor backend provides."""

    species: tuple[int, ...]

    def compute(self, frames: Sequence[Atoms], *, gradients: Sequence[str] = ()) -> AtomicDescriptors:
        """Descriptors of ``frames`` (all centres, grouped by centre species)."""
        ...

    def to_dict(self) -> dict:
        ...


def iter_descriptors(
    descriptor: Descriptor,
    frames: Sequence[Atoms],
    *,
    chunk_size: int = 100,
    gradients: Sequence[str] = (),
    progress=None,
) -> Iterator[tuple[int, AtomicDescriptors]]:
    """Yield ``(first_frame_index, descriptors)`` for consecutive chunks of frames.

    featomic is ~13x faster per atom on chunks of ~100 frames than on one call over
    a large pool, and chunking bounds memory. ``progress`` is an optional callable
    ``progress(n_frames_done_in_chunk, n_atoms_in_chunk)``.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    for start in range(0, len(frames), chunk_size):
        chunk = frames[start : start + chunk_size]
        result = descriptor.compute(chunk, gradients=gradients)
        if progress is not None:
            progress(len(chunk), sum(len(a) for a in chunk))
        yield start, result
