"""Labels kept away from the selectors until a design is frozen.

The benchmark's claim ("the design was chosen without labels") is enforced here:
selectors only ever see :attr:`LabelVault.frames`, fresh ``Atoms`` built from
numbers, positions, cell, pbc and ``config_type`` — no calculator, no other
``info``/``arrays`` entries. Labels come out only through :meth:`LabelVault.labels`,
and only for a :class:`FrozenDesign` this vault issued.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ase import Atoms

from ..exceptions import InputError, MlipdoeError
from ..fit import Labels, read_labels


class LabelAccessError(MlipdoeError):
    """Labels were requested for something that is not a frozen design of this vault."""


def strip_labels(atoms: Atoms) -> Atoms:
    """A label-free copy: numbers, positions, cell, pbc and ``info["config_type"]`` only."""
    clean = Atoms(numbers=atoms.numbers.copy(), positions=atoms.positions.copy(), cell=atoms.cell.array.copy(),
                  pbc=atoms.pbc.copy())
    if "config_type" in atoms.info:
        clean.info["config_type"] = atoms.info["config_type"]
    return clean


@dataclass(frozen=True)
class FrozenDesign:
    """An immutable design (pool indices in selection order) issued by a vault."""

    strategy: str
    selected: tuple[int, ...]
    token: int


class LabelVault:
    """Holds a pool's labels; hands out label-free frames for selection.

    Parameters
    ----------
    frames : list of ase.Atoms
        The labelled pool (labels from the calculator or ``info``/``arrays`` keys).
    energy_key, forces_key : str
        Where the labels live when there is no calculator.
    """

    def __init__(self, frames: Sequence[Atoms], *, energy_key: str = "energy", forces_key: str = "force"):
        self.__labels = read_labels(frames, energy_key=energy_key, forces_key=forces_key)
        self.frames: list[Atoms] = [strip_labels(a) for a in frames]
        self.__issued: set[int] = set()
        self.has_forces = self.__labels.forces is not None

    def __len__(self) -> int:
        return len(self.frames)

    def freeze(self, strategy: str, selected: Sequence[int]) -> FrozenDesign:
        """Fix a design; from now on its labels may be read."""
        sel = tuple(int(i) for i in selected)
        if any(not 0 <= i < len(self.frames) for i in sel):
            raise InputError(f"design {strategy!r} has indices outside the pool ({len(self.frames)} frames)")
        design = FrozenDesign(strategy, sel, id(object()))
        self.__issued.add(id(design))
        return design

    def labels(self, design: FrozenDesign) -> Labels:
        """Labels of a frozen design's frames (in its order)."""
        if not isinstance(design, FrozenDesign) or id(design) not in self.__issued:
            raise LabelAccessError("labels are released only for designs frozen by this vault (call freeze first)")
        return self.__labels.subset(design.selected)
