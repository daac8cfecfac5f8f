"""Design criteria: small state objects behind :class:`Criterion`; no search logic.

All values are maximised (spec section 3). See docs/criteria.md for formulas,
incremental updates and costs.
"""

from __future__ import annotations

from ..exceptions import ConfigurationError
from .base import (
    Criterion,
    ExistingRows,
    InformationCriterion,
    TargetRows,
    existing_rows,
    target_rows,
)
from .baselines import CURSelection, FarthestPointSampling, mean_pooled_descriptors
from .d_optimal import DOptimal
from .e_optimal import EOptimal
from .entropy import QuestsEntropy
from .g_optimal import GOptimal
from .maximin import Maximin
from .random import RandomCriterion
from .trace import AOptimal, IOptimal

#: name -> criterion class; every value is maximised.
CRITERIA: dict[str, type[Criterion]] = {
    "d": DOptimal,
    "a": AOptimal,
    "i": IOptimal,
    "g": GOptimal,
    "e": EOptimal,
    "maximin": Maximin,
    "random": RandomCriterion,
    "fps": FarthestPointSampling,
    "cur": CURSelection,
    "quests": QuestsEntropy,
}

#: Options each criterion accepts (``make_criterion`` drops the others when ``lenient``).
OPTIONS: dict[str, tuple[str, ...]] = {
    "d": ("existing",), "a": ("existing",), "i": ("existing", "target", "force_moment"), "g": ("existing", "target"),
    "e": ("existing",), "maximin": ("existing",), "random": ("existing",),
    "fps": ("vectors", "frames", "soap", "existing", "existing_vectors"),
    "cur": ("vectors", "frames", "soap", "existing", "existing_vectors"),
    "quests": ("frames", "descriptors", "bandwidth", "k", "cutoff", "existing", "existing_descriptors"),
}


def make_criterion(name: str, *, lenient: bool = False, **options) -> Criterion:
    """A fresh criterion object by name (see :data:`CRITERIA`).

    With ``lenient=True`` options the criterion does not take (e.g. ``target`` for
    ``d``) are dropped instead of raising ``TypeError``; ``None`` options are dropped too.
    """
    try:
        cls = CRITERIA[name]
    except KeyError:
        raise ConfigurationError(f"unknown criterion {name!r} (available: {', '.join(CRITERIA)})") from None
    if lenient:
        options = {k: v for k, v in options.items() if k in OPTIONS[name] and v is not None}
    return cls(**options)


__all__ = [
    "AOptimal", "CRITERIA", "CURSelection", "Criterion", "DOptimal", "EOptimal", "ExistingRows",
    "FarthestPointSampling", "GOptimal", "IOptimal", "InformationCriterion", "Maximin", "OPTIONS", "QuestsEntropy",
    "RandomCriterion", "TargetRows", "existing_rows", "make_criterion", "mean_pooled_descriptors", "target_rows",
]
