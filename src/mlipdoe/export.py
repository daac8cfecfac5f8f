"""Hand a GAP-exact design to gap_fit: its sparse points and a complete argument list.

``write_gap_fit_inputs(model, directory)`` writes, for a :class:`~mlipdoe.model.gap_quippy.GapExactModel`:

- ``sparse_<k>.txt`` for each expanded descriptor k, in gap_fit's ``sparse_method=FILE`` format:
  for every sparse point its weight s_m (``sparseCutoff``) on one line, then its D descriptor
  values one per line, all with 17 significant digits (an exact round trip);
- ``gap_fit_args.txt``: the user's gap_fit arguments with every descriptor expanded per species
  (``add_species=F``) and ``sparse_method=FILE sparse_file=…`` pointing at those files. With
  ``at_file=… gp_file=…`` appended, gap_fit trains exactly the model the design was computed on
  (``tests/test_model_gap_quippy.py`` checks the predictions against the built-in posterior mean).
"""

from __future__ import annotations

from pathlib import Path

from .atomic import atomic_output
from .exceptions import InputError
from .gap_spec import write_sparse_file

ARGS_FILE = "gap_fit_args.txt"


def write_gap_fit_inputs(model, directory, *, referenced_from=None) -> str:
    """Write the sparse-point files and ``gap_fit_args.txt`` into ``directory``; return the arguments.

    ``referenced_from``: the folder the arguments name the sparse files in (e.g. the final
    folder when ``directory`` is a temporary one renamed at the end); ``None`` names them
    relative to ``directory``, for a gap_fit run started there.
    """
    if not hasattr(model, "spec"):
        raise InputError("gap_fit inputs are written for designs on gap_fit arguments (--gap-fit-args); "
                         "a featomic design is not the model gap_fit trains")
    directory = Path(directory)
    names = []
    for k, (Z, s) in enumerate(zip(model.sparse.vectors, model.sparse.cutoffs)):
        path = directory / f"sparse_{k}.txt"
        with atomic_output(path) as tmp:
            write_sparse_file(tmp, Z, s)
        names.append(path.name if referenced_from is None else str(Path(referenced_from) / path.name))
    args = model.spec.gap_fit_args(list(model.sparse.species), sparse_files=names)
    with atomic_output(directory / ARGS_FILE) as tmp:
        Path(tmp).write_text(args + "\n")
    return args
