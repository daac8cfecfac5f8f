"""A user's gap_fit command line, parsed strictly into frozen config objects, and rendered back.

The text is what gap_fit reads (its ``config_file`` or the joined command line) without
``at_file``/``gp_file``: ``key=value`` pairs split at blanks and commas, ``{…}``, ``"…"`` and
``'…'`` quote (one level is removed per parse), ``key = value`` is one pair, keys are
case-insensitive, logicals are T/F/true/false in any case. ``gap={d1 : d2}`` holds the
descriptors, split at ``:`` or ``;`` with one more level of braces removed, so an array inside
it is written ``species_Z={{8 40}}``. These rules, the option names, their aliases and their
defaults follow gap_fit of QUIP/GAP v0.10.3 (quippy-ase 0.10.3), read from its ``--help``:

- top level: ``default_sigma`` (alias ``default_kernel_regularisation``, mandatory, 4 reals
  σ_E σ_F σ_V σ_H), ``config_type_sigma`` (``config_type_kernel_regularisation``, ``{ct:σ_E:σ_F:
  σ_V:σ_H:…}``, none), ``sigma_per_atom`` (``kernel_regularisation_is_per_atom``, T),
  ``sparse_jitter`` (1.0e-10);
- per descriptor (gap_fit's keys): ``delta`` (``energy_scale``, mandatory), ``f0`` (0.0),
  ``covariance_type`` (mandatory; dot_product, ard_se or its alias gaussian), ``zeta``
  (``soap_exponent``, needed by dot_product), ``theta_uniform`` (``lengthscale_uniform``, needed
  by ard_se), ``n_sparse`` (0), ``config_type_n_sparse`` (none), ``sparse_method`` (random),
  ``sparse_file`` (none), ``add_species`` (T);
- descriptor keys and defaults: :data:`DESCRIPTOR_KEYS` (soap, distance_2b, angle_3b).

``add_species=T`` expands a descriptor per species as gap_fit's ``descriptor_str_add_species``:
soap gets ``n_species=N Z=z species_Z={…}`` per species, distance_2b ``Z1 Z2`` per unordered
pair, angle_3b ``Z Z1 Z2`` per centre and unordered neighbour pair; gap_fit takes the species in
order of first appearance in the training file (:func:`species_order`). Anything mlipdoe does
not model (other descriptors or kernels, theta_fac, masks, per-frame sigmas, local properties,
Hessians, …) is refused by name with :class:`~mlipdoe.exceptions.ConfigurationError`, and so
is a key given twice (gap_fit would keep the last one) or a species key in an add_species=T
template (gap_fit would override it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .exceptions import ConfigurationError, InputError
from .hypers import Noise, check_keys


def _keys(spec: str) -> dict:
    """``"name type default [alias …]; …"`` → ``{name: (type, default, aliases)}``; type r real, i integer,
    b logical, s string, ia integer list; default ``!`` mandatory, ``-`` empty."""
    out = {}
    for entry in spec.split(";"):
        name, kind, default, *aliases = entry.split()
        out[name] = (kind, None if default == "!" else "" if default == "-" else default, tuple(aliases))
    return out


# Names as gap_fit's add_species and every gap_fit version spell them (0.10.3 also reads the aliases).
DESCRIPTOR_KEYS = {
    "soap": _keys("cutoff r !; cutoff_transition_width r 0.50; cutoff_dexp i 0; cutoff_scale r 1.0; "
                  "cutoff_rate r 1.0; l_max i !; n_max i !; atom_sigma r ! atom_gaussian_width; central_weight r 1.0; "
                  "central_reference_all_species b F; diagonal_radial b F; covariance_sigma0 r 0.0; "
                  "normalise b T normalize; basis_error_exponent r 10.0; n_Z i 1; n_species i 1; species_Z ia 0; "
                  "Z ia 0; nu_R i 2; nu_S i 2; Z_mix b F; R_mix b F; sym_mix b F; coupling b T; K i 0; mix_shift i 0; "
                  "Z_map s -; radial_basis s EQUISPACED_GAUSS"),
    "distance_2b": _keys("cutoff r 0.00; cutoff_transition_width r 0.5; Z1 i 0; Z2 i 0; n_exponents i 1; "
                         "exponents ia 1; tail_range r 1.0; tail_exponent i 0"),
    "angle_3b": _keys("cutoff r 0.00; cutoff_transition_width r 0.50; Z i 0 Z_center; Z1 i 0; Z2 i 0"),
}
_SPECIES_KEYS = {"soap": ("n_species", "species_Z", "Z", "n_Z"), "distance_2b": ("Z1", "Z2"),
                 "angle_3b": ("Z", "Z1", "Z2")}
_GP_KEYS = _keys("delta r ! energy_scale; f0 r 0.0; covariance_type s !; zeta r 1.0 soap_exponent; "
                 "theta_uniform r 0.0 lengthscale_uniform; n_sparse i 0; config_type_n_sparse s -; "
                 "sparse_method s random; sparse_file s -; add_species b T")
GAP_KINDS = ("bispectrum_so4", "bispectrum_so3", "behler", "distance_2b", "coordination", "angle_3b", "co_angle_3b",
             "co_distance_2b", "cosnx", "trihis", "water_monomer", "water_dimer", "a2_dimer", "ab_dimer",
             "bond_real_space", "atom_real_space", "power_so3", "power_so4", "soap", "an_monomer", "general_monomer",
             "general_dimer", "general_trimer", "water_trimer", "rdf", "as_distance_2b", "molecule_lo_d", "alex",
             "com_dimer", "distance_nb", "soap_express", "soap_turbo")
SPARSE_METHODS = ("random", "pivot", "cluster", "uniform", "kmeans", "covariance", "none", "fuzzy", "file",
                  "index_file", "cur_covariance", "cur_points")


def _why(groups: Mapping[str, str]) -> dict:
    """``{"k1 k2": reason}`` → ``{k: reason}`` (``{k}`` in the reason is the key; else it leads)."""
    return {k: why.format(k=k) if "{k}" in why else f"{k}: {why}" for keys, why in groups.items() for k in keys.split()}


_REFUSED_IN_GAP = _why({
    "theta_fac lengthscale_factor theta_file lengthscale_file": "{k} is not supported: give theta_uniform",
    "average": "averaged SOAP (one descriptor per frame) is not supported",
    "xml_version": "xml_version only reads old potential files",
    "resid_name only_intra only_inter": "{k} needs residue ids, which mlipdoe frames do not carry",
    "mark_sparse_atoms print_sparse_index unique_hash_tolerance unique_descriptor_tolerance":
        "{k} is a gap_fit output or sparsification detail mlipdoe does not reproduce"})
# Top level: what mlipdoe reads, and the options kept verbatim for export: they shift or name the
# labels, or only change gap_fit's output, never the information matrix.
_TOP_KEYS = _keys("gap s !; default_sigma s ! default_kernel_regularisation; "
                  "config_type_sigma s - config_type_kernel_regularisation; "
                  "sigma_per_atom b T kernel_regularisation_is_per_atom; sparse_jitter r 1.0e-10")
LABEL_OPTIONS = _keys("e0 s 0.0; e0_offset r 0.0; e0_method s isolated; energy_parameter_name s energy; "
                      "force_parameter_name s force; virial_parameter_name s virial; stress_parameter_name s stress; "
                      "config_type_parameter_name s config_type; parameter_name_prefix s -; "
                      "baseline_ip_args s - core_ip_args; baseline_param_filename s quip_params.xml core_param_file; "
                      "do_copy_atoms_file b T do_copy_at_file; sparse_separate_file b T; verbosity s NORMAL; "
                      "rnd_seed i -1")
_VERBOSITY = ("NORMAL", "VERBOSE", "NERD", "ANALYSIS")  # gap_fit compares them case-sensitively
_REFUSED_TOP = _why({
    "at_file atoms_filename gp_file gap_file": "leave out at_file/gp_file: mlipdoe appends them on export",
    "config_file": "config_file: give the file's text instead (read_gap_fit_args, --gap-fit-args-file)",
    "local_property0 default_kernel_regularisation_local_property default_local_property_sigma "
    "local_property_parameter_name local_property_mask_parameter_name": "local-property fits are not supported",
    "force_mask_parameter_name": "force masks are not supported",
    "kernel_regularisation_parameter_name sigma_parameter_name": "per-frame sigmas are not supported",
    "hessian_parameter_name hessian_displacement hessian_delta": "Hessian observations are not supported",
    "sparse_use_actual_gpcov sparsify_only_no_fit dryrun condition_number_norm linear_system_dump_file "
    "mpi_blocksize_rows mpi_blocksize_cols mpi_print_all export_covariance openmp_chunk_size do_ip_timing "
    "template_file": "{k} is not supported"})


def _split(text: str, seps: str, quotes: str = "''\"\"{}") -> list[str]:
    """libAtoms ``split_string(…, matching=.true.)``: split at ``seps`` outside quotes, strip one
    quote level, and join ``key = value`` (a separator run followed by ``=``) into one field."""
    opens, closes = quotes[0::2], quotes[1::2]

    def closing(i: int, close: str) -> int:
        while True:
            c = text.find(close, i)
            o = min((p for p in (text.find(q, i) for q in opens) if p >= 0), default=-1)
            if c < 0:
                return -1
            if o < 0 or o >= c:
                return c
            end = closing(o + 1, closes[opens.index(text[o])])
            if end < 0:
                return -1
            i = end + 1

    text = text.rstrip()
    fields, tmp, in_token, start, i, n = [], "", False, 0, 0, len(text)
    while i < n:
        ch = text[i]
        if ch in opens:
            j = closing(i + 1, closes[opens.index(ch)])
            if j < 0:
                raise ConfigurationError(f"unbalanced {ch} at character {i + 1} of {text!r}")
            tmp += (text[start:i] if in_token else "") + text[i + 1:j]
            in_token, i = True, j + 1
            start = i
        elif ch in seps:
            k = i
            while k < n and text[k] in seps:
                k += 1
            if k < n and text[k] == "=":
                tmp = tmp + text[start:i] + "=" if in_token else "="
                in_token, i = True, k + 1
                while i < n and text[i] in seps and any(c not in seps for c in text[i:]):
                    i += 1
                start = i
            else:
                if in_token:
                    fields.append(tmp + text[start:i])
                tmp, in_token, i = "", False, i + 1
        else:
            if not in_token:
                start = i
            in_token, i = True, i + 1
    if in_token:
        fields.append(tmp + text[start:])
    return fields


def _pairs(text: str, where: str) -> list[tuple[str, str | None]]:
    """``(key, value)`` of each field as gap_fit's param_read_line; value None for a bare word."""
    out = []
    for f in _split(text, " ,"):
        key, eq, value = f.partition("=")
        if eq and not key:
            raise ConfigurationError(f"malformed field {f!r} in {where}")
        out.append((key, value if eq else None))
    return out


