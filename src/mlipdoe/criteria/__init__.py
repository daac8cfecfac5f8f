"""Design criteria: small state objects behind :class:`Criterion`; no search logic."""

from __future__ import annotations

from ..exceptions import ConfigurationError
from .base import Criterion
from .d_optimal import DOptimal
from .random import RandomCriterion

#: name -> criterion class; every value is maximised.
CRITERIA: dict[str, type[Criterion]] = {
    "d": DOptimal,
    "random": RandomCriterion,
}


def make_criterion(name: str, **options) -> Criterion:
    """A fresh criterion object by name (see :data:`CRITERIA`)."""
    try:
        cls = CRITERIA[name]
    except KeyError:
        raise ConfigurationError(f"unknown criterion {name!r} (available: {', '.join(CRITERIA)})") from None
    return cls(**options)


__all__ = ["CRITERIA", "Criterion", "DOptimal", "RandomCriterion", "make_criterion"]
