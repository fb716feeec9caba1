"""Data-driven starting points for the variational factors (default mode only).

q(W): the reference draws every pattern from the same flat Gamma, so at the first
steps all patterns look alike and split the counts between them; the copies this makes
persist. :func:`pattern_start` starts each pattern instead at the mean spectral shape of
a seeded k-means group of the frames of a sample of spectrograms.

The reference starts q(B) from random draws that ignore the data's scale. On real records
the emissions ``U = diag(gain) V`` are hundreds of counts per frame, so the Poisson
likelihood is so peaked that the state closest to the data at the first step takes every
frame; the others lose their q(B) mass within a few steps and never win a frame again
(every fingerprint of the archive is then the same). Here q(B) starts instead from a
seeded k-means of the frames of a sample of sequences: each state begins as the mean of
a group of real frames, with the weight that group would carry in the whole data set.

Plain NumPy: the sample's frames are computed wherever the events are (Dask workers in
the pipeline) and only the frames reach this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "INIT_EVENTS",
    "PATTERN_FLOOR",
    "PATTERN_STRENGTH",
    "emission_frames",
    "emission_start",
    "init_sample",
    "kmeans",
    "pattern_start",
    "spectrogram_frames",
]

INIT_EVENTS = 256
"""Sequences whose frames seed q(B): enough frames for 15+ states, small to compute."""

KMEANS_ITERATIONS = 30

PATTERN_FLOOR = 0.1
"""Share of a started pattern spread evenly over the frequencies: no frequency starts at
E[W] = 0, from which the data could not move it."""

PATTERN_STRENGTH = 10.0
"""Weight of the data start of q(W) against the reference's random draw (1): W2 =
strength * n_events / 10."""


def init_sample(rng: np.random.Generator, n_items: int, size: int = INIT_EVENTS) -> NDArray[Any]:
    """Sorted indices of the sequences whose frames seed q(B) (all when there are few)."""
    if n_items <= size:
        return np.arange(n_items)
    sample: NDArray[Any] = np.sort(rng.choice(n_items, size=size, replace=False))
    return sample


def emission_frames(activation: NDArray[Any], gain: NDArray[Any]) -> NDArray[Any]:
    """The HMM's emission frames ``U[:, t] = gain * V[:, t]`` of activations (n, K, M),
    as (n, M, K): each sequence's frames in time order, in the activations' dtype."""
    U = activation * np.asarray(gain).astype(activation.dtype)[None, :, None]
    frames: NDArray[Any] = U.transpose(0, 2, 1)
    return frames


def _squared_distances(
    points: NDArray[Any], norms: NDArray[Any], centres: NDArray[Any]
) -> NDArray[Any]:
    """``|x - c|^2`` of every point and centre, from the points' squared norms ``norms``."""
    squared = norms[:, None] - 2.0 * (points @ centres.T) + (centres**2).sum(axis=1)[None]
    distances: NDArray[Any] = np.maximum(squared, 0.0)  # rounding can make zero negative
    return distances


def _plus_plus(
    points: NDArray[Any], norms: NDArray[Any], n_clusters: int, rng: np.random.Generator
) -> NDArray[Any]:
    """k-means++ seeding: each new centre drawn with probability ~ squared distance."""
    n = len(points)
    chosen = [int(rng.integers(n))]
    closest = _squared_distances(points, norms, points[chosen])[:, 0]
    for _ in range(1, n_clusters):
        total = closest.sum()
        # all remaining points coincide with a centre: any point will do
        index = int(rng.integers(n)) if total <= 0 else int(rng.choice(n, p=closest / total))
        chosen.append(index)
        closest = np.minimum(closest, _squared_distances(points, norms, points[[index]])[:, 0])
    centres: NDArray[Any] = points[chosen].copy()
    return centres


def kmeans(
    points: NDArray[Any],
    n_clusters: int,
    rng: np.random.Generator,
    iterations: int = KMEANS_ITERATIONS,
) -> NDArray[Any]:
    """Seeded Lloyd's k-means; returns the label of every point.

    An empty cluster is restarted at the point farthest from its centre, so every
    cluster ends with at least one point whenever there are ``n_clusters`` distinct
    points.
    """
    points = np.asarray(points, dtype=np.float64)
    norms = (points**2).sum(axis=1)
    n_clusters = min(n_clusters, len(points))
    centres = _plus_plus(points, norms, n_clusters, rng)
    labels = np.full(len(points), -1)
    for _ in range(iterations):
        distances = _squared_distances(points, norms, centres)
        new_labels = np.argmin(distances, axis=1)
        counts = np.bincount(new_labels, minlength=n_clusters)
        for empty in np.flatnonzero(counts == 0):
            farthest = int(np.argmax(distances[np.arange(len(points)), new_labels]))
            new_labels[farthest] = empty
            distances[farthest] = 0.0
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for cluster in range(n_clusters):
            centres[cluster] = points[labels == cluster].mean(axis=0)
    return labels