def _canonical(pairs, table: Mapping[str, tuple], where: str, refused: Mapping[str, str]) -> dict:
    """Map keys case-insensitively onto ``table``'s names (aliases included); refuse the rest by name."""
    lookup = {k.lower(): k for k in table}
    lookup.update({a.lower(): k for k, (*_, aliases) in table.items() for a in aliases})
    out, unknown, bad = {}, [], []
    for key, value in pairs:
        name = lookup.get(key.lower())
        if name is None:
            (bad.append(refused[key.lower()]) if key.lower() in refused else unknown.append(key))
        elif name in out:
            raise ConfigurationError(f"{where}: {key} given twice (or with its alias)")
        else:
            out[name] = value
    if unknown or bad:
        msg = [(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in {where} "
                f"(known: {', '.join(sorted(table))})")] if unknown else []
        raise ConfigurationError("; ".join(msg + sorted(set(bad))))
    return out


def _value(kind: str, value, key: str, where: str) -> str:
    """``value`` checked against ``kind`` and written as gap_fit text (``{…}`` around lists/blanks)."""
    text = "T" if value is None and kind == "b" else str("" if value is None else value).strip()
    try:
        if kind == "r":
            float(text.replace("d", "e").replace("D", "E"))
        elif kind == "i":
            text = str(int(text))
        elif kind == "b":
            if text.lower() not in ("t", "true", "f", "false"):
                raise ValueError
            text = "T" if text.lower() in ("t", "true") else "F"
        elif kind == "ia":
            ints = [int(v) for v in text.strip("{}").split()]
            text = str(ints[0]) if len(ints) == 1 else "{" + " ".join(map(str, ints)) + "}"
        elif text and not (text.startswith("{") and text.endswith("}")) and any(c in text for c in " ,:;'\"{}"):
            text = "{" + text + "}"
    except (ValueError, IndexError):
        raise ConfigurationError(f"{where}: {key}={value!r} is not {_TYPE_NAMES[kind]}") from None
    return text


