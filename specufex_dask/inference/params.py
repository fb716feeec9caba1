"""The parameters of the estimators and of the pipeline: one table of rules and defaults.

Every constructor argument of :class:`~specufex_dask.models.BayesianNonparametricNMF`,
:class:`~specufex_dask.models.BayesianHMM` and :class:`~specufex_dask.pipeline.SpecUFEx`
is declared here once, as a :class:`Parameter` (name, rule, default); the command line's
configuration (:mod:`specufex_dask.cli.config`) takes its defaults and range checks from
the same rows, so a value is accepted or refused, with the same message, wherever it is
given. The constructors store their arguments unchanged; the rules are checked when a
fit starts (scikit-learn's contract: ``get_params``, ``set_params`` and ``clone`` see
the arguments as given, :class:`ParameterContract`).

The reference's mode fixes some settings (:data:`REFERENCE_FIXED`): a value other than
the reference's is refused by :func:`check_reference_mode`, never replaced silently.

A row is ``resumable`` when a fit resumed from a checkpoint may take another value (the
step budget, the tolerance, the cluster, the reporting); every other row shapes the
fitted model or its minibatches, and a resumed fit refuses a value other than the
checkpoint's (:class:`ResumeMismatch`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "AUTO_BATCH_SIZE",
    "COMPAT_MODES",
    "HMM_INITS",
    "HMM_PARAMETERS",
    "MIN_PATTERN_SHARE",
    "NMF_PARAMETERS",
    "PIPELINE_PARAMETERS",
    "REFERENCE_FIXED",
    "REQUIRED",
    "Parameter",
    "ParameterContract",
    "ResumeMismatch",
    "Rule",
    "check_parameters",
    "check_reference_mode",
    "reference_mode_message",
    "resumable_names",
    "setting_differences",
    "shaping_names",
]

COMPAT_MODES = ("default", "specufex")
LIKELIHOOD_SCALES = ("frames", "spectrograms")
HMM_INITS = ("data", "random")
"""Starts of q(B) (the HMM's ``init``) and of q(W) (the NMF's)."""
MIN_PATTERN_SHARE = 1e-2
"""Default share of the data's counts below which the default mode prunes a pattern."""
AUTO_BATCH_SIZE = 64
"""The pipeline's events per SVI step for ``batch_size="auto"`` in the default mode."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""The default of a parameter without one (a positional argument)."""


@dataclass(frozen=True)
class Rule:
    """What a parameter's value must be.

    Attributes
    ----------
    text : str
        The rule in words, as messages quote it ("a positive integer or None").
    test : callable
        ``test(value) -> bool``.
    invalid : tuple
        Values the rule refuses (the tests try each of them on every surface).
    """

    text: str
    test: Callable[[Any], bool] = field(repr=False)
    invalid: tuple[Any, ...] = ()

    def message(self, name: str, value: Any) -> str:
        """``"{name} must be {text}, got {value!r}"``."""
        return f"{name} must be {self.text}, got {value!r}"

    def check(self, name: str, value: Any) -> None:
        """Raise ``ValueError(message)`` unless ``value`` follows the rule."""
        try:
            holds = bool(self.test(value))
        except (TypeError, ValueError):
            holds = False
        if not holds:
            raise ValueError(self.message(name, value))


def _integer(value: Any, low: int) -> bool:
    return (
        isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= low
    )


