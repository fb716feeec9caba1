"""Preprocessing (ALGORITHM.md section 4) against the golden workflow file and by hand."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
from scipy.signal import get_window

from specufex_dask.ingest.preprocessing import (
    InvalidWaveformError,
    SpectrogramParameters,
    spectrogram_axes,
    to_decibels_above_median,
    waveform_to_spectrogram,
)

GOLDEN_PARAMS = SpectrogramParameters(fs=100.0, nfft=2000, fmin=8, fmax=20, n_samples=2000)


def _bav_waveforms(bav_dir):
    import obspy

    with (bav_dir / "catalog.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        trace = obspy.read(str(bav_dir / "waveforms" / row["filename"]))[0]
        yield row["ev_ID"], trace.data, trace.stats.sampling_rate


def _relative_error(actual, expected):
    return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


def test_bav_events_reproduce_golden_spectrograms(bav_dir, golden_dir):
    with h5py.File(golden_dir / "SpecUFEx_test1.h5", "r") as h5:
        golden_frequency = h5["spectrograms/fSTFT"][()]
        golden_time = h5["spectrograms/tSTFT"][()]
        n_checked = 0
        for event, data, fs in _bav_waveforms(bav_dir):
            result = waveform_to_spectrogram(data, GOLDEN_PARAMS, fs)
            raw = h5[f"spectrograms/raw_spectrograms/{event}"][()]
            transformed = h5[f"spectrograms/transformed_spectrograms/{event}"][()]
            assert _relative_error(result.raw, raw) < 1e-10, event
            assert _relative_error(result.transformed, transformed) < 1e-10, event
            assert result.median == pytest.approx(np.median(raw), rel=1e-12)
            np.testing.assert_allclose(result.frequency, golden_frequency, rtol=1e-12)
            np.testing.assert_allclose(result.time, golden_time, rtol=1e-12)
            n_checked += 1
    assert n_checked == 10


def _naive_magnitude(x, fs, params):
    """The magnitude spectrogram written out with numpy FFTs (no scipy.signal.spectrogram)."""
    nperseg = params.nperseg(fs)
    step = nperseg - params.noverlap(fs)
    nfft = params.nfft or nperseg
    window = get_window(params.window, nperseg)
    columns = []
    for start in range(0, x.size - nperseg + 1, step):
        segment = x[start : start + nperseg]
        segment = segment - segment.mean()  # scipy's default detrend="constant"
        columns.append(np.abs(np.fft.rfft(segment * window, nfft)) / window.sum())
    frequency = np.fft.rfftfreq(nfft, 1 / fs)
    keep = (frequency >= params.fmin) & (frequency <= params.fmax)
    return np.array(columns).T[keep]


@pytest.mark.parametrize("normalize", [True, False])
def test_matches_naive_stft_and_db_formula(rng, normalize):
    params = SpectrogramParameters(
        fs=50.0, window_s=2.0, overlap=0.5, nfft=128, fmin=3, fmax=12, normalize_waveform=normalize
    )
    x = 3.0 + 5.0 * rng.standard_normal(1000)
    centred = x - x.mean()
    scaled = centred / np.abs(centred).max() if normalize else centred
    raw = _naive_magnitude(scaled, 50.0, params)
    median = np.median(raw)
    expected = np.maximum(20 * np.log10(raw / median), 0)

    result = waveform_to_spectrogram(x, params)

    np.testing.assert_allclose(result.raw, raw, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(result.transformed, expected, rtol=1e-10, atol=1e-12)
    assert result.median == pytest.approx(median, rel=1e-12)


def test_normalisation_changes_raw_but_not_transformed(rng):
    x = rng.standard_normal(600) * 7.0
    with_norm = waveform_to_spectrogram(x, SpectrogramParameters(fs=20.0, fmin=1.0))
    without = waveform_to_spectrogram(
        x, SpectrogramParameters(fs=20.0, fmin=1.0, normalize_waveform=False)
    )
    peak = np.abs(x - x.mean()).max()
    np.testing.assert_allclose(without.raw, with_norm.raw * peak, rtol=1e-10)
    np.testing.assert_allclose(without.transformed, with_norm.transformed, atol=1e-9)


@pytest.mark.parametrize(
    ("fs", "n_samples", "window_s", "overlap", "nfft"),
    [(100.0, 2000, 1.0, 0.25, 2000), (40.0, 333, 0.5, 0.1, None), (8.0, 100, 3.0, 0.9, 64)],
)
def test_axes_without_data_equal_computed_axes(rng, fs, n_samples, window_s, overlap, nfft):
    params = SpectrogramParameters(fs=fs, window_s=window_s, overlap=overlap, nfft=nfft, fmin=1)
    result = waveform_to_spectrogram(rng.standard_normal(n_samples), params)
    frequency, time = spectrogram_axes(params, fs, n_samples)
    np.testing.assert_array_equal(frequency, result.frequency)
    np.testing.assert_array_equal(time, result.time)


def test_decibels_keep_zeros_and_clip_below_median():
    raw = np.array([[0.0, 0.5, 1.0, 10.0]])
    np.testing.assert_array_equal(to_decibels_above_median(raw, 1.0), [[0.0, 0.0, 0.0, 20.0]])


@pytest.mark.parametrize(
    ("waveform", "message"),
    [
        (np.r_[np.ones(150), np.nan, np.ones(49)], "non-finite"),
        (np.zeros(200), "constant"),
        (np.full(200, 3.0), "constant"),
        (np.ones(50), "too few samples: 50 < 100"),
        (np.r_[np.zeros(150), 1.0, np.zeros(1849)], "median of the spectrogram is 0"),
        (np.ones((2, 200)), "one-dimensional"),
    ],
)
def test_invalid_waveforms_raise_with_reason(waveform, message):
    with pytest.raises(InvalidWaveformError, match=message):
        waveform_to_spectrogram(waveform, SpectrogramParameters(fs=100.0))


def test_masked_samples_and_wrong_rate_and_short_n_samples():
    masked = np.ma.masked_array(np.arange(300.0), mask=np.arange(300) == 5)
    with pytest.raises(InvalidWaveformError, match="gaps"):
        waveform_to_spectrogram(masked, SpectrogramParameters(fs=100.0))
    with pytest.raises(InvalidWaveformError, match="sampling rate 50 Hz, expected 100 Hz"):
        waveform_to_spectrogram(np.arange(300.0), SpectrogramParameters(fs=100.0), fs=50.0)
    with pytest.raises(InvalidWaveformError, match="too few samples: 300 < 2000"):
        waveform_to_spectrogram(np.arange(300.0), GOLDEN_PARAMS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"overlap": 1.0}, "overlap"),
        ({"window_s": 0}, "window_s"),
        ({"fs": -1.0}, "fs"),
        ({"fmin": 10, "fmax": 5}, "fmin"),
        ({"n_samples": 0}, "n_samples"),
    ],
)
def test_parameters_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpectrogramParameters(**kwargs)


def test_parameters_round_trip_through_dict():
    params = GOLDEN_PARAMS.resolved(100.0)
    values = params.to_dict()
    assert values["nperseg"] == 100 and values["noverlap"] == 25
    assert SpectrogramParameters.from_dict(values) == params
