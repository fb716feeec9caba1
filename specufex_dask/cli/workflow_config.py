"""Configuration files of the SpecUFEx workflows, read as this package's sections.

The SpecUFEx workflow notebooks and scripts keep their settings in a YAML file with the
sections ``paths``, ``dataParams``, ``sgramParams``, ``specufexParams`` and
``clusterParams``. :func:`translate` maps every key it knows to a key of
:class:`~specufex_dask.cli.config.Config` and says, for each key of the file, where it
went or why it could not go anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["WORKFLOW_SECTIONS", "is_workflow_config", "translate"]

WORKFLOW_SECTIONS = ("paths", "dataParams", "sgramParams", "specufexParams", "clusterParams")
"""Top-level sections of a SpecUFEx workflow configuration file."""


def _fraction(value: Any) -> Any:
    """A proportion of variance as a fraction: the workflows write 0.8 or 80."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 1 < value <= 100:
        return value / 100.0
    return value


# (section, key) -> (our section, our key, conversion)
_DIRECT: dict[tuple[str, str], tuple[str, str, Callable[[Any], Any]]] = {
    ("dataParams", "sampling_rate"): ("spectrograms", "fs", lambda v: v),
    ("sgramParams", "fmin"): ("spectrograms", "fmin", lambda v: v),
    ("sgramParams", "fmax"): ("spectrograms", "fmax", lambda v: v),
    ("sgramParams", "winLen_Sec"): ("spectrograms", "window_s", lambda v: v),
    ("sgramParams", "fracOverlap"): ("spectrograms", "overlap", lambda v: v),
    ("sgramParams", "nfft"): ("spectrograms", "nfft", lambda v: v),
    ("specufexParams", "N_patterns_NMF"): ("nmf", "num_pat", lambda v: v),
    ("specufexParams", "nmf_batchsz"): ("nmf", "batch_size", lambda v: v),
    ("specufexParams", "nmf_nbatch"): ("nmf", "steps", lambda v: v),
    ("specufexParams", "N_states_HMM"): ("hmm", "num_state", lambda v: v),
    ("specufexParams", "hmm_nbatch"): ("hmm", "steps", lambda v: v),
    ("clusterParams", "PVE"): ("clustering", "pca_variance", _fraction),
    ("clusterParams", "numPCA"): ("clustering", "pca_components", lambda v: v),
}

# Keys with no counterpart, and why.
_NOT_MAPPED = {
    "paths": "the sources and the archive are given on the command line",
    ("dataParams", "network"): "every network is read; each event keeps its network code",
    ("dataParams", "station"): "select traces with --station on the command line",
    ("dataParams", "channel"): "select traces with --channel on the command line",
    ("dataParams", "channel_ID"): "traces are selected by their codes, not their position",
    ("dataParams", "filetype"): "the format is detected, or given with --format",
    ("sgramParams", "sgramType"): "the spectrogram is the only transform",
    ("clusterParams", "runSilhouette"): "a range of K is always chosen by silhouette",
}


def is_workflow_config(document: Any) -> bool:
    """Whether a YAML document is a SpecUFEx workflow configuration (one of its sections
    at the top level)."""
    return isinstance(document, Mapping) and any(s in document for s in WORKFLOW_SECTIONS)


def translate(document: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """This package's configuration sections from a workflow configuration.

    Parameters
    ----------
    document : mapping
        The parsed YAML file.

    Returns
    -------
    (sections, lines)
        ``sections``: ``{section: {key: value}}`` for :func:`merge_config`; ``lines``:
        one line per key of the file, ``sgramParams.winLen_Sec = 2 -> spectrograms.window_s``
        or ``not mapped: dataParams.station (select traces with --station ...)``.

    Raises
    ------
    ValueError
        When ``hmm_batchsz`` differs from ``nmf_batchsz`` (one batch size serves both
        stages here), or ``minK`` comes without ``maxK``.

    Examples
    --------
    >>> sections, lines = translate({"specufexParams": {"N_states_HMM": 8}})
    >>> sections, lines
    ({'hmm': {'num_state': 8}}, ['specufexParams.N_states_HMM = 8 -> hmm.num_state'])
    """
    sections: dict[str, dict[str, Any]] = {}
    lines: list[str] = []
    for section, values in document.items():
        if section not in WORKFLOW_SECTIONS:
            lines.append(f"not mapped: {section} (not a section of the workflow files)")
            continue
        if section == "paths":
            lines.append(f"not mapped: paths ({_NOT_MAPPED['paths']})")
            continue
        for key, value in dict(values or {}).items():
            lines.append(_translate_key(section, str(key), value, document, sections))
    return sections, lines


def _translate_key(
    section: str,
    key: str,
    value: Any,
    document: Mapping[str, Any],
    sections: dict[str, dict[str, Any]],
) -> str:
    """Put one key of the file into ``sections``; the line that says what happened."""
    name = f"{section}.{key}"
    if (section, key) in _DIRECT:
        ours, our_key, convert = _DIRECT[(section, key)]
        sections.setdefault(ours, {})[our_key] = convert(value)
        return f"{name} = {value!r} -> {ours}.{our_key}"
    clusters = dict(document.get("clusterParams") or {})
    if section == "clusterParams" and key in ("minK", "maxK"):
        if "minK" not in clusters or "maxK" not in clusters:
            raise ValueError("clusterParams: minK and maxK go together (the range of K swept)")
        low, high = int(clusters["minK"]), int(clusters["maxK"])
        counts: int | list[int] = list(range(low, high + 1)) if high > low else low
        sections.setdefault("clustering", {})["n_clusters"] = counts
        return f"{name} = {value!r} -> clustering.n_clusters (sweep {low}-{high})"
    if section == "specufexParams" and key == "hmm_batchsz":
        nmf_batch = dict(document.get("specufexParams") or {}).get("nmf_batchsz")
        if nmf_batch is not None and nmf_batch != value:
            raise ValueError(
                f"specufexParams: hmm_batchsz {value} differs from nmf_batchsz {nmf_batch}, "
                "but one batch size (nmf.batch_size) serves both stages here; make them equal"
            )
        return f"{name} = {value!r} -> nmf.batch_size (the batch size of both stages)"
    reason = _NOT_MAPPED.get((section, key), "no setting of this package corresponds")
    return f"not mapped: {name} = {value!r} ({reason})"
