"""Waveform to spectrogram, as the SpecUFEx workflows do it (ALGORITHM.md section 4).

Per event waveform x (N samples at fs Hz): demean; optionally x / max|x|;
``scipy.signal.spectrogram(fs, nperseg=window_s * fs, noverlap=int(nperseg * overlap), nfft,
scaling="spectrum", mode="magnitude")``; keep fmin <= f <= fmax; divide by the median of what
is kept; 20 log10 (zeros stay zero); clip below 0.

Plain NumPy/SciPy: no dask, xarray or I/O here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from specufex_dask.common import check_positive_int


class InvalidWaveformError(ValueError):
    """A waveform that cannot give a spectrogram (the message is the rejection reason)."""


class Spectrogram(NamedTuple):
    """The result of :func:`waveform_to_spectrogram`.

    Attributes
    ----------
    transformed : ndarray of shape (n_frequencies, n_times)
        dB above the median, clipped at 0: what the archive stores.
    raw : ndarray of shape (n_frequencies, n_times)
        The magnitude spectrogram in the kept band, before the median normalisation.
    frequency : ndarray of shape (n_frequencies,)
        Hz.
    time : ndarray of shape (n_times,)
        Seconds from the first sample (segment centres).
    median : float
        The median of ``raw``, the per-event normalisation constant.
    """

    transformed: np.ndarray
    raw: np.ndarray
    frequency: np.ndarray
    time: np.ndarray
    median: float


@dataclass(frozen=True)
class SpectrogramSettings:
    """The fields of :class:`SpectrogramParameters` but its scipy window, unchecked: also
    those of the command line's configuration section ``spectrograms``."""

    fs: float | None = None
    window_s: float = 1.0
    overlap: float = 0.25
    nfft: int | None = None
    fmin: float | None = None
    fmax: float | None = None
    normalize_waveform: bool = True
    n_samples: int | None = None
    detrend: Literal["linear", "demean", "simple"] | None = None
    taper: float | None = None
    bandpass_fmin: float | None = None
    bandpass_fmax: float | None = None
    bandpass_corners: int = 4
    remove_response: str | None = None
    response_output: Literal["VEL", "DISP", "ACC"] = "VEL"


WAVEFORM_STEP_DEFAULTS: dict[str, Any] = {
    "detrend": None,
    "taper": None,
    "bandpass_fmin": None,
    "bandpass_fmax": None,
    "bandpass_corners": 4,
    "remove_response": None,
    "response_output": "VEL",
}
"""The waveform steps before the spectrogram (:mod:`specufex_dask.ingest.waveform`), all
off: the value of each in an archive written before they existed."""


