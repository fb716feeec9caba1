"""Checks of user input at the boundary; the kernels trust what passes them."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["check_stack", "describe_indices"]


def describe_indices(
    indices: NDArray[Any], labels: NDArray[Any] | None = None, limit: int = 10
) -> str:
    """``"0, 3, 7"`` or ``"0, 3, ... (25 in all)"``, using labels (event ids) when given."""
    names = [str(labels[i]) if labels is not None else str(int(i)) for i in indices[:limit]]
    text = ", ".join(names)
    if len(indices) > limit:
        text += f", ... ({len(indices)} in all)"
    return text


def check_stack(
    data: ArrayLike,
    *,
    what: str,
    dtype: np.dtype | type,
    expected_rows: int | None = None,
    row_name: str = "frequency",
    labels: NDArray[Any] | None = None,
) -> NDArray[Any]:
    """Validate a stack of nonnegative matrices and return it as a C-contiguous array.

    Parameters
    ----------
    data : array_like of shape (n, rows, columns)
        Spectrograms (n, frequencies, times) or activations (n, patterns, times).
    what : str
        How the caller names the input in messages ("spectrograms", "activations").
    dtype : dtype
        Floating dtype to convert to.
    expected_rows : int, optional
        Required size of axis 1 (the frequency or pattern count of the fitted model).
    row_name : str, default="frequency"
        Name of axis 1 in messages.
    labels : ndarray, optional
        Names of the matrices (event ids) used in messages instead of indices.

    Raises
    ------
    ValueError
        Naming the offending matrices and what is wrong with them.
    """
    try:
        array = np.asarray(data)
    except Exception as error:  # ragged lists and the like
        raise ValueError(f"{what}: cannot be read as one array ({error})") from error
    if array.dtype.kind == "c":
        raise ValueError(f"{what}: complex values; pass magnitudes")
    if array.dtype.kind not in "biuf":
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{what}: dtype {array.dtype} cannot be converted to floating point numbers"
            ) from error
    if array.ndim != 3:
        raise ValueError(
            f"{what}: expected a 3-d array (n, {row_name}, time), got ndim={array.ndim} "
            f"with shape {array.shape}"
        )
    if array.size == 0:
        raise ValueError(f"{what}: empty input of shape {array.shape}")
    if expected_rows is not None and array.shape[1] != expected_rows:
        raise ValueError(
            f"{what}: {row_name} axis has {array.shape[1]} entries, the model was fitted with "
            f"{expected_rows}"
        )
    array = np.ascontiguousarray(array, dtype=dtype)
    singular = what[:-1] if what.endswith("s") else what
    finite = np.isfinite(array).all(axis=(1, 2))
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{what}: non-finite values (NaN or inf) in {singular} {describe_indices(bad, labels)}"
        )
    nonnegative = (array >= 0).all(axis=(1, 2))
    if not nonnegative.all():
        bad = np.flatnonzero(~nonnegative)
        raise ValueError(
            f"{what}: negative values in {singular} {describe_indices(bad, labels)}; "
            "SpecUFEx needs nonnegative input"
        )
    return array
