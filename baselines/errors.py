"""Exceptions of the baselines package. All are ``ValueError`` subclasses so callers that only
know the contract ("bad arguments raise ValueError") keep working."""

from __future__ import annotations


class BaselinesError(ValueError):
    """Base class of every error raised by ``baselines``."""


class UnknownMethodError(BaselinesError):
    """``merge``/``method_spec`` was given a method name that is not registered."""


class HyperparameterError(BaselinesError):
    """An unknown hyperparameter, a value of the wrong type, or a value out of range."""


class MergeInputError(BaselinesError):
    """The pretrained / expert state dicts cannot be merged (keys, shapes, dtypes, NaN/inf...).

    The message names the expert (index, and name when given) and the tensor key, and says the fix.
    """


class NonFiniteError(BaselinesError):
    """A merge produced NaN/inf: a merged tensor, an adapted block, or a training loss inside a merge.

    The message names the tensor (or block), the hyperparameters that scale the result and their
    values, and what to lower. Nothing non-finite is returned or written.
    """


class RegistrationError(RuntimeError):
    """A method module registered itself wrongly. Raised at import time, never at merge time."""
