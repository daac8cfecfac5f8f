"""Search strategies over a :class:`~mlipdoe.criteria.Criterion`; no criterion maths here."""

from .greedy import GreedyResult, greedy

__all__ = ["GreedyResult", "greedy"]