def emission_start(
    frames: NDArray[Any],
    n_states: int,
    n_frames: float,
    rng: np.random.Generator,
    *,
    tau1: float,
    tau2: float,
) -> tuple[NDArray[Any], NDArray[Any]]:
    """q(B) that starts each state at the mean emission of a k-means group of frames.

    Parameters
    ----------
    frames : ndarray of shape (n_sample_frames, n_patterns)
        Emission frames ``U[:, t]`` of a sample of sequences.
    n_states : int
    n_frames : float
        Frames in the whole data set (sequences x frames per sequence): a group holding a
        fraction f of the sample starts with the weight of f * n_frames frames, as a full
        pass over the data would give it.
    rng : numpy.random.Generator
        Seeds k-means.
    tau1, tau2 : float
        The Gamma prior of B.

    Returns
    -------
    B1, B2 : ndarray of shape (n_states, n_patterns)

    Notes
    -----
    k-means runs on the square roots of the frames, the variance-stabilising transform
    of Poisson counts, so that loud frames do not take all the centres. With fewer
    distinct frames than states, the extra states start at the mean of all frames.
    """
    frames = np.asarray(frames, dtype=np.float64)
    n_patterns = frames.shape[1]
    labels = kmeans(np.sqrt(frames), n_states, rng)
    counts = np.bincount(labels, minlength=n_states).astype(np.float64)
    sums = np.zeros((n_states, n_patterns))
    np.add.at(sums, labels, frames)
    share = counts / counts.sum()
    unused = counts == 0
    sums[unused] = frames.mean(axis=0)
    counts[unused] = 1.0
    share[unused] = 1.0 / len(frames)
    weight = share * n_frames
    B2 = np.broadcast_to((tau2 + weight)[:, None], (n_states, n_patterns)).copy()
    B1 = tau1 + weight[:, None] * (sums / counts[:, None])
    return B1, B2


def spectrogram_frames(spectrograms: NDArray[Any]) -> NDArray[Any]:
    """The frames (columns) of spectrograms (n, D, M), as (n * M, D) in time order."""
    frames: NDArray[Any] = np.asarray(spectrograms).transpose(0, 2, 1)
    return frames.reshape(-1, frames.shape[2])


def pattern_start(
    frames: NDArray[Any],
    n_patterns: int,
    n_events: int,
    rng: np.random.Generator,
    *,
    floor: float = PATTERN_FLOOR,
    strength: float = PATTERN_STRENGTH,
) -> tuple[NDArray[Any], NDArray[Any]]:
    """q(W) that starts each pattern at the mean spectral shape of a k-means group of frames.

    Parameters
    ----------
    frames : ndarray of shape (n_sample_frames, n_frequencies)
        Spectrogram frames (columns) of a sample of spectrograms.
    n_patterns : int
    n_events : int
        Spectrograms in the whole data set: the start's weight, ``W2``, is that of the
        reference's draw times ``strength``.
    rng : numpy.random.Generator
        Seeds k-means and the patterns beyond the frames' distinct shapes.
    floor, strength : float
        See :data:`PATTERN_FLOOR` and :data:`PATTERN_STRENGTH`.

    Returns
    -------
    W1, W2 : ndarray of shape (n_frequencies, n_patterns)

    Notes
    -----
    Each frame is scaled to unit sum (its shape: the activations carry the loudness)
    and k-means runs on the square roots of the shapes (their Hellinger geometry), so
    that the few loud or broadband frames do not take all the centres. Every column of
    ``E[W]`` sums to ``n_frequencies``, the expected sum of the reference's draw, so q(a)
    and q(H) start at the scale they would have. With fewer distinct frames than
    patterns (a single short spectrogram), the extra patterns start at the mean shape
    times the reference's Gamma(10, 1/10) noise: exact copies would stay copies.
    """
    frames = np.asarray(frames, dtype=np.float64)
    n_frequencies = frames.shape[1]
    totals = frames.sum(axis=1)
    shapes = frames[totals > 0] / totals[totals > 0, None]
    if len(shapes) == 0:
        raise ValueError(
            "every spectrogram frame of the sample is zero: nothing to start q(W) from"
        )
    # k-means gives repeated shapes a centre each: as many centres as distinct shapes
    n_centres = min(n_patterns, len(np.unique(shapes, axis=0)))
    labels = kmeans(np.sqrt(shapes), n_centres, rng)
    counts = np.bincount(labels, minlength=n_patterns).astype(np.float64)
    sums = np.zeros((n_patterns, n_frequencies))
    np.add.at(sums, labels, shapes)
    unused = counts == 0
    noise = rng.gamma(10.0, 1 / 10, size=(int(unused.sum()), n_frequencies))
    sums[unused] = shapes.mean(axis=0) * noise
    centres = sums / np.maximum(counts, 1.0)[:, None]
    centres /= centres.sum(axis=1, keepdims=True)
    EW = n_frequencies * ((1.0 - floor) * centres.T + floor / n_frequencies)
    W2 = np.full((n_frequencies, n_patterns), strength * n_events / 10)
    return W2 * EW, W2
