"""One exception hierarchy. The CLI maps every :class:`MlipdoeError` to one line
on stderr and exit code 2."""


class MlipdoeError(Exception):
    """Base class of every error mlipdoe raises on purpose."""


class InputError(MlipdoeError, ValueError):
    """Bad user input: unreadable file, invalid frame, impossible request."""


class ConfigurationError(MlipdoeError, ValueError):
    """Inconsistent hyperparameters or options."""


class NumericalError(MlipdoeError, ArithmeticError):
    """A factorisation failed even after the documented recovery steps."""


class StoreMismatchError(MlipdoeError):
    """An on-disk store was built from other inputs or hyperparameters."""
