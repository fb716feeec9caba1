"""Data sets for tests and benchmarks: planted synthetic events and real records.

Synthetic, with a known answer:

- :func:`planted_waveforms`: seismic-like waveforms of four classes (earthquake, harmonic
  tremor, impulsive bursts, long-period event) in coloured noise, at three difficulty
  levels, for judging whether fingerprints separate event types;
  :func:`planted_spectrograms` turns them into the package's spectrograms.
- :func:`planted_patterns`: Poisson spectrograms made from known spectral patterns and
  activations, for checking that an NMF recovers the patterns.

Real, shipped with installed packages (no network):

- :func:`kw1_record` / :func:`kw1_spectrograms`: 2.6 h of BW.KW1..EHZ (100 Hz) from
  ObsPy's test data, cut into overlapping windows.
- :func:`anmo_record` / :func:`anmo_spectrograms`: one day of IU.ANMO.00.LHZ (1 Hz) from
  ObsPy's test data.
- :func:`bav_spectrograms`: the ten NCSN BAV events of the demo, with the settings of the
  SpecUFEx reference workflow.

Plain NumPy/SciPy; ObsPy (and scikit-learn for :func:`kmeans_ari`) are imported inside
the functions that need them. Every random draw comes from a seeded
``numpy.random.Generator``.
"""

from __future__ import annotations

import csv
import functools
import gzip
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from specufex_dask.ingest.preprocessing import (
    InvalidWaveformError,
    SpectrogramParameters,
    spectrogram_axes,
    waveform_to_spectrogram,
)

__all__ = [
    "ANMO_PARAMETERS",
    "ANMO_STEP_S",
    "ANMO_WINDOW_S",
    "BAV_PARAMETERS",
    "CLASS_NAMES",
    "DIFFICULTIES",
    "KW1_PARAMETERS",
    "KW1_STEP_S",
    "KW1_WINDOW_S",
    "PLANTED_PARAMETERS",
    "PlantedPatterns",
    "PlantedWaveforms",
    "anmo_record",
    "anmo_spectrograms",
    "bav_spectrograms",
    "continuous_windows",
    "kmeans_ari",
    "kw1_record",
    "kw1_spectrograms",
    "planted_patterns",
    "planted_spectrograms",
    "planted_waveforms",
    "record_spectrograms",
]

Seed = int | np.random.Generator

CLASS_NAMES: tuple[str, ...] = ("earthquake", "tremor", "bursts", "long_period")
DIFFICULTIES: tuple[str, ...] = ("easy", "medium", "hard")

#: Spectrograms of planted 20 s waveforms at 100 Hz: 113 frequencies x 39 times.
PLANTED_PARAMETERS = SpectrogramParameters(
    fs=100.0, window_s=1.0, overlap=0.5, nfft=256, fmin=1.0, fmax=45.0
)

#: KW1 windows: 20 s every 10 s, each giving 113 frequencies x 39 times.
KW1_WINDOW_S = 20.0
KW1_STEP_S = 10.0
KW1_PARAMETERS = SpectrogramParameters(
    fs=100.0, window_s=1.0, overlap=0.5, nfft=256, fmin=1.0, fmax=45.0
)

#: ANMO windows: 30 min every 15 min of the 1 Hz LHZ channel, each giving 50 frequencies
#: (0.0156-0.398 Hz) x 55 times (64 s segments, half overlapping).
ANMO_WINDOW_S = 1800.0
ANMO_STEP_S = 900.0
ANMO_PARAMETERS = SpectrogramParameters(
    fs=1.0, window_s=64.0, overlap=0.5, nfft=128, fmin=0.01, fmax=0.4
)

#: The SpecUFEx reference workflow on the BAV events: 241 frequencies x 26 times.
BAV_PARAMETERS = SpectrogramParameters(
    fs=100.0, window_s=1.0, overlap=0.25, nfft=2000, fmin=8.0, fmax=20.0, n_samples=2000
)

KW1_FILE = "BW.KW1._.EHZ.D.2011.090_downsampled.asc.gz"
KW1_FS = 100.0
# The ASCII file has no header; ObsPy's test_spectral_estimation.py gives these.
KW1_STARTTIME = "2011-03-31T00:00:00.180000Z"
ANMO_FILE = "IUANMO.seed"


