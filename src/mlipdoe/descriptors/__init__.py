"""Per-atom descriptors behind one small protocol.

A backend turns frames into :class:`AtomicDescriptors`: for every centre species, a
matrix of unit-length per-atom vectors plus where each row came from. Large pools are
processed with :func:`iter_descriptors`, one chunk of frames at a time, so the per-atom
matrix of the whole pool is never held in memory at once.
"""

from .base import AtomicDescriptors, Descriptor, SpeciesBlock, iter_descriptors
from .soap import SOAP, FeatomicSOAP, make_descriptor

__all__ = [
    "AtomicDescriptors",
    "Descriptor",
    "FeatomicSOAP",
    "SOAP",
    "SpeciesBlock",
    "iter_descriptors",
    "make_descriptor",
]
