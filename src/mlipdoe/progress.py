"""Progress reporting hooks: the library calls them, the CLI draws them."""

from __future__ import annotations

from contextlib import contextmanager


class Progress:
    """No-op progress sink; subclass to display.

    ``stage(name, total)`` opens a stage of ``total`` units (frames or picks; None when
    unknown in advance) and yields a callable ``advance(units, atoms=0)``.
    """

    @contextmanager
    def stage(self, name: str, total: int | None):
        yield lambda units=1, atoms=0: None


NULL_PROGRESS = Progress()
