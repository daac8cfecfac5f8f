"""Search strategies over a :class:`~mlipdoe.criteria.Criterion`; no criterion maths here.

Optimizers use only the criterion protocol (``gains``, ``add``, ``remove``, ``value``,
``snapshot``/``restore``, ``reset``/``refresh``, ``tie_break``, ``submodular``) and never
import a concrete criterion class.
"""

from .budgeted import cost_greedy
from .exchange import ExchangeResult, exchange
from .greedy import GreedyResult, all_gains, best_candidate, greedy, lazy_greedy

__all__ = ["ExchangeResult", "GreedyResult", "all_gains", "best_candidate", "cost_greedy", "exchange", "greedy",
           "lazy_greedy"]