def _real(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _or_none(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or test(value)


def _float_dtype(value: Any) -> bool:
    return np.dtype(value) in (np.dtype(np.float32), np.dtype(np.float64))


def _seed(value: Any) -> bool:
    return value is None or isinstance(value, np.random.SeedSequence) or _integer(value, 0)


def _shape(value: Any) -> bool:
    values = tuple(value)
    return len(values) == 3 and all(_integer(v, 1) for v in values)


POSITIVE_INT = Rule("a positive integer", lambda v: _integer(v, 1), (0, -2, 2.5, True))
POSITIVE_INT_OR_NONE = Rule(
    "a positive integer or None", _or_none(lambda v: _integer(v, 1)), (0, -1, 1.5)
)
SEED = Rule("a nonnegative int or None", _seed, (-3, 1.5))
TOLERANCE = Rule(
    "a nonnegative number or None", _or_none(lambda v: _real(v) and v >= 0), (-1.0, math.inf)
)
STEP_SIZE = Rule("in (0, 1] or None", _or_none(lambda v: _real(v) and 0 < v <= 1), (0.0, 1.5))
SHARE = Rule(
    "in (0, 1), None or 'auto'",
    lambda v: v is None or (isinstance(v, str) and v == "auto") or (_real(v) and 0 < v < 1),
    (0.0, 1.0, "none"),
)
COSINE = Rule("in (0, 1] or None", _or_none(lambda v: _real(v) and 0 < v <= 1), (0.0, 1.01))
COMPAT = Rule(f"one of {COMPAT_MODES}", lambda v: v in COMPAT_MODES, ("matlab",))
INIT = Rule(f"one of {HMM_INITS} or None", lambda v: v is None or v in HMM_INITS, ("kmeans",))
LIKELIHOOD_SCALE = Rule(
    f"one of {LIKELIHOOD_SCALES}", lambda v: v in LIKELIHOOD_SCALES, ("columns",)
)
DTYPE = Rule("float32 or float64", _float_dtype, (np.int32, "float16"))
BOOLEAN = Rule("True or False", lambda v: isinstance(v, (bool, np.bool_)), ("yes",))
SHAPE = Rule(
    "(n_events, n_frequencies, n_times) of positive integers", _shape, ((40, 7), (0, 4, 4))
)
ANY = Rule("anything", lambda v: True)
CALLABLE_OR_NONE = Rule("a callable or None", lambda v: v is None or callable(v), ("print",))
SECONDS_OR_NONE = Rule(
    "a positive number of seconds or None", _or_none(lambda v: _real(v) and v > 0), (0.0, -1.0)
)
CHECKPOINT_EVERY = Rule(
    "a positive integer or 'auto'",
    lambda v: (isinstance(v, str) and v == "auto") or _integer(v, 1),
    (0, 2.5, None, "often"),
)
PIPELINE_BATCH_SIZE = Rule(
    "a positive integer, None (every event in every step) or 'auto'",
    lambda v: v is None or (isinstance(v, str) and v == "auto") or _integer(v, 1),
    (0, 2.5, "all"),
)


@dataclass(frozen=True)
class Parameter:
    """One constructor argument: its name, rule and default, and whether a resumed fit
    may change it (``resumable``: it shapes neither the model nor its minibatches)."""

    name: str
    rule: Rule
    default: Any = REQUIRED
    resumable: bool = False

    def check(self, value: Any, name: str | None = None) -> None:
        """Raise a ValueError naming ``name`` (default the parameter's) unless ``value``
        follows the rule."""
        self.rule.check(self.name if name is None else name, value)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def _table(*parameters: Parameter) -> dict[str, Parameter]:
    return {parameter.name: parameter for parameter in parameters}


# Rows shared by several owners are the same objects.
_NUM_PAT = Parameter("num_pat", POSITIVE_INT, 75)
_NUM_STATE = Parameter("num_state", POSITIVE_INT, 15)
_COMPAT = Parameter("compat", COMPAT, "default")
_BATCH_SIZE = Parameter("batch_size", POSITIVE_INT, 1)
_MAX_STEPS = Parameter("max_steps", POSITIVE_INT_OR_NONE, None, resumable=True)
_TOL = Parameter("tol", TOLERANCE, None, resumable=True)
_STEP_SIZE = Parameter("step_size", STEP_SIZE, None)
_RANDOM_STATE = Parameter("random_state", SEED, None)
_DTYPE = Parameter("dtype", DTYPE, np.float64)
_VERBOSE = Parameter("verbose", BOOLEAN, False, resumable=True)

NMF_PARAMETERS = _table(
    Parameter("X_shape", SHAPE),
    _NUM_PAT,
    _COMPAT,
    _BATCH_SIZE,
    _MAX_STEPS,
    _TOL,
    _STEP_SIZE,
    Parameter("anneal", BOOLEAN, True),
    Parameter("min_pattern_share", SHARE, "auto"),
    Parameter("merge_cosine", COSINE, None),
    Parameter("likelihood_scale", LIKELIHOOD_SCALE, "spectrograms"),
    Parameter("init", INIT, None),
    _RANDOM_STATE,
    _DTYPE,
    _VERBOSE,
)
"""The parameters of :class:`~specufex_dask.models.BayesianNonparametricNMF`, in order."""

HMM_PARAMETERS = _table(
    Parameter("num_pat", POSITIVE_INT),
    Parameter("gain", ANY),  # its length is num_pat: checked by the model
    _NUM_STATE,
    _COMPAT,
    _BATCH_SIZE,
    _MAX_STEPS,
    _TOL,
    _STEP_SIZE,
    Parameter("n_eff", POSITIVE_INT_OR_NONE, None),
    Parameter("init", INIT, None),
    _RANDOM_STATE,
    _DTYPE,
    _VERBOSE,
)
"""The parameters of :class:`~specufex_dask.models.BayesianHMM`, in order."""

PIPELINE_PARAMETERS = _table(
    _NUM_PAT,
    _NUM_STATE,
    _COMPAT,
    Parameter("nmf_steps", POSITIVE_INT_OR_NONE, None, resumable=True),
    Parameter("hmm_steps", POSITIVE_INT_OR_NONE, None, resumable=True),
    Parameter("batch_size", PIPELINE_BATCH_SIZE, "auto"),
    Parameter("tol", TOLERANCE, 1e-4, resumable=True),
    Parameter("random_state", SEED, 0),
    Parameter("checkpoint_every", CHECKPOINT_EVERY, "auto", resumable=True),
    Parameter("client", ANY, None, resumable=True),
    # the engine computes the same bits for any split of the events
    Parameter("chunk_events", POSITIVE_INT, 256, resumable=True),
    Parameter("dtype", DTYPE, "float64"),
    Parameter("progress", CALLABLE_OR_NONE, None, resumable=True),
    Parameter("no_worker_timeout", SECONDS_OR_NONE, 180.0, resumable=True),
)
"""The parameters of :class:`~specufex_dask.pipeline.SpecUFEx`, in order."""

_ONE_AT_A_TIME = "steps through the data one event at a time as the reference does"
REFERENCE_FIXED: dict[str, tuple[tuple[Any, ...], str]] = {
    "batch_size": ((1, "auto"), _ONE_AT_A_TIME),
    "max_steps": ((None,), _ONE_AT_A_TIME),
    "tol": ((None,), _ONE_AT_A_TIME),
    "min_pattern_share": (("auto", None), "prunes patterns only by E[a] as the reference does"),
    "merge_cosine": ((None,), "never merges patterns, as the reference"),
    "likelihood_scale": (
        ("spectrograms", "frames"),
        "scales the statistics by the frames, as the reference",
    ),
    "init": ((None, "random"), "starts q(W) and q(B) from the reference's random draws"),
}
"""Settings ``compat="specufex"`` fixes: the values it accepts, and why."""


def reference_mode_message(name: str, value: Any) -> str:
    """Why ``compat="specufex"`` refuses ``name=value``."""
    return f"compat='specufex' {REFERENCE_FIXED[name][1]}; {name}={value!r} needs compat='default'"


def check_reference_mode(compat: Any, values: Mapping[str, Any], names: Iterable[str]) -> None:
    """Refuse, in the reference's mode, a value of ``names`` it does not accept."""
    if compat != "specufex":
        return
    for name in names:
        value = values[name]
        allowed = REFERENCE_FIXED[name][0]
        if not any(value is a or (a is not None and value == a) for a in allowed):
            raise ValueError(reference_mode_message(name, value))


def resumable_names(table: Mapping[str, Parameter]) -> tuple[str, ...]:
    """The parameters of ``table`` a resumed fit may change, in the table's order."""
    return tuple(name for name, parameter in table.items() if parameter.resumable)


def shaping_names(table: Mapping[str, Parameter]) -> tuple[str, ...]:
    """The parameters of ``table`` that shape the fit: a resumed fit keeps them."""
    return tuple(name for name, parameter in table.items() if not parameter.resumable)


def setting_differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``"name: checkpoint X, now Y"`` for every name of both mappings whose values differ,
    in the order of ``now``."""
    return [
        f"{name}: checkpoint {saved[name]!r}, now {value!r}"
        for name, value in now.items()
        if name in saved and saved[name] != value
    ]


class ResumeMismatch(ValueError):
    """A fit asked to resume from a checkpoint written with other settings.

    Parameters
    ----------
    where : str
        The archive of the checkpoint.
    differences : list of str
        One line per setting (:func:`setting_differences`).

    The message is a first line, one indented line per difference and how to proceed.
    """

    advice: ClassVar[str] = (
        "to resume, give the checkpoint's values; to start afresh, fit without resume"
    )

    def __init__(self, where: str, differences: list[str]) -> None:
        self.where = where
        self.differences = list(differences)
        super().__init__(
            "\n".join([self.headline, *(f"  {line}" for line in differences), f"  {self.advice}"])
        )

    @property
    def headline(self) -> str:
        """The first line: where, and how many settings differ."""
        count = len(self.differences)
        settings = "setting differs" if count == 1 else "settings differ"
        return f"cannot resume the fit in {self.where}: {count} {settings} from its checkpoint's"


def check_parameters(table: Mapping[str, Parameter], values: Mapping[str, Any]) -> None:
    """Check every parameter of ``table`` in ``values`` by its rule, in the table's order."""
    for name, parameter in table.items():
        if name in values:
            parameter.check(values[name])


class ParameterContract:
    """scikit-learn's parameter contract over a table of :class:`Parameter`.

    ``__init__`` stores every argument unchanged, under its own name, except for the
    names the reference uses for fitted state (``_state_names``: the NMF's ``num_pat``
    is its current number of patterns, the HMM's ``gain`` a float vector); those keep
    the argument as ``_<name>_argument``. ``get_params`` returns the arguments,
    ``set_params`` replaces them (and calls :meth:`_parameters_set`), so
    ``sklearn.base.clone`` builds an unfitted copy. No scikit-learn import is needed.
    """

    _parameter_table: ClassVar[Mapping[str, Parameter]] = {}
    _state_names: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def _stored_name(cls, name: str) -> str:
        return f"_{name}_argument" if name in cls._state_names else name

    def _store_arguments(self, arguments: Mapping[str, Any]) -> None:
        for name in self._parameter_table:
            setattr(self, self._stored_name(name), arguments[name])

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, as given (``deep`` is accepted for scikit-learn)."""
        return {name: getattr(self, self._stored_name(name)) for name in self._parameter_table}

    def set_params(self, **params: Any) -> Any:
        """Replace constructor arguments; returns the estimator."""
        for name, value in params.items():
            if name not in self._parameter_table:
                raise ValueError(
                    f"Invalid parameter {name!r} for estimator {type(self).__name__}. "
                    f"Valid parameters are: {sorted(self._parameter_table)!r}."
                )
            setattr(self, self._stored_name(name), value)
        self._parameters_set(set(params))
        return self

    def _parameters_set(self, names: set[str]) -> None:
        """Called by :meth:`set_params` with the names it set."""

    def _check_parameters(self) -> None:
        """Check every argument by the table (called when a fit starts)."""
        check_parameters(self._parameter_table, self.get_params())