_TYPE_NAMES = {"r": "a real number", "i": "an integer", "b": "a logical (T/F/true/false)",
               "ia": "a list of integers", "s": "a string"}


def _table(text: str, where: str, group: int, convert) -> dict:
    """``{a:1:b:2}`` style tables (gap_fit splits them at blanks, ``:`` and ``;``) as a dict."""
    fields = _split(text.strip().strip("{}"), " :;", "{}")
    if len(fields) % group:
        raise ConfigurationError(f"{where} needs groups of {group} fields (name then {group - 1} values), "
                                 f"got {len(fields)}: {text!r}")
    names = fields[0::group]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"{where}: a config_type is listed twice in {text!r}")
    try:
        return {fields[i]: convert(fields[i + 1:i + group]) for i in range(0, len(fields), group)}
    except ValueError:
        raise ConfigurationError(f"{where}: bad number in {text!r}") from None


def _float(x) -> float:
    return float(str(x).replace("d", "e").replace("D", "E"))


def _quote_in_gap(value: str) -> str:
    """Inside ``gap={…}`` one more brace level is removed: ``{40 8}`` is written ``{{40 8}}``."""
    return "{" + value + "}" if value.startswith("{") else value


@dataclass(frozen=True)
class GapDescriptor:
    """One ``gap={…}`` entry: a quippy descriptor, its GP kernel and its sparse points.

    ``hypers`` holds the descriptor keys given (canonical names, gap_fit text); the keys not
    given take gap_fit's defaults (:meth:`hyper`). ``add_species=True`` marks a template that
    :meth:`expand` turns into gap_fit's per-species descriptors.
    """

    kind: str
    hypers: Mapping[str, str]
    delta: float
    covariance_type: str
    zeta: float | None = None
    theta_uniform: float | None = None
    n_sparse: int = 0
    sparse_method: str = "random"
    sparse_file: str | None = None
    config_type_n_sparse: Mapping[str, int] = field(default_factory=dict)
    add_species: bool = True
    f0: float = 0.0

    def __post_init__(self):
        kind = str(self.kind).lower()
        where = f"{kind} descriptor"
        if kind not in DESCRIPTOR_KEYS:
            raise ConfigurationError(f"descriptor kind {self.kind!r} is not supported (supported: "
                                     f"{', '.join(DESCRIPTOR_KEYS)})")
        table = DESCRIPTOR_KEYS[kind]
        hypers = _canonical(list(dict(self.hypers).items()), table, where, _REFUSED_IN_GAP)
        hypers = {k: _value(table[k][0], v, k, where) for k, v in hypers.items()}
        missing = [k for k, (_, default, _a) in table.items() if default is None and k not in hypers]
        cov = {"gaussian": "ard_se"}.get(str(self.covariance_type).lower(), str(self.covariance_type).lower())
        method = str(self.sparse_method).lower()
        for name, value in (("kind", kind), ("hypers", hypers), ("covariance_type", cov), ("sparse_method", method),
                            ("delta", _float(self.delta)), ("f0", _float(self.f0)), ("n_sparse", int(self.n_sparse)),
                            ("add_species", bool(self.add_species)), ("sparse_file", self.sparse_file or None),
                            ("config_type_n_sparse", {str(k): int(v) for k, v in
                                                      dict(self.config_type_n_sparse).items()}),
                            ("zeta", None if self.zeta is None else _float(self.zeta)),
                            ("theta_uniform", None if self.theta_uniform is None else _float(self.theta_uniform))):
            object.__setattr__(self, name, value)
        if missing:
            raise ConfigurationError(f"{where}: missing {', '.join(missing)}")
        if cov == "dot_product" and (self.zeta is None or self.theta_uniform is not None):
            raise ConfigurationError(f"{where}: covariance_type=dot_product needs zeta (and no theta_uniform)")
        if cov == "ard_se" and (self.theta_uniform is None or self.zeta is not None):
            raise ConfigurationError(f"{where}: covariance_type=ard_se needs theta_uniform (and no zeta)")
        if cov not in ("dot_product", "ard_se"):
            raise ConfigurationError(f"{where}: covariance_type={self.covariance_type} is not supported "
                                     "(use dot_product or ard_se)")
        if method not in SPARSE_METHODS:
            raise ConfigurationError(f"{where}: unknown sparse_method {self.sparse_method!r} "
                                     f"(gap_fit's: {', '.join(SPARSE_METHODS)})")
        if (self.sparse_file is not None) != (method in ("file", "index_file")):
            raise ConfigurationError(f"{where}: sparse_file goes with sparse_method=file or index_file, and only then")
        if self.sparse_file is None and (self.n_sparse > 0) == bool(self.config_type_n_sparse):
            raise ConfigurationError(f"{where}: give n_sparse > 0 or config_type_n_sparse (one of them)")
        if self.n_sparse < 0 or any(v < 0 for v in self.config_type_n_sparse.values()):
            raise ConfigurationError(f"{where}: sparse point counts must be >= 0")
        given = [k for k in _SPECIES_KEYS[kind] if k in hypers]
        if self.add_species and given:
            raise ConfigurationError(f"{where}: add_species=T sets {', '.join(given)}; give add_species=F "
                                     "to set them yourself")

    def hyper(self, name: str) -> str:
        """The value of descriptor key ``name``: the one given, else gap_fit's default."""
        return self.hypers.get(name, DESCRIPTOR_KEYS[self.kind][name][1])

    def expand(self, species: Sequence[int]) -> list[GapDescriptor]:
        """gap_fit's ``add_species`` expansion over ``species`` (in gap_fit's order: first appearance)."""
        if not self.add_species:
            return [self]
        zs = [int(z) for z in species]
        if not zs or len(set(zs)) != len(zs) or min(zs) < 1:
            raise ConfigurationError(f"add_species needs distinct atomic numbers, got {list(species)}")
        if self.kind == "soap":
            extra = [{"n_species": len(zs), "Z": z, "species_Z": " ".join(map(str, zs))} for z in zs]
        elif self.kind == "distance_2b":
            extra = [{"Z1": a, "Z2": b} for i, a in enumerate(zs) for b in zs[i:]]
        else:
            extra = [{"Z": c, "Z1": a, "Z2": b} for c in zs for i, a in enumerate(zs) for b in zs[i:]]
        return [replace(self, hypers={**self.hypers, **e}, add_species=False) for e in extra]

    def descriptor_string(self) -> str:
        """The string for ``quippy.descriptors.Descriptor`` (descriptor keys only)."""
        if self.add_species:
            raise ConfigurationError(f"{self.kind}: add_species=T is a template; call expand(species) first")
        return " ".join([self.kind, *(f"{k}={v}" for k, v in self.hypers.items())])

    def gap_text(self, sparse_file: str | None = None) -> str:
        """This entry as written inside ``gap={…}``; with ``sparse_file``, its points come from that file."""
        parts = [self.kind, *(f"{k}={_quote_in_gap(v)}" for k, v in self.hypers.items()),
                 f"delta={self.delta!r}", f"covariance_type={self.covariance_type}"]
        parts += [f"zeta={self.zeta!r}"] if self.zeta is not None else [f"theta_uniform={self.theta_uniform!r}"]
        parts += [f"f0={self.f0!r}"] if self.f0 != 0.0 else []
        if sparse_file is not None:
            parts += ["sparse_method=file", f"sparse_file={_quote_in_gap(_value('s', sparse_file, '', ''))}"]
        else:
            parts += [f"n_sparse={self.n_sparse}"] if self.n_sparse else []
            table = ":".join(f"{k}:{v}" for k, v in self.config_type_n_sparse.items())
            parts += [f"config_type_n_sparse={{{{{table}}}}}"] if table else []
            parts += [f"sparse_method={self.sparse_method}"]
            if self.sparse_file is not None:
                parts += [f"sparse_file={_quote_in_gap(_value('s', self.sparse_file, '', ''))}"]
        return " ".join(parts + [f"add_species={'T' if self.add_species else 'F'}"])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "hypers": dict(self.hypers), "delta": self.delta,
                "covariance_type": self.covariance_type, "zeta": self.zeta, "theta_uniform": self.theta_uniform,
                "n_sparse": self.n_sparse, "sparse_method": self.sparse_method, "sparse_file": self.sparse_file,
                "config_type_n_sparse": dict(self.config_type_n_sparse), "add_species": self.add_species,
                "f0": self.f0}

    @classmethod
    def from_dict(cls, d: Mapping) -> GapDescriptor:
        check_keys(d, cls.__dataclass_fields__, "gap_fit descriptor")
        for k in ("kind", "hypers", "delta", "covariance_type"):
            if k not in d:
                raise ConfigurationError(f"gap_fit descriptor needs {k!r}")
        return cls(**d)


