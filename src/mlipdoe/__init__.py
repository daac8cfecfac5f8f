"""mlipdoe: offline optimal design of experiments for GAP training sets.

Typical use::

    import mlipdoe
    pool = mlipdoe.read_pool(["pool.xyz"])
    result = mlipdoe.select(pool, n=50, criterion="d")
    mlipdoe.write_record(result.record, "design.json")
"""

from .api import (
    SelectionResult,
    build_information_model,
    model_from_record,
    score,
    select,
    selected_frames,
    verify_record,
)
from .descriptors import SOAP
from .design import DesignRecord, read_record, write_record
from .exceptions import InputError, MlipdoeError
from .hypers import Noise
from .model import InformationModel
from .model.kernels import Kernel
from .model.rows import ObservationRows, posterior_mean
from .pool import Pool, read_pool

__version__ = "0.1.0"

__all__ = [
    "DesignRecord",
    "InformationModel",
    "InputError",
    "Kernel",
    "MlipdoeError",
    "Noise",
    "ObservationRows",
    "Pool",
    "SOAP",
    "SelectionResult",
    "build_information_model",
    "model_from_record",
    "posterior_mean",
    "read_pool",
    "read_record",
    "score",
    "select",
    "selected_frames",
    "verify_record",
    "write_record",
]