def _generator(seed: Seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


# --------------------------------------------------------------------------------------
# Planted waveforms
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PlantedWaveforms:
    """Synthetic waveforms of known classes, from :func:`planted_waveforms`.

    Attributes
    ----------
    waveforms : ndarray of float64, shape (n_events, n_samples)
        Signal plus noise.
    labels : ndarray of int64, shape (n_events,)
        Index into ``class_names`` of each event.
    class_names : tuple of str
        ``("earthquake", "tremor", "bursts", "long_period")``.
    fs : float
        Sampling rate in Hz.
    difficulty : str
        ``"easy"``, ``"medium"`` or ``"hard"``.
    snr_db : ndarray of float64, shape (n_events,)
        Drawn signal-to-noise ratio: the signal's loudest 1 s RMS over the noise RMS, dB.
    """

    waveforms: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    fs: float
    difficulty: str
    snr_db: np.ndarray


@dataclass(frozen=True)
class _Profile:
    """Parameter ranges of one difficulty level; onsets are fractions of the window."""

    snr_db: tuple[float, float]
    onset_fraction: tuple[float, float]
    earthquake_fc_hz: tuple[float, float]
    tremor_f0_hz: tuple[float, float]
    burst_fc_hz: tuple[float, float]
    long_period_hz: tuple[float, float]


# Harder levels lose SNR, spread onsets over more of the window, and let the classes' bands
# meet: low-corner earthquakes, high tremor fundamentals and long-period events whose band
# creeps up all land on the same few hertz.
_PROFILES: dict[str, _Profile] = {
    level: _Profile(*ranges)
    for level, ranges in {
        # snr_db, onset_fraction, earthquake_fc_hz, tremor_f0_hz, burst_fc_hz,
        # long_period_hz (the fields of _Profile, in order)
        "easy": ((15.0, 30.0), (0.15, 0.25), (6.0, 15.0), (3.0, 4.5), (20.0, 35.0), (1.5, 2.5)),
        "medium": ((9.0, 19.0), (0.1, 0.3), (4.0, 18.0), (2.0, 5.0), (15.0, 35.0), (1.5, 4.0)),
        "hard": ((6.0, 16.0), (0.05, 0.4), (3.0, 20.0), (1.5, 6.0), (12.0, 35.0), (1.5, 5.5)),
    }.items()
}


def _shaped_noise(
    rng: np.random.Generator,
    n_samples: int,
    fs: float,
    amplitude: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Gaussian noise with amplitude spectrum ``amplitude(f)``, scaled to unit RMS."""
    frequency = np.fft.rfftfreq(n_samples, 1.0 / fs)
    coefficients = rng.standard_normal(frequency.size) + 1j * rng.standard_normal(frequency.size)
    x = np.fft.irfft(coefficients * amplitude(frequency), n_samples)
    return x / np.sqrt(np.mean(x**2))


def _brune_velocity(corner_hz: float, t_star: float) -> Callable[[np.ndarray], np.ndarray]:
    """Velocity spectrum of an omega-squared source with whole-path attenuation ``t*``.

    It peaks at the corner frequency, so the corner sets where an event's energy sits.
    """

    def amplitude(f: np.ndarray) -> np.ndarray:
        return (f / corner_hz) / (1.0 + (f / corner_hz) ** 2) * np.exp(-np.pi * f * t_star)

    return amplitude


def _gaussian_band(centre_hz: float, width_hz: float) -> Callable[[np.ndarray], np.ndarray]:
    def amplitude(f: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * ((f - centre_hz) / width_hz) ** 2)

    return amplitude


def _power_law(alpha: float, floor_hz: float) -> Callable[[np.ndarray], np.ndarray]:
    """Amplitude of 1/f**alpha power; flat below ``floor_hz`` so the DC end stays finite."""

    def amplitude(f: np.ndarray) -> np.ndarray:
        return np.maximum(f, floor_hz) ** (-alpha / 2.0)

    return amplitude


def _envelope(
    t: np.ndarray, onset: float, rise: float, decay: float, emergent: bool = False
) -> np.ndarray:
    """Zero before ``onset``, a rise over ``rise`` s, then exponential decay.

    The rise is linear (impulsive, for short ``rise``) or a raised cosine (emergent).
    """
    since = t - onset
    fraction = np.clip(since / rise, 0.0, 1.0)
    if emergent:
        fraction = 0.5 - 0.5 * np.cos(np.pi * fraction)
    return fraction * np.exp(-np.clip(since - rise, 0.0, None) / decay)


def _earthquake(
    rng: np.random.Generator, t: np.ndarray, fs: float, profile: _Profile
) -> np.ndarray:
    duration = t[-1]
    p_onset = rng.uniform(*profile.onset_fraction) * duration
    s_minus_p = rng.uniform(1.5, 5.0)
    corner = _log_uniform(rng, *profile.earthquake_fc_hz)
    t_star = rng.uniform(0.005, 0.03)
    p_wave = _shaped_noise(rng, t.size, fs, _brune_velocity(corner, t_star)) * _envelope(
        t, p_onset, rise=rng.uniform(0.02, 0.08), decay=rng.uniform(0.3, 1.5)
    )
    # S waves have a lower corner and carry more energy than P waves.
    s_corner = corner * rng.uniform(0.5, 0.8)
    s_wave = _shaped_noise(rng, t.size, fs, _brune_velocity(s_corner, t_star)) * _envelope(
        t, p_onset + s_minus_p, rise=rng.uniform(0.1, 0.4), decay=rng.uniform(1.5, 5.0)
    )
    return p_wave + rng.uniform(1.5, 4.0) * s_wave


def _glide(rng: np.random.Generator, t: np.ndarray, f0: float) -> np.ndarray:
    """Instantaneous fundamental frequency: a linear or slow sinusoidal glide from ``f0``."""
    if rng.random() < 0.5:
        end = f0 * rng.uniform(0.7, 1.4)
        return f0 + (end - f0) * t / t[-1]
    depth = rng.uniform(0.05, 0.2)
    period = rng.uniform(8.0, 40.0)
    return f0 * (1.0 + depth * np.sin(2.0 * np.pi * t / period + rng.uniform(0, 2 * np.pi)))


def _tremor(rng: np.random.Generator, t: np.ndarray, fs: float, profile: _Profile) -> np.ndarray:
    duration = t[-1]
    frequency = _glide(rng, t, _log_uniform(rng, *profile.tremor_f0_hz))
    phase = 2.0 * np.pi * np.cumsum(frequency) / fs
    x = np.zeros_like(t)
    for harmonic in range(1, 2 + int(rng.integers(2, 4))):
        # Overtones above 0.45 fs would alias back into the band.
        if harmonic * frequency.max() < 0.45 * fs:
            weight = rng.uniform(0.4, 1.0) / harmonic
            x += weight * np.sin(harmonic * phase + rng.uniform(0, 2 * np.pi))
    onset = rng.uniform(0.0, 0.15) * duration
    rise = rng.uniform(2.0, 5.0)
    end = onset + rng.uniform(0.7, 0.85) * duration
    fall = rng.uniform(2.0, 4.0)
    up = _envelope(t, onset, rise, decay=np.inf, emergent=True)
    down = np.clip((end - t) / fall, 0.0, 1.0)
    return x * up * (0.5 - 0.5 * np.cos(np.pi * down))


def _bursts(rng: np.random.Generator, t: np.ndarray, fs: float, profile: _Profile) -> np.ndarray:
    duration = t[-1]
    x = np.zeros_like(t)
    n_bursts = int(rng.integers(3, 8))
    # One burst in each of n equal stretches of the window: a swarm spread over the window
    # rather than a cluster that could pass for a single event.
    starts = (np.arange(n_bursts) + rng.uniform(0.0, 1.0, n_bursts)) / n_bursts
    for start in 0.02 + 0.93 * starts:
        corner = _log_uniform(rng, *profile.burst_fc_hz)
        wave = _shaped_noise(rng, t.size, fs, _brune_velocity(corner, rng.uniform(0.001, 0.01)))
        envelope = _envelope(
            t,
            start * duration,
            rise=rng.uniform(0.005, 0.02),
            decay=rng.uniform(0.05, 0.3),
        )
        x += _log_uniform(rng, 0.3, 1.0) * wave * envelope
    return x


def _long_period(
    rng: np.random.Generator, t: np.ndarray, fs: float, profile: _Profile
) -> np.ndarray:
    duration = t[-1]
    centre = rng.uniform(*profile.long_period_hz)
    band = _gaussian_band(centre, rng.uniform(0.3, 0.8))
    envelope = _envelope(
        t,
        rng.uniform(*profile.onset_fraction) * duration,
        rise=rng.uniform(2.0, 5.0),
        decay=rng.uniform(3.0, 8.0),
        emergent=True,
    )
    return _shaped_noise(rng, t.size, fs, band) * envelope


_GENERATORS = (_earthquake, _tremor, _bursts, _long_period)


def _loudest_rms(x: np.ndarray, fs: float) -> float:
    """RMS over the loudest second, so that short events get a fair SNR."""
    width = max(1, int(round(fs)))
    power = np.convolve(x**2, np.ones(width) / width, mode="valid")
    return float(np.sqrt(power.max()))


def _planted_event(
    rng: np.random.Generator, label: int, t: np.ndarray, fs: float, profile: _Profile
) -> tuple[np.ndarray, float]:
    signal = _GENERATORS[label](rng, t, fs, profile)
    # The absolute scale is lost in the preprocessing's normalisation, but varying it
    # checks that nothing downstream depends on it.
    signal *= _log_uniform(rng, 1.0, 100.0) / _loudest_rms(signal, fs)
    snr_db = rng.uniform(*profile.snr_db)
    noise = _shaped_noise(rng, t.size, fs, _power_law(rng.uniform(0.5, 1.5), floor_hz=0.5))
    noise *= _loudest_rms(signal, fs) / 10.0 ** (snr_db / 20.0)
    return signal + noise, snr_db


def planted_waveforms(
    n_events: int = 600,
    difficulty: str = "medium",
    seed: Seed = 0,
    fs: float = 100.0,
    duration_s: float = 20.0,
) -> PlantedWaveforms:
    """Seismic-like synthetic waveforms of four known classes, in coloured noise.

    The classes, in equal numbers and shuffled:

    - ``earthquake``: an impulsive P onset and, 1.5-5 s later, a larger S arrival; each a
      band-limited burst (omega-squared source spectrum with a random corner frequency and
      attenuation ``t*``) with an exponentially decaying coda of random length.
    - ``tremor``: a fundamental and 2-3 overtones gliding linearly or sinusoidally in
      frequency, with an emergent envelope lasting most of the window.
    - ``bursts``: 3-7 short impulsive broadband bursts at random times (icequake or
      rockfall-like).
    - ``long_period``: an emergent, slowly decaying signal in a narrow low band.

    Every event has a random absolute amplitude (log-uniform over two decades) and additive
    1/f**alpha noise (alpha uniform in [0.5, 1.5]) at a random SNR.

    Parameters
    ----------
    n_events : int, default=600
        Number of waveforms; a positive multiple of the number of classes (4).
    difficulty : {"easy", "medium", "hard"}, default="medium"
        Harder levels have a lower SNR (easy 15-30 dB, medium 9-19 dB, hard 6-16 dB),
        onsets spread over more of the window (easy 15-25 % of it, hard 5-40 %), and class
        bands that overlap more (from easy to hard: earthquake corners 6-15 Hz to 3-20 Hz,
        tremor fundamentals 3-4.5 Hz to 1.5-6 Hz, long-period centres 1.5-2.5 Hz to
        1.5-5.5 Hz, burst corners 20-35 Hz to 12-35 Hz). As a baseline, k-means (4
        clusters, ``n_init=10``) on the flattened spectrograms of 600 events
        (:func:`kmeans_ari`) gives an adjusted Rand index of 0.91-0.94 at easy, 0.70-0.73
        at medium and 0.31-0.46 at hard (seeds 0-2).
    seed : int or numpy.random.Generator, default=0
        Seed of all the random draws, or the generator to draw from.
    fs : float, default=100.0
        Sampling rate in Hz; at least 50.
    duration_s : float, default=20.0
        Length of every waveform in seconds; at least 10.

    Returns
    -------
    PlantedWaveforms

    Raises
    ------
    ValueError
        For an unknown difficulty, a number of events that is not a positive multiple of
        the number of classes, or a too short window.

    Examples
    --------
    >>> planted = planted_waveforms(8, "easy", seed=1)
    >>> planted.waveforms.shape, np.bincount(planted.labels).tolist()
    ((8, 2000), [2, 2, 2, 2])
    """
    if difficulty not in _PROFILES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    n_classes = len(CLASS_NAMES)
    if n_events < 1 or n_events % n_classes:
        raise ValueError(
            f"n_events must be a positive multiple of the {n_classes} classes, got {n_events}"
        )
    # The bursts' corners reach 35 Hz and tremor overtones need room below Nyquist.
    if not (math.isfinite(fs) and fs >= 50.0):
        raise ValueError(f"fs must be at least 50 Hz, got {fs!r}")
    # Earthquakes need room for an onset, up to 5 s of S-P time and a coda.
    if not duration_s >= 10.0:
        raise ValueError(f"duration_s must be at least 10 s, got {duration_s!r}")
    rng = _generator(seed)
    profile = _PROFILES[difficulty]
    n_samples = int(round(duration_s * fs))
    t = np.arange(n_samples) / fs
    balanced = np.repeat(np.arange(n_classes, dtype=np.int64), n_events // n_classes)
    labels = rng.permutation(balanced)
    waveforms = np.empty((n_events, n_samples))
    snr_db = np.empty(n_events)
    for i, label in enumerate(labels):
        waveforms[i], snr_db[i] = _planted_event(rng, int(label), t, fs, profile)
    return PlantedWaveforms(waveforms, labels, CLASS_NAMES, float(fs), difficulty, snr_db)


def _stack_spectrograms(
    waveforms: Iterable[npt.ArrayLike], params: SpectrogramParameters, fs: float
) -> np.ndarray:
    return np.stack([waveform_to_spectrogram(w, params, fs).transformed for w in waveforms])


def planted_spectrograms(
    planted: PlantedWaveforms, params: SpectrogramParameters = PLANTED_PARAMETERS
) -> np.ndarray:
    """Transformed spectrograms of planted waveforms, by the package's preprocessing.

    Parameters
    ----------
    planted : PlantedWaveforms
        From :func:`planted_waveforms`.
    params : SpectrogramParameters, default=PLANTED_PARAMETERS
        The preprocessing; the default gives 113 frequencies (1.17-44.9 Hz) x 39 times for
        20 s at 100 Hz.

    Returns
    -------
    ndarray of float64, shape (n_events, n_frequencies, n_times)
        dB above each event's median, clipped at 0.
    """
    return _stack_spectrograms(planted.waveforms, params, planted.fs)


def kmeans_ari(
    spectrograms: np.ndarray,
    labels: npt.ArrayLike,
    features: str = "spectrogram",
    seed: int = 0,
) -> float:
    """Adjusted Rand index of k-means on simple spectrogram features: a baseline.

    Parameters
    ----------
    spectrograms : ndarray of shape (n_events, n_frequencies, n_times)
        Transformed (dB) spectrograms.
    labels : array-like of int, shape (n_events,)
        True classes; k-means is given their number of clusters.
    features : {"spectrogram", "mean_spectrum"}, default="spectrogram"
        The flattened spectrogram, or its mean over time (insensitive to onset times).
    seed : int, default=0
        k-means seed (``n_init=10``).

    Returns
    -------
    float
        1 for a perfect clustering, about 0 for a random one.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    spectrograms = np.asarray(spectrograms, dtype=np.float64)
    if features == "spectrogram":
        x = spectrograms.reshape(len(spectrograms), -1)
    elif features == "mean_spectrum":
        x = spectrograms.mean(axis=2)
    else:
        raise ValueError(f"features must be 'spectrogram' or 'mean_spectrum', got {features!r}")
    labels = np.asarray(labels)
    model = KMeans(n_clusters=len(np.unique(labels)), n_init=10, random_state=seed)
    return float(adjusted_rand_score(labels, model.fit_predict(x)))


# --------------------------------------------------------------------------------------
# Planted patterns (spectrogram domain)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PlantedPatterns:
    """Poisson spectrograms with known NMF factors, from :func:`planted_patterns`.

    Attributes
    ----------
    spectrograms : ndarray of float64, shape (n_events, n_frequencies, n_times)
        Poisson counts with mean ``patterns @ activations[i]``; nonnegative integers.
    patterns : ndarray of float64, shape (n_frequencies, n_patterns)
        The spectral patterns W, each column summing to 1.
    activations : ndarray of float64, shape (n_events, n_patterns, n_times)
        The activations H, sparse and gamma distributed.
    """

    spectrograms: np.ndarray
    patterns: np.ndarray
    activations: np.ndarray


def _pattern_columns(rng: np.random.Generator, n_frequencies: int, n_patterns: int) -> np.ndarray:
    """Gaussian bumps at well-separated centres, then one broadband decaying pattern.

    The broadband pattern is notched to zero at the bump centres. Without the notches it
    would not be identifiable: subtracting a little of any bump from it keeps it positive,
    so an NMF could return it with some bumps taken out (cosine ~0.92 to the truth).
    """
    n_bumps = n_patterns - 1
    bins = np.arange(n_frequencies, dtype=np.float64)
    spacing = n_frequencies / n_bumps
    centres = (np.arange(n_bumps) + 0.5 + rng.uniform(-0.15, 0.15, n_bumps)) * spacing
    # Widths well under the spacing keep neighbouring bumps nearly orthogonal.
    widths = rng.uniform(0.08, 0.2, n_bumps) * spacing
    widths = np.maximum(widths, 1.0)
    bumps = np.exp(-0.5 * ((bins[:, None] - centres) / widths) ** 2)
    broadband = 1.0 / (1.0 + bins / (rng.uniform(0.3, 0.6) * n_frequencies))
    broadband *= np.prod(1.0 - bumps, axis=1)
    columns = np.column_stack([bumps, broadband])
    return columns / columns.sum(axis=0)


def planted_patterns(
    n_events: int = 300,
    n_patterns: int = 5,
    n_frequencies: int = 64,
    n_times: int = 40,
    seed: Seed = 0,
    peak: float = 40.0,
) -> PlantedPatterns:
    """Spectrograms drawn from known spectral patterns, to test pattern recovery.

    ``n_patterns - 1`` patterns are Gaussian bumps in frequency at well-separated centres
    with different widths, and the last is broadband (a slow decay with frequency, notched
    to zero at the bump centres so that the factorisation is identifiable). Each
    activation is zero with probability 0.7 and otherwise gamma distributed (shape 2).
    The data are Poisson counts of ``W @ H``, with H scaled so that the 99th percentile of
    ``W @ H`` is ``peak``: values like the package's dB-above-median spectrograms.

    Parameters
    ----------
    n_events : int, default=300
        Number of spectrograms.
    n_patterns : int, default=5
        Number of patterns P, at least 2.
    n_frequencies : int, default=64
        Number of frequencies D; at least 4 per pattern.
    n_times : int, default=40
        Number of times M.
    seed : int or numpy.random.Generator, default=0
        Seed of all the random draws, or the generator to draw from.
    peak : float, default=40.0
        The 99th percentile of the Poisson means.

    Returns
    -------
    PlantedPatterns

    Examples
    --------
    >>> planted = planted_patterns(10, seed=0)
    >>> planted.spectrograms.shape, planted.patterns.shape, planted.activations.shape
    ((10, 64, 40), (64, 5), (10, 5, 40))
    """
    if n_patterns < 2:
        raise ValueError(f"n_patterns must be at least 2, got {n_patterns}")
    if n_frequencies < 4 * n_patterns:
        raise ValueError(
            f"n_frequencies {n_frequencies} is too few for {n_patterns} separated patterns "
            f"(at least {4 * n_patterns})"
        )
    if n_events < 1 or n_times < 1:
        raise ValueError(f"n_events and n_times must be positive, got {n_events}, {n_times}")
    rng = _generator(seed)
    patterns = _pattern_columns(rng, n_frequencies, n_patterns)
    active = rng.random((n_events, n_patterns, n_times)) < 0.3
    activations = np.where(active, rng.gamma(2.0, 1.0, active.shape), 0.0)
    rate = patterns @ activations
    scale = peak / np.percentile(rate, 99)
    activations *= scale
    rate *= scale
    spectrograms = rng.poisson(rate).astype(np.float64)
    return PlantedPatterns(spectrograms, patterns, activations)


# --------------------------------------------------------------------------------------
# Real continuous records
# --------------------------------------------------------------------------------------


def _obspy_test_data() -> Path:
    import obspy

    return Path(os.path.dirname(obspy.__file__)) / "signal" / "tests" / "data"


@functools.lru_cache(maxsize=1)
def _kw1_samples() -> np.ndarray:
    # Parsing the 936001-line text file takes most of a second: do it once per process.
    with gzip.open(_obspy_test_data() / KW1_FILE) as handle:
        samples = np.loadtxt(handle, dtype=np.float64)
    samples.setflags(write=False)
    return samples


def kw1_record() -> tuple[np.ndarray, float, str]:
    """BW.KW1..EHZ, 2.6 h at 100 Hz, from ObsPy's test data.

    Returns
    -------
    samples : ndarray of float64, shape (936001,)
        Raw counts; a fresh copy of the array parsed once per process.
    fs : float
        100.0 Hz.
    starttime : str
        ``"2011-03-31T00:00:00.180000Z"`` (ISO 8601, UTC).
    """
    return _kw1_samples().copy(), KW1_FS, KW1_STARTTIME


@functools.lru_cache(maxsize=1)
def _anmo_trace() -> tuple[np.ndarray, float, str]:
    import obspy

    stream = obspy.read(str(_obspy_test_data() / ANMO_FILE))
    stream = stream.select(network="IU", station="ANMO", location="00", channel="LHZ")
    stream.merge()
    if len(stream) != 1:
        raise ValueError(f"expected one IU.ANMO.00.LHZ trace in {ANMO_FILE}, got {stream}")
    trace = stream[0]
    # Gaps (masked after the merge) become NaN, which the preprocessing rejects.
    samples = np.ma.filled(np.ma.asarray(trace.data, dtype=np.float64), np.nan)
    samples.setflags(write=False)
    return samples, float(trace.stats.sampling_rate), str(trace.stats.starttime)


def anmo_record() -> tuple[np.ndarray, float, str]:
    """IU.ANMO.00.LHZ, one day (2010-01-01) at 1 Hz, from ObsPy's test data.

    The file holds this one trace (86400 samples, no gaps).

    Returns
    -------
    samples : ndarray of float64, shape (86400,)
        Raw counts (NaN in gaps, if there were any); a fresh copy.
    fs : float
        1.0 Hz.
    starttime : str
        ``"2010-01-01T00:00:00.069500Z"``.
    """
    samples, fs, starttime = _anmo_trace()
    return samples.copy(), fs, starttime


def _whole_samples(seconds: float, fs: float) -> int:
    # The same tolerance as SpectrogramParameters.nperseg, so 0.29 s * 100 Hz is 29.
    return int(math.floor(seconds * fs + 1e-9))


def continuous_windows(
    samples: npt.ArrayLike, fs: float, window_s: float, step_s: float
) -> np.ndarray:
    """Overlapping windows of a continuous record, as a read-only view.

    Parameters
    ----------
    samples : array-like of shape (n_samples,)
        The record.
    fs : float
        Sampling rate in Hz.
    window_s, step_s : float
        Window length and the step between window starts, in seconds; both must be at
        least one sample.

    Returns
    -------
    ndarray of shape (n_windows, window_samples)
        Window ``i`` starts at sample ``i * step_samples``; only whole windows are kept
        (``n_windows = (n_samples - window_samples) // step_samples + 1``, or 0 when the
        record is shorter than one window).

    Examples
    --------
    >>> continuous_windows(np.arange(10.0), 1.0, 4.0, 3.0)
    array([[0., 1., 2., 3.],
           [3., 4., 5., 6.],
           [6., 7., 8., 9.]])
    """
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"samples must be one-dimensional, got shape {x.shape}")
    width = _whole_samples(window_s, fs)
    step = _whole_samples(step_s, fs)
    if width < 1 or step < 1:
        raise ValueError(
            f"window_s {window_s} and step_s {step_s} must each be at least one sample at {fs} Hz"
        )
    if x.size < width:
        return np.empty((0, width), dtype=x.dtype)
    return np.lib.stride_tricks.sliding_window_view(x, width)[::step]


def record_spectrograms(
    samples: npt.ArrayLike,
    fs: float,
    params: SpectrogramParameters,
    window_s: float,
    step_s: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spectrograms of the overlapping windows of a continuous record.

    Windows the preprocessing rejects (gaps, non-finite or constant samples) are skipped.

    Parameters
    ----------
    samples, fs, window_s, step_s
        The record, its sampling rate in Hz, and the windows' length and step in
        seconds, as :func:`continuous_windows` takes them.
    params : SpectrogramParameters
        The preprocessing of every window.

    Returns
    -------
    spectrograms : ndarray of float64, shape (n_kept, n_frequencies, n_times)
        Transformed spectrograms of the kept windows.
    frequency : ndarray of shape (n_frequencies,)
        Hz.
    offsets : ndarray of float64, shape (n_kept,)
        Start of each kept window in seconds from the first sample.
    """
    windows = continuous_windows(samples, fs, window_s, step_s)
    frequency, time = spectrogram_axes(params, fs, windows.shape[1])
    step = _whole_samples(step_s, fs)
    kept: list[np.ndarray] = []
    offsets: list[float] = []
    for i, window in enumerate(windows):
        try:
            kept.append(waveform_to_spectrogram(window, params, fs).transformed)
        except InvalidWaveformError:
            continue
        offsets.append(i * step / fs)
    if not kept:
        return np.empty((0, frequency.size, time.size)), frequency, np.empty(0)
    return np.stack(kept), frequency, np.asarray(offsets)


def kw1_spectrograms(
    hours: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spectrograms of 20 s windows every 10 s of the KW1 record (:func:`kw1_record`).

    Parameters
    ----------
    hours : float, optional
        Use only the first ``hours`` hours; None uses all 2.6 h (935 windows). One hour
        gives 359 windows.

    Returns
    -------
    spectrograms : ndarray of float64, shape (n_windows, 113, 39)
        ``KW1_PARAMETERS`` (1 s segments, half overlapping, nfft 256, 1-45 Hz).
    frequency : ndarray of shape (113,)
        1.17-44.9 Hz.
    offsets : ndarray of shape (n_windows,)
        Window starts in seconds after ``KW1_STARTTIME``.
    """
    samples = _kw1_samples()
    if hours is not None:
        if not hours > 0:
            raise ValueError(f"hours must be positive, got {hours!r}")
        samples = samples[: int(round(hours * 3600.0 * KW1_FS))]
    return record_spectrograms(samples, KW1_FS, KW1_PARAMETERS, KW1_WINDOW_S, KW1_STEP_S)


def anmo_spectrograms() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spectrograms of 30 min windows every 15 min of the ANMO day (:func:`anmo_record`).

    Returns
    -------
    spectrograms : ndarray of float64, shape (95, 50, 55)
        ``ANMO_PARAMETERS`` (64 s segments, half overlapping, nfft 128, 0.01-0.4 Hz).
    frequency : ndarray of shape (50,)
        0.0156-0.398 Hz.
    offsets : ndarray of shape (95,)
        Window starts in seconds after the record's start time.
    """
    samples, fs, _ = _anmo_trace()
    return record_spectrograms(samples, fs, ANMO_PARAMETERS, ANMO_WINDOW_S, ANMO_STEP_S)


# --------------------------------------------------------------------------------------
# BAV events
# --------------------------------------------------------------------------------------


def _bundled_bav() -> Path:
    from importlib.resources import files

    return Path(str(files("specufex_dask") / "data" / "bav_ncsn_1984"))


def bav_spectrograms(
    folder: str | Path | None = None, params: SpectrogramParameters = BAV_PARAMETERS
) -> tuple[np.ndarray, list[str]]:
    """Spectrograms of the ten NCSN BAV events (1984), as the SpecUFEx reference makes them.

    Parameters
    ----------
    folder : str or Path, optional
        A folder with ``catalog.csv`` (columns ``ev_ID`` and ``filename``) and the
        miniSEED files under ``waveforms/``; None uses the copy bundled with the package.
    params : SpectrogramParameters, default=BAV_PARAMETERS
        The reference workflow's settings: 241 frequencies (8-20 Hz) x 26 times.

    Returns
    -------
    spectrograms : ndarray of float64, shape (n_events, 241, 26)
        In catalog order.
    event_ids : list of str
        The catalog's ``ev_ID`` of each spectrogram.
    """
    import obspy

    folder = _bundled_bav() if folder is None else Path(folder)
    with (folder / "catalog.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    spectrograms = []
    for row in rows:
        trace = obspy.read(str(folder / "waveforms" / row["filename"]))[0]
        result = waveform_to_spectrogram(trace.data, params, trace.stats.sampling_rate)
        spectrograms.append(result.transformed)
    return np.stack(spectrograms), [row["ev_ID"] for row in rows]