def parse_descriptor(text: str) -> GapDescriptor:
    """One descriptor string (``soap cutoff=5 … delta=1 zeta=4 …``, as inside ``gap={…}`` after its split)."""
    pairs = _pairs(text, "gap descriptor")
    words = [k for k, v in pairs if v is None and k.lower() in GAP_KINDS]
    if len(words) != 1:
        raise ConfigurationError(f"each gap descriptor needs one kind word (e.g. soap), got {words or 'none'} "
                                 f"in {text.strip()!r}")
    kind = words[0].lower()
    if kind not in DESCRIPTOR_KEYS:
        raise ConfigurationError(f"descriptor kind {kind} is not supported (supported: {', '.join(DESCRIPTOR_KEYS)})")
    pairs = [(k, v) for k, v in pairs if k != words[0] or v is not None]
    table = {**DESCRIPTOR_KEYS[kind], **_GP_KEYS}
    given = _canonical(pairs, table, f"{kind} descriptor", _REFUSED_IN_GAP)
    gp = {k: given.pop(k) for k in list(given) if k in _GP_KEYS}
    where = f"{kind} descriptor"
    for k in ("delta", "covariance_type"):
        if k not in gp:
            raise ConfigurationError(f"{where}: missing {k} (energy_scale and covariance_type are mandatory)")
    val = {k: _value(_GP_KEYS[k][0], v, k, where) for k, v in gp.items()}
    table_text = val.get("config_type_n_sparse", "")
    return GapDescriptor(
        kind=kind, hypers=given, delta=val["delta"], covariance_type=val["covariance_type"], zeta=val.get("zeta"),
        theta_uniform=val.get("theta_uniform"), n_sparse=int(val.get("n_sparse", 0)),
        sparse_method=val.get("sparse_method", "random"), sparse_file=val.get("sparse_file", "").strip("{}") or None,
        config_type_n_sparse=_table(table_text, f"{where}: config_type_n_sparse", 2, lambda v: int(v[0]))
        if table_text else {}, add_species=val.get("add_species", "T") == "T", f0=val.get("f0", "0.0"))


