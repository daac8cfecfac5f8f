"""Frozen configuration objects that make up the design record (strict ``from_dict``).

- :class:`Noise` — gap_fit's ``default_sigma`` (+ per ``config_type``);
- :class:`ModelConfig` — everything the information model depends on: SOAP, kernel,
  noise, observations, sparse points (number, method) and the seed;
- :class:`DesignConfig` — a model config plus the criterion, the optimizer and the budget.

Every workflow (``select``, ``score``, ``verify``, ``assess``, ``grade``) takes these; the
command line parses into them; ``to_dict`` gives exactly the fields of the design record and
``from_record`` reads them back, so a record says how to recompute itself.
"""

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

    def validate(self, observations: Sequence[str] | None = None) -> "Noise":
        """Refuse sigmas that are not > 0; with ``observations``, only those of the observed kinds
        (gap_fit's ``default_sigma={0.002 0.1 0 0}`` is fine for a model without virials)."""
        used = {"energy", "force", "virial"} if observations is None else \
            {"energy"} | {k for k, o in (("force", "forces"), ("virial", "virials")) if o in observations}
        for name in ("energy", "force", "virial"):
            if name in used and not getattr(self, name) > 0:
                raise ConfigurationError(f"noise sigma for {name} must be > 0")
        for ct, table in self.per_config_type.items():
            for name, value in table.items():
                if name not in ("energy", "force", "virial") or (name in used and not float(value) > 0):
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
        check_keys(data, {"energy", "force", "virial", "per_atom", "per_config_type"}, "noise")
        return cls(
            energy=data.get("energy", 0.001),
            force=data.get("force", 0.1),
            virial=data.get("virial", 0.05),
            per_atom=data.get("per_atom", True),
            per_config_type=data.get("per_config_type", {}) or {},
        )