@dataclass(frozen=True)
class SpectrogramParameters(SpectrogramSettings):
    """Parameters of the preprocessing (ALGORITHM.md section 4).

    Parameters
    ----------
    fs : float or None, default=None
        Expected sampling rate in Hz. None takes each trace's own rate (ingest then requires
        all inputs to share the first good input's rate).
    window_s : float, default=1.0
        Segment length in seconds; ``nperseg = int(window_s * fs)``.
    overlap : float, default=0.25
        Fraction of a segment shared with the next one, in [0, 1).
    nfft : int or None, default=None
        FFT length; None means nperseg.
    fmin, fmax : float or None, default=None
        Band kept, inclusive; None means 0 and Nyquist.
    normalize_waveform : bool, default=True
        Divide the demeaned waveform by its maximum absolute value.
    n_samples : int or None, default=None
        Use the first ``n_samples`` samples of each waveform; shorter ones are rejected.
        None uses the whole waveform (ingest then requires equal lengths).
    detrend : {"linear", "demean", "simple"} or None, default=None
        ObsPy ``Trace.detrend`` of each waveform before anything else; None: off.
    taper : float or None, default=None
        Hann taper of this fraction of the waveform at each end (ObsPy ``Trace.taper``,
        in (0, 0.5]); None: off.
    bandpass_fmin, bandpass_fmax : float or None, default=None
        Corners of a Butterworth band-pass (ObsPy ``Trace.filter("bandpass")``), in Hz;
        only one of them gives a high-pass or a low-pass; None for both: off.
    bandpass_corners : int, default=4
        Corners (order) of the filter.
    remove_response : str or None, default=None
        StationXML file whose responses are removed (ObsPy ``Trace.remove_response``);
        None: off.
    response_output : {"VEL", "DISP", "ACC"}, default="VEL"
        Ground motion given by the response removal.
    window : str or tuple, default=("tukey", 0.25)
        The scipy window (scipy's default for ``spectrogram``, used by the workflows).

    Examples
    --------
    >>> SpectrogramParameters(fs=100.0, nfft=2000, fmin=8, fmax=20).nperseg(100.0)
    100
    """

    window: str | tuple[Any, ...] = ("tukey", 0.25)

    def __post_init__(self) -> None:
        if self.fs is not None and not (math.isfinite(self.fs) and self.fs > 0):
            raise ValueError(f"fs must be a positive number of Hz, got {self.fs!r}")
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError(f"window_s must be positive seconds, got {self.window_s!r}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be a fraction in [0, 1), got {self.overlap!r}")
        for name in ("nfft", "n_samples"):  # whole floats too: attributes of other writers
            value = getattr(self, name)
            check_positive_int(name, None if value is None else int(value))
        if self.fmin is not None and self.fmax is not None and self.fmin > self.fmax:
            raise ValueError(f"fmin {self.fmin} is above fmax {self.fmax}")
        if isinstance(self.window, list):
            object.__setattr__(self, "window", tuple(self.window))
        self._check_waveform_steps()

    def _check_waveform_steps(self) -> None:
        if self.detrend not in (None, "linear", "demean", "simple"):
            raise ValueError(f"detrend must be linear, demean or simple, got {self.detrend!r}")
        if self.taper is not None and not 0 < self.taper <= 0.5:
            raise ValueError(f"taper must be a fraction in (0, 0.5], got {self.taper!r}")
        low, high = self.bandpass_fmin, self.bandpass_fmax
        for name, corner in (("bandpass_fmin", low), ("bandpass_fmax", high)):
            if corner is not None and not (math.isfinite(corner) and corner > 0):
                raise ValueError(f"{name} must be a positive number of Hz, got {corner!r}")
        if low is not None and high is not None and not low < high:
            raise ValueError(
                f"band-pass needs 0 < bandpass_fmin < bandpass_fmax, got {low}, {high}"
            )
        check_positive_int("bandpass_corners", int(self.bandpass_corners))
        if self.response_output not in ("VEL", "DISP", "ACC"):
            raise ValueError(
                f"response_output must be VEL, DISP or ACC, got {self.response_output!r}"
            )

    @property
    def has_waveform_steps(self) -> bool:
        """Whether any waveform step (detrend, taper, band-pass, response) is on."""
        return any(
            getattr(self, name) is not None
            for name in ("detrend", "taper", "bandpass_fmin", "bandpass_fmax", "remove_response")
        )

    def nperseg(self, fs: float) -> int:
        """Samples per segment at ``fs``: ``int(window_s * fs)`` as in the workflows.

        A tiny tolerance keeps e.g. 0.29 s * 100 Hz at 29 samples despite rounding.
        """
        return int(math.floor(self.window_s * fs + 1e-9))

    def noverlap(self, fs: float) -> int:
        """Samples shared by consecutive segments: ``int(nperseg * overlap)``."""
        return int(self.nperseg(fs) * self.overlap)

    def resolved(self, fs: float) -> SpectrogramParameters:
        """A copy with ``fs`` and ``nfft`` filled in."""
        nfft = self.nperseg(fs) if self.nfft is None else int(self.nfft)
        return dataclasses.replace(self, fs=float(fs), nfft=nfft)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with nperseg and noverlap when fs is known."""
        values = dataclasses.asdict(self)
        values["window"] = list(self.window) if isinstance(self.window, tuple) else self.window
        if self.fs is not None:
            values["nperseg"] = self.nperseg(self.fs)
            values["noverlap"] = self.noverlap(self.fs)
        return values

    def to_json(self) -> str:
        """The ``spectrogram_parameters`` attribute of the archive."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SpectrogramParameters:
        """Inverse of :meth:`to_dict` (ignores derived keys)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def spectrogram_axes(
    params: SpectrogramParameters, fs: float, n_samples: int
) -> tuple[np.ndarray, np.ndarray]:
    """Frequency and time axes of the spectrogram of ``n_samples`` samples at ``fs``.

    Computed without data, so that ingest can compare inputs cheaply.
    """
    nperseg = params.nperseg(fs)
    noverlap = params.noverlap(fs)
    nfft = nperseg if params.nfft is None else int(params.nfft)
    frequency = np.fft.rfftfreq(nfft, 1.0 / fs)
    step = nperseg - noverlap
    n_times = (n_samples - noverlap) // step
    # Same arithmetic as scipy: segment centres in samples, then divided by fs.
    time = (np.arange(n_times) * step + nperseg / 2) / float(fs)
    return frequency[_band(frequency, params)], time


def _band(frequency: np.ndarray, params: SpectrogramParameters) -> np.ndarray:
    keep = np.ones(frequency.shape, dtype=bool)
    if params.fmin is not None:
        keep &= frequency >= params.fmin
    if params.fmax is not None:
        keep &= frequency <= params.fmax
    return keep


def prepare_waveform(
    waveform: npt.ArrayLike, params: SpectrogramParameters, fs: float
) -> np.ndarray:
    """Cut, check, demean and (optionally) normalise one waveform.

    Raises
    ------
    InvalidWaveformError
        For a multi-dimensional input, non-finite samples, too few samples, or a constant
        (e.g. all-zero) waveform.
    """
    x = np.asarray(waveform)
    if np.ma.isMaskedArray(waveform) and np.ma.getmaskarray(waveform).any():
        raise InvalidWaveformError("gaps: masked samples")
    if x.ndim != 1:
        raise InvalidWaveformError(f"waveform must be one-dimensional, got shape {x.shape}")
    x = x.astype(np.float64)
    nperseg = params.nperseg(fs)
    needed = max(params.n_samples or 0, nperseg)
    if x.size < needed:
        raise InvalidWaveformError(f"too few samples: {x.size} < {needed}")
    if params.n_samples is not None:
        x = x[: params.n_samples]
    bad = ~np.isfinite(x)
    if bad.any():
        raise InvalidWaveformError(
            f"{int(bad.sum())} non-finite (NaN/inf) sample(s), first at index {np.argmax(bad)}"
        )
    x = x - x.mean()
    if params.normalize_waveform:
        peak = np.abs(x).max()
        if peak == 0:
            raise InvalidWaveformError("constant (e.g. all-zero) waveform")
        x = x / peak
    return x


def waveform_to_spectrogram(
    waveform: npt.ArrayLike, params: SpectrogramParameters, fs: float | None = None
) -> Spectrogram:
    """The transformed spectrogram of one waveform (ALGORITHM.md section 4).

    Parameters
    ----------
    waveform : array-like of shape (n_samples,)
        The samples.
    params : SpectrogramParameters
        The preprocessing parameters.
    fs : float, optional
        The waveform's sampling rate; defaults to ``params.fs``. When both are given they
        must agree.

    Returns
    -------
    Spectrogram
        ``(transformed, raw, frequency, time, median)``.

    Raises
    ------
    InvalidWaveformError
        Wrong sampling rate, too few or non-finite samples, constant waveform, or a median
        of 0 (dB undefined).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> params = SpectrogramParameters(fs=100.0, nfft=200, fmin=8, fmax=20)
    >>> waveform_to_spectrogram(rng.standard_normal(2000), params).transformed.shape
    (25, 26)
    """
    from scipy.signal import spectrogram

    if fs is None:
        if params.fs is None:
            raise ValueError("the sampling rate is unknown: give fs or params.fs")
        fs = params.fs
    elif params.fs is not None and not math.isclose(fs, params.fs, rel_tol=1e-9):
        raise InvalidWaveformError(f"sampling rate {fs:g} Hz, expected {params.fs:g} Hz")
    x = prepare_waveform(waveform, params, fs)
    nperseg = params.nperseg(fs)
    frequency, time, magnitude = spectrogram(
        x,
        fs=fs,
        window=params.window,
        nperseg=nperseg,
        noverlap=params.noverlap(fs),
        nfft=params.nfft,
        scaling="spectrum",
        mode="magnitude",
    )
    keep = _band(frequency, params)
    raw = magnitude[keep]
    if raw.size == 0:
        raise ValueError(
            f"no frequency in [{params.fmin}, {params.fmax}] Hz at fs={fs:g} Hz, "
            f"nfft={params.nfft}"
        )
    median = float(np.median(raw))
    if not median > 0:
        raise InvalidWaveformError(f"median of the spectrogram is {median:g} (dB undefined)")
    transformed = to_decibels_above_median(raw, median)
    return Spectrogram(transformed, raw, frequency[keep], time, median)


def to_decibels_above_median(raw: np.ndarray, median: float) -> np.ndarray:
    """``max(20 log10(raw / median), 0)``, with zeros of ``raw`` staying 0."""
    ratio = raw / median
    decibels = np.zeros_like(ratio)
    np.log10(ratio, out=decibels, where=ratio > 0)
    decibels *= 20.0
    return np.clip(decibels, 0.0, None)
