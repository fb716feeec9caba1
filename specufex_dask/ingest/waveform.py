"""Waveform steps before the spectrogram: detrend, taper, response removal, filter.

Each is ObsPy's own (``Trace.detrend``, ``Trace.taper``, ``Trace.remove_response``,
``Trace.filter``), applied in that order to each input's waveform when its parameter in
:class:`~specufex_dask.ingest.preprocessing.SpectrogramParameters` is set; all are off by
default, leaving the waveform untouched.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from specufex_dask.ingest.preprocessing import InvalidWaveformError, SpectrogramParameters
from specufex_dask.ingest.readers import import_obspy
from specufex_dask.io.archive import CHANNEL, LOCATION, NETWORK, STARTTIME, STATION

__all__ = ["apply_waveform_steps", "check_inventory", "read_inventory"]


@functools.cache
def read_inventory(path: str) -> Any:
    """The ObsPy inventory of a StationXML file, read once per process."""
    from obspy import read_inventory as obspy_read_inventory

    return obspy_read_inventory(path)


def check_inventory(path: str | Path) -> None:
    """Raise a one-line ValueError unless ``path`` is a readable StationXML inventory."""
    if not Path(path).is_file():
        raise ValueError(f"remove_response: StationXML file {path} not found")
    try:
        read_inventory(str(path))
    except Exception as error:  # any parser failure means "not an inventory"
        raise ValueError(f"remove_response: cannot read StationXML {path}: {error}") from None


def _trace(waveform: np.ndarray, fs: float, metadata: Mapping[str, Any]) -> Any:
    obspy = import_obspy()
    header: dict[str, Any] = {"sampling_rate": fs}
    for key in (NETWORK, STATION, LOCATION, CHANNEL):
        if metadata.get(key) is not None:
            header[key] = str(metadata[key])
    if metadata.get(STARTTIME) is not None:
        header["starttime"] = obspy.UTCDateTime(ns=int(metadata[STARTTIME]))
    return obspy.Trace(np.array(waveform, dtype=np.float64), header=header)


def apply_waveform_steps(
    waveform: np.ndarray,
    fs: float,
    metadata: Mapping[str, Any],
    params: SpectrogramParameters,
) -> np.ndarray:
    """The waveform after the steps ``params`` turns on (unchanged when none is).

    Parameters
    ----------
    waveform : ndarray of shape (n_samples,)
        The samples.
    fs : float
        Their sampling rate, Hz.
    metadata : mapping
        The input's ``network``, ``station``, ``location``, ``channel`` and ``starttime``
        (ns), which pick its response in the inventory.
    params : SpectrogramParameters
        Which steps, with what settings.

    Raises
    ------
    InvalidWaveformError
        When the inventory has no response for the input's channel at its time.
    """
    if not params.has_waveform_steps:
        return waveform
    trace = _trace(waveform, fs, metadata)
    if params.detrend is not None:
        trace.detrend(params.detrend)
    if params.taper is not None:
        trace.taper(max_percentage=params.taper, type="hann")
    if params.remove_response is not None:
        inventory = read_inventory(str(params.remove_response))
        try:
            trace.remove_response(inventory=inventory, output=params.response_output)
        except Exception as error:  # ObsPy raises plain Exceptions for a missing response
            raise InvalidWaveformError(
                f"no response: {trace.id} at {trace.stats.starttime} is not in "
                f"{params.remove_response} ({error})"
            ) from None
    _filter(trace, params.bandpass_fmin, params.bandpass_fmax, int(params.bandpass_corners))
    return trace.data


def _filter(trace: Any, low: float | None, high: float | None, corners: int) -> None:
    """A band-pass, or a high- or low-pass when only one corner is given."""
    if low is not None and high is not None:
        trace.filter("bandpass", freqmin=low, freqmax=high, corners=corners)
    elif low is not None:
        trace.filter("highpass", freq=low, corners=corners)
    elif high is not None:
        trace.filter("lowpass", freq=high, corners=corners)