def check_keys(data: Mapping, allowed, what: str) -> None:
    """Refuse unknown keys in a config dict, naming them (a typo must not be dropped silently)."""
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{what} must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigurationError(f"unknown {what} key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                                 f"(known: {', '.join(sorted(allowed))})")


OBSERVABLES = ("energy", "forces", "virials")
#: Design-record descriptor backends of linear models (:mod:`mlipdoe.model.linear_model`).
LINEAR_BACKENDS = ("lammps-snap", "features", "pyace")
SPARSE_METHODS = ("cur", "fps")


def check_observations(observations) -> tuple:
    """``observations`` as a tuple, refused unless it holds energy and only known kinds, once each."""
    obs = tuple(observations)
    if any(o not in OBSERVABLES for o in obs) or "energy" not in obs or len(set(obs)) != len(obs):
        raise ConfigurationError(f"observations must include energy and be among {', '.join(OBSERVABLES)}, "
                                 f"got {','.join(map(str, obs))}")
    return obs


@dataclass(frozen=True)
class ModelConfig:
    """Everything the information model depends on.

    Attributes
    ----------
    soap : SOAP
        Descriptor hypers (featomic SOAP power spectrum).
    kernel : Kernel
        Dot-product kernel δ² (x·x')^ζ.
    noise : Noise
    observations : tuple of {"energy", "forces", "virials"}
        Energy always; forces/virials add their rows to each frame's information.
    n_sparse : int or mapping
        Sparse points per centre species.
    sparse_method : {"cur", "fps"}
    seed : int
        Seeds the sparse-point choice (and the criterion's ties / random baseline).
    gap : GapFitSpec, optional
        A parsed gap_fit command line (:mod:`mlipdoe.gap_spec`): the model is then exactly
        the one gap_fit trains (GAP's own descriptors, several of them; spec section 7), and
        ``soap``, ``kernel``, ``noise``, ``n_sparse`` and ``sparse_method`` come from it.
    linear : LinearSpec, optional
        A model linear in its parameters (:mod:`mlipdoe.model.linear_model`: SNAP through
        LAMMPS, or per-atom features from the pool file) with a ridge prior (spec section 8);
        ``soap``, ``kernel``, ``n_sparse`` and ``sparse_method`` are then not used.
    """

    soap: object = None
    kernel: object = None
    noise: Noise = field(default_factory=Noise)
    observations: tuple = ("energy",)
    n_sparse: object = 100
    sparse_method: str = "cur"
    seed: int = 0
    gap: object = None
    linear: object = None

    def __post_init__(self):
        from .descriptors import SOAP
        from .model.kernels import Kernel

        if self.gap is not None and self.linear is not None:
            raise ConfigurationError("a model is either a gap_fit model or a linear model, not both")
        if self.gap is not None:
            object.__setattr__(self, "noise", self.gap.noise())
            object.__setattr__(self, "sparse_method", "gap_fit")
        if self.linear is not None:
            object.__setattr__(self, "sparse_method", "none")
        if self.soap is None:
            object.__setattr__(self, "soap", SOAP())
        if self.kernel is None:
            object.__setattr__(self, "kernel", Kernel())
        raw = self.observations.split(",") if isinstance(self.observations, str) else self.observations
        obs = tuple(str(o).strip().lower() for o in raw)
        object.__setattr__(self, "observations", obs)
        object.__setattr__(self, "sparse_method", str(self.sparse_method).strip().lower())

    def validate(self) -> "ModelConfig":
        check_observations(self.observations)
        if self.gap is not None or self.linear is not None:
            self.noise.validate(self.observations)
            return self
        if self.sparse_method not in SPARSE_METHODS:
            raise ConfigurationError(f"unknown sparse-point method {self.sparse_method!r} (use cur or fps)")
        self.kernel.validate()
        self.noise.validate()
        return self

    def to_dict(self) -> dict:
        """The design record's model fields.

        A gap_fit model records its parsed arguments as the descriptor
        (``{"backend": "quippy", "gap_fit": …}``); its kernels are part of them
        (``kernel = {"type": "gap_fit"}``).
        """
        if self.gap is not None:
            return {"descriptor": {"backend": "quippy", "gap_fit": self.gap.to_dict()}, "kernel": {"type": "gap_fit"},
                    "noise": self.noise.to_dict(), "observations": list(self.observations),
                    "n_sparse": {f"{k}:{d.kind}": int(d.n_sparse) for k, d in enumerate(self.gap.descriptors)},
                    "sparse_method": "gap_fit", "seed": int(self.seed)}
        if self.linear is not None:
            return {**self.linear.record_fields(), "noise": self.noise.to_dict(),
                    "observations": list(self.observations), "n_sparse": 0, "sparse_method": "none",
                    "seed": int(self.seed)}
        n_sparse = self.n_sparse if isinstance(self.n_sparse, (int, np.integer)) else {
            str(k): int(v) for k, v in dict(self.n_sparse).items()}
        return {"descriptor": self.soap.to_dict(), "kernel": self.kernel.to_dict(), "noise": self.noise.to_dict(),
                "observations": list(self.observations), "n_sparse": n_sparse,
                "sparse_method": self.sparse_method, "seed": int(self.seed)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "ModelConfig":
        from .descriptors import SOAP
        from .model.kernels import Kernel

        check_keys(data, MODEL_KEYS, "model config")
        descriptor = data.get("descriptor", {})
        if isinstance(descriptor, Mapping) and descriptor.get("backend") == "quippy":
            from .gap_spec import GapFitSpec

            check_keys(descriptor, ("backend", "gap_fit"), "gap_fit descriptor")
            return cls(gap=GapFitSpec.from_dict(descriptor.get("gap_fit", {})),
                       observations=tuple(data.get("observations", ("energy",))), seed=int(data.get("seed", 0)))
        if isinstance(descriptor, Mapping) and descriptor.get("backend") in LINEAR_BACKENDS:
            from .model.linear_model import LinearSpec

            return cls(linear=LinearSpec.from_record_fields(descriptor, data.get("kernel", {})),
                       noise=Noise.from_dict(data.get("noise", {})),
                       observations=tuple(data.get("observations", ("energy",))), seed=int(data.get("seed", 0)))
        n_sparse = data.get("n_sparse", 100)
        if isinstance(n_sparse, Mapping):
            n_sparse = {int(k): int(v) for k, v in n_sparse.items()}
        return cls(soap=SOAP.from_dict(data.get("descriptor", {})), kernel=Kernel.from_dict(data.get("kernel", {})),
                   noise=Noise.from_dict(data.get("noise", {})), observations=tuple(data.get("observations", ("energy",))),
                   n_sparse=n_sparse, sparse_method=data.get("sparse_method", "cur"), seed=int(data.get("seed", 0)))

    @classmethod
    def from_record(cls, record) -> "ModelConfig":
        """The model config a design record was computed with (``record``: DesignRecord or its dict)."""
        data = record.to_dict() if hasattr(record, "to_dict") else dict(record)
        return cls.from_dict({k: data[k] for k in MODEL_KEYS if k in data})


MODEL_KEYS = ("descriptor", "kernel", "noise", "observations", "n_sparse", "sparse_method", "seed")
OPTIMIZERS = ("greedy", "exchange")
TARGET_OBSERVABLES = ("energy", "forces", "energy,forces")


@dataclass(frozen=True)
class DesignConfig:
    """A model config plus how the design is searched.

    Attributes
    ----------
    model : ModelConfig
    criterion : str
        d, a, i, g, e, maximin or a baseline (random, fps, cur); case-insensitive.
    budget : Budget
        Exactly one of a frame count, an atom budget or a DFT-cost budget.
    optimizer : {"greedy", "exchange"}
    restarts, max_iter : int
        Fedorov exchange: random restarts, swaps per run.
    threshold : float, optional
        Stop when the best gain falls below it.
    target_observable : {"energy", "forces", "energy,forces"}
        What ``i`` averages over the target: per-atom energy variance, mean force-component
        variance, or their sum in units of the noise (v_E/σ_E² + v_F/σ_F²).
    lazy : bool
        Lazy greedy for submodular criteria under a count budget (same picks, fewer evaluations).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    criterion: str = "d"
    budget: object = None
    optimizer: str = "greedy"
    restarts: int = 0
    max_iter: int = 100
    threshold: float | None = None
    target_observable: str = "energy"
    lazy: bool = True

    def __post_init__(self):
        object.__setattr__(self, "criterion", str(self.criterion).strip().lower())
        object.__setattr__(self, "optimizer", str(self.optimizer).strip().lower())
        object.__setattr__(self, "target_observable", ",".join(
            t.strip() for t in str(self.target_observable).strip().lower().split(",")))

    def validate(self) -> "DesignConfig":
        from .criteria import CRITERIA

        self.model.validate()
        if self.criterion not in CRITERIA:
            raise ConfigurationError(f"unknown criterion {self.criterion!r} (available: {', '.join(CRITERIA)})")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigurationError(f"unknown optimizer {self.optimizer!r} (use greedy or exchange)")
        if self.target_observable not in TARGET_OBSERVABLES:
            raise ConfigurationError(f"target observable must be one of {', '.join(TARGET_OBSERVABLES)}, got "
                                     f"{self.target_observable!r}")
        if self.budget is None:
            raise ConfigurationError("a design needs a budget: a frame count, an atom budget or a cost budget")
        self.budget.validate()
        if int(self.restarts) < 0 or int(self.max_iter) < 1:
            raise ConfigurationError(f"need restarts >= 0 and max_iter >= 1, got {self.restarts}, {self.max_iter}")
        return self

    def to_dict(self) -> dict:
        """The design record's configuration fields (model fields, criterion, optimizer, budget, search)."""
        return {**self.model.to_dict(), "criterion": self.criterion, "optimizer": self.optimizer,
                "budget": self.budget.to_dict(), "search": {
                    "restarts": int(self.restarts), "max_iter": int(self.max_iter), "threshold": self.threshold,
                    "target_observable": self.target_observable, "lazy": bool(self.lazy)}}

    @classmethod
    def from_dict(cls, data: Mapping) -> "DesignConfig":
        from .budget import Budget

        check_keys(data, (*MODEL_KEYS, "criterion", "optimizer", "budget", "search"), "design config")
        search = dict(data.get("search", {}))
        check_keys(search, ("restarts", "max_iter", "threshold", "target_observable", "lazy"), "search options")
        if not isinstance(data.get("budget"), Mapping):
            raise ConfigurationError("a design config needs a budget: {'kind': 'count'|'atoms'|'cost', 'value': …}")
        b = dict(data["budget"])
        check_keys(b, ("kind", "value", "cost_power", "spent", "cost_source"), "budget")
        if "kind" not in b or "value" not in b:
            raise ConfigurationError("the budget needs a 'kind' and a 'value'")
        budget = Budget(b["kind"], float(b["value"]), float(b.get("cost_power", 3.0)))
        return cls(model=ModelConfig.from_dict({k: data[k] for k in MODEL_KEYS if k in data}),
                   criterion=data.get("criterion", "d"), budget=budget, optimizer=data.get("optimizer", "greedy"),
                   **search)

    @classmethod
    def from_record(cls, record) -> "DesignConfig":
        """The configuration a design record was made with.

        Records carry ``search`` since format 2; older ones get the defaults of the time
        (no restarts, 100 swaps, no threshold, energy target, lazy).
        """
        data = record.to_dict() if hasattr(record, "to_dict") else dict(record)
        keys = (*MODEL_KEYS, "criterion", "optimizer", "budget", "search")
        return cls.from_dict({k: data[k] for k in keys if k in data})
