"""SpecUFEx on Dask: Bayesian NMF + HMM fingerprints of spectrogram archives."""

from __future__ import annotations

__version__ = "0.1.0"
