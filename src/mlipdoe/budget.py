"""Budgets: how many frames, atoms or DFT core-hours a design may spend.

Three kinds (spec section 4, ``"budget"`` of the design record):

- ``count``: at most ``value`` frames (``-n``);
- ``atoms``: Σ n_s ≤ ``value`` (``--budget-atoms``);
- ``cost``: Σ cost(s) ≤ ``value`` (``--budget-cost``) with cost(s) = n_s^p
  (``--cost-power p``, default 3: plane-wave DFT scales roughly cubically), or the
  frame's own ``atoms.info["cost"]`` when every frame has one.

Only frames to be computed count: fixed, included and existing frames are free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .exceptions import InputError

KINDS = ("count", "atoms", "cost")


@dataclass(frozen=True)
class Budget:
    """A budget of one kind.

    Attributes
    ----------
    kind : {"count", "atoms", "cost"}
    value : float
        The most the design may spend.
    cost_power : float
        p in cost(s) = n_s^p (``cost`` budgets only).
    """

    kind: str
    value: float
    cost_power: float = 3.0

    def validate(self) -> "Budget":
        if self.kind not in KINDS:
            raise InputError(f"unknown budget kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if not np.isfinite(self.value) or self.value <= 0:
            raise InputError(f"the {self.kind} budget must be a positive number, got {self.value}")
        if self.kind == "count" and int(self.value) != self.value:
            raise InputError(f"a frame count must be a whole number, got {self.value}")
        if self.kind == "cost" and not (np.isfinite(self.cost_power) and self.cost_power > 0):
            raise InputError(f"--cost-power must be > 0, got {self.cost_power}")
        return self

    def costs(self, frames: Sequence, n_atoms: Sequence[int] | None = None) -> np.ndarray:
        """Cost of each frame (N,) under this budget (1 per frame for ``count``)."""
        return frame_costs(frames, self.kind, self.cost_power, n_atoms=n_atoms)

    def check_affordable(self, costs: np.ndarray, available: np.ndarray) -> None:
        """Raise :class:`InputError` if not even the cheapest available frame fits."""
        if self.kind == "count":
            return
        avail = np.asarray(costs)[np.asarray(available, dtype=bool)]
        if len(avail) and self.value < avail.min():
            raise InputError(f"the {self.kind} budget {self.value:g} is smaller than the cheapest available frame "
                             f"({avail.min():g}); raise the budget")

    def to_dict(self) -> dict:
        value = int(self.value) if float(self.value).is_integer() else float(self.value)
        d = {"kind": self.kind, "value": value}
        if self.kind == "cost":
            d["cost_power"] = float(self.cost_power)
        return d


def frame_costs(frames: Sequence, kind: str, cost_power: float = 3.0,
                n_atoms: Sequence[int] | None = None) -> np.ndarray:
    """Per-frame cost: 1 (count), n_s (atoms), ``info["cost"]`` or n_s^p (cost).

    ``info["cost"]`` is used only if *every* frame has a positive finite one;
    a partial set of costs raises :class:`InputError` (mixing units would be wrong).
    ``n_atoms``: the frames' atom counts when known (``count`` and ``atoms`` then do
    not touch the frames).
    """
    if kind == "count":
        return np.ones(len(frames))
    n = np.array([len(a) for a in frames] if n_atoms is None else n_atoms, dtype=np.float64)
    if kind == "atoms":
        return n
    if kind != "cost":
        raise InputError(f"unknown budget kind {kind!r}")
    given = [a.info.get("cost") for a in frames]
    have = [c is not None for c in given]
    if all(have):
        c = np.array([float(x) for x in given])
        if not np.all(np.isfinite(c) & (c > 0)):
            raise InputError("every info['cost'] must be a positive number")
        return c
    if any(have):
        raise InputError(f"{sum(have)} of {len(frames)} frames have info['cost']; give it for all or none")
    return n**cost_power


def uses_info_costs(frames: Sequence) -> bool:
    """True when :func:`frame_costs` takes the costs from ``info["cost"]``."""
    return len(frames) > 0 and all(a.info.get("cost") is not None for a in frames)
