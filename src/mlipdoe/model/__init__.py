"""The model layer: the one owner of observation rows, the prior and posterior means.

Given frames, a model yields per frame the whitened observation rows (energy, forces,
virials, local energies, :class:`ObservationRows`), the prior (K_MM, its Cholesky factor,
the jitter used) and the noise of every row. Everything downstream — the information
state, the criteria, the store, the built-in fit, assessment and grading — consumes
these rows and computes none of its own.
"""

from ..hypers import OBSERVABLES
from .base import PoolModel, RowModel
from .gap_featomic import (
    DescriptorSource,
    InformationModel,
    build_model,
    energy_rows,
    resolve_species,
    sparse_points_at,
)
from .kernels import Kernel, SparsePoints, cholesky_with_jitter, choose_sparse_points
from .rows import ObservationRows, compress_rows, mean_force_moment, posterior_mean

__all__ = [
    "OBSERVABLES",
    "DescriptorSource",
    "InformationModel",
    "Kernel",
    "ObservationRows",
    "PoolModel",
    "RowModel",
    "SparsePoints",
    "build_model",
    "cholesky_with_jitter",
    "choose_sparse_points",
    "compress_rows",
    "energy_rows",
    "mean_force_moment",
    "posterior_mean",
    "resolve_species",
    "sparse_points_at",
]
