"""Frozen hyperparameter objects that make up the design record (strict ``from_dict``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .exceptions import ConfigurationError


@dataclass(frozen=True)
class Noise:
    """Observation noise, gap_fit ``default_sigma={σ_E σ_F σ_V 0}``, ``sigma_per_atom=T``.

    The energy row of a frame with n atoms has variance σ_E² n, each force row σ_F²,
    each virial row σ_V² n (spec section 1). ``per_config_type`` maps a config_type to
    its own ``{"energy":…, "force":…, "virial":…}`` overrides.
    """

    energy: float = 0.001
    force: float = 0.1
    virial: float = 0.05
    per_atom: bool = True
    per_config_type: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def validate(self) -> "Noise":
        for name in ("energy", "force", "virial"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"noise sigma for {name} must be > 0")
        for ct, table in self.per_config_type.items():
            for name, value in table.items():
                if name not in ("energy", "force", "virial") or not float(value) > 0:
                    raise ConfigurationError(f"bad sigma {name}={value} for config_type {ct!r}")
        return self

    def sigma(self, name: str, config_type: str | None = None) -> float:
        table = self.per_config_type.get(config_type, {}) if config_type is not None else {}
        return float(table.get(name, getattr(self, name)))

    def energy_variance(self, n_atoms: np.ndarray, config_types: Sequence | None = None) -> np.ndarray:
        """σ_E² n_s per frame (σ_E² if ``per_atom`` is False)."""
        n = np.asarray(n_atoms, dtype=np.float64)
        if config_types is None or not self.per_config_type:
            sig = np.full(len(n), self.energy)
        else:
            sig = np.array([self.sigma("energy", ct) for ct in config_types])
        return sig**2 * (n if self.per_atom else 1.0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["per_config_type"] = {k: dict(v) for k, v in self.per_config_type.items()}
        if not d["per_config_type"]:
            del d["per_config_type"]
        return d

    @classmethod
    def from_dict(cls, data: Mapping) -> "Noise":
        return cls(
            energy=data.get("energy", 0.001),
            force=data.get("force", 0.1),
            virial=data.get("virial", 0.05),
            per_atom=data.get("per_atom", True),
            per_config_type=data.get("per_config_type", {}) or {},
        )