@dataclass(frozen=True)
class GapFitSpec:
    """A gap_fit command line without ``at_file``/``gp_file``.

    ``default_sigma`` and each ``config_type_sigma`` row are (σ_E, σ_F, σ_V, σ_H);
    ``label_options`` are kept verbatim (canonical names) for export.
    """

    descriptors: tuple
    default_sigma: tuple
    config_type_sigma: Mapping[str, tuple] = field(default_factory=dict)
    sigma_per_atom: bool = True
    sparse_jitter: float = 1.0e-10
    label_options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        descs = tuple(d if isinstance(d, GapDescriptor) else GapDescriptor.from_dict(d) for d in self.descriptors)
        if not descs:
            raise ConfigurationError("gap_fit arguments need at least one descriptor in gap={…}")
        rows = {"default_sigma": self.default_sigma, **{f"config_type_sigma {k!r}": v
                                                          for k, v in dict(self.config_type_sigma).items()}}
        for name, row in rows.items():
            if len(tuple(row)) != 4:
                raise ConfigurationError(f"{name} needs 4 values (σ_E σ_F σ_V σ_H), got {list(row)}")
        labels = _canonical(list(dict(self.label_options).items()), LABEL_OPTIONS,
                            "gap_fit label options", _REFUSED_TOP)
        for key, allowed in (("e0_method", ("isolated", "average")), ("verbosity", _VERBOSITY)):
            if key in labels and (str(labels[key]).lower() if key == "e0_method" else labels[key]) not in allowed:
                raise ConfigurationError(f"{key} must be one of {', '.join(allowed)}, got {labels[key]!r}")
        for name, value in (("descriptors", descs), ("default_sigma", tuple(_float(x) for x in self.default_sigma)),
                            ("config_type_sigma", {str(k): tuple(_float(x) for x in v)
                                                   for k, v in dict(self.config_type_sigma).items()}),
                            ("sigma_per_atom", bool(self.sigma_per_atom)), ("sparse_jitter", _float(self.sparse_jitter)),
                            ("label_options", {k: _value(LABEL_OPTIONS[k][0], v, k, "label options") for k, v in labels.items()})):
            object.__setattr__(self, name, value)

    def noise(self) -> Noise:
        """The sigmas as :class:`~mlipdoe.hypers.Noise` (a ``default`` config_type replaces default_sigma,
        as in gap_fit, for frames without a listed config_type)."""
        table = dict(self.config_type_sigma)
        e, f, v, _h = table.pop("default", self.default_sigma)
        return Noise(energy=e, force=f, virial=v, per_atom=self.sigma_per_atom,
                     per_config_type={ct: {"energy": r[0], "force": r[1], "virial": r[2]} for ct, r in table.items()})

    def expanded(self, species: Sequence[int]) -> list[GapDescriptor]:
        """Every descriptor expanded per species (gap_fit's order)."""
        return [e for d in self.descriptors for e in d.expand(species)]

    def _render(self, descriptors, sparse_files) -> str:
        gap = " : ".join(d.gap_text(f) for d, f in zip(descriptors, sparse_files))
        parts = [f"gap={{{gap}}}", "default_sigma={" + " ".join(map(repr, self.default_sigma)) + "}"]
        if self.config_type_sigma:
            parts.append("config_type_sigma={" + ":".join(":".join([k, *map(repr, v)])
                                                          for k, v in self.config_type_sigma.items()) + "}")
        parts += [f"sigma_per_atom={'T' if self.sigma_per_atom else 'F'}", f"sparse_jitter={self.sparse_jitter!r}"]
        return " ".join(parts + [f"{k}={v}" for k, v in self.label_options.items()])

    def template_args(self) -> str:
        """The arguments as parsed (descriptors not expanded); ``parse_gap_fit_args`` gives this spec back."""
        return self._render(self.descriptors, [None] * len(self.descriptors))

    def gap_fit_args(self, species: Sequence[int], *, sparse_files: Sequence[str] | None = None) -> str:
        """gap_fit arguments with every descriptor expanded over ``species`` (``add_species=F``).

        With ``sparse_files`` (one per expanded descriptor, in order, gap_fit's FILE format, see
        :func:`write_sparse_file`) each descriptor reads its sparse points from its file and
        n_sparse/config_type_n_sparse are left out (gap_fit counts the file). Append
        ``at_file=… gp_file=…`` to run it.
        """
        descs = self.expanded(species)
        files = [None] * len(descs) if sparse_files is None else [str(f) for f in sparse_files]
        if len(files) != len(descs):
            raise ConfigurationError(f"{len(files)} sparse files for {len(descs)} expanded descriptors")
        return self._render(descs, files)

    def to_dict(self) -> dict:
        return {"descriptors": [d.to_dict() for d in self.descriptors], "default_sigma": list(self.default_sigma),
                "config_type_sigma": {k: list(v) for k, v in self.config_type_sigma.items()},
                "sigma_per_atom": self.sigma_per_atom, "sparse_jitter": self.sparse_jitter,
                "label_options": dict(self.label_options)}

    @classmethod
    def from_dict(cls, d: Mapping) -> GapFitSpec:
        check_keys(d, cls.__dataclass_fields__, "gap_fit arguments")
        if "descriptors" not in d or "default_sigma" not in d:
            raise ConfigurationError("gap_fit arguments need 'descriptors' and 'default_sigma'")
        return cls(**{**d, "descriptors": tuple(GapDescriptor.from_dict(x) for x in d["descriptors"])})


def parse_gap_fit_args(text: str) -> GapFitSpec:
    """Parse gap_fit arguments (see the module docstring); refuse whatever mlipdoe does not model."""
    table = {**_TOP_KEYS, **LABEL_OPTIONS}
    given = _canonical(_pairs(str(text), "gap_fit arguments"), table, "gap_fit arguments", _REFUSED_TOP)
    for k in ("gap", "default_sigma"):
        if k not in given:
            raise ConfigurationError(f"gap_fit arguments need {k}=… (mandatory in gap_fit)")
    empty = [k for k, v in given.items() if not v and k != "sigma_per_atom"]
    if empty:
        raise ConfigurationError(f"gap_fit arguments: no value for {', '.join(empty)}")
    descriptors = [parse_descriptor(s) for s in _split(given.pop("gap"), ":;", "{}") if s.strip()]
    sigma = given.pop("default_sigma").split()
    if len(sigma) != 4:
        raise ConfigurationError(f"default_sigma needs 4 values (σ_E σ_F σ_V σ_H), got {sigma}")
    cts = given.pop("config_type_sigma", None)
    per_atom = _value("b", given.pop("sigma_per_atom", "T"), "sigma_per_atom", "gap_fit arguments") == "T"
    jitter = _value("r", given.pop("sparse_jitter", "1.0e-10"), "sparse_jitter", "gap_fit arguments")
    try:
        return GapFitSpec(descriptors=tuple(descriptors), default_sigma=tuple(_float(s) for s in sigma),
                          config_type_sigma=_table(cts, "config_type_sigma", 5, lambda v: tuple(map(_float, v)))
                          if cts else {}, sigma_per_atom=per_atom, sparse_jitter=jitter, label_options=given)
    except ValueError as exc:
        raise ConfigurationError(f"gap_fit arguments: {exc}") from None


def read_gap_fit_args(path) -> GapFitSpec:
    """:func:`parse_gap_fit_args` of a file's text (newlines are blanks, as gap_fit's config_file)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise InputError(f"cannot read gap_fit arguments from {path}: {exc.strerror}") from None
    return parse_gap_fit_args(text.replace("\r", " ").replace("\n", " "))


def species_order(frames) -> list[int]:
    """Atomic numbers in order of first appearance (frame by frame, atom by atom), as gap_fit takes them.

    ``frames``: iterable of ase.Atoms or of atomic-number arrays.
    """
    seen: dict[int, None] = {}
    for f in frames:
        seen.update(dict.fromkeys(int(z) for z in (f.numbers if hasattr(f, "numbers") else f)))
    return list(seen)


def write_sparse_file(path, points: np.ndarray, cutoffs: np.ndarray | None = None) -> None:
    """Sparse points in gap_fit's ``sparse_method=FILE`` format.

    One value per line, per point its covariance cutoff (quippy's ``covariance_cutoff``, 1 for
    SOAP) then its d descriptor values; gap_fit checks the line count is a multiple of d + 1.

    Parameters
    ----------
    points : (M, d) array
    cutoffs : (M,) array, optional (ones)
    """
    X = np.atleast_2d(np.asarray(points, dtype=np.float64))
    c = np.ones(len(X)) if cutoffs is None else np.asarray(cutoffs, dtype=np.float64).reshape(len(X))
    np.savetxt(path, np.column_stack([c, X]).reshape(-1), fmt="%.17e")
