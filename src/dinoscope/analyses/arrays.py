"""The one numeric implementation of norms, similarity and PCA runs in NumPy, whatever holds the tokens.

Features carry torch tensors after extraction and NumPy arrays when a cached rerun reads them
without torch; both go through the same NumPy code, so both draw the same pictures bit for bit.
Results come back in the caller's kind: torch tensors for torch input, NumPy arrays otherwise.
"""

from __future__ import annotations

import sys

import numpy as np


def is_tensor(values) -> bool:
    return hasattr(values, "detach")


def as_array(values, dtype=np.float32) -> np.ndarray:
    """A C-contiguous NumPy copy or view of a tensor or array (in `dtype`; None keeps float32/float64 as they
    are): contiguous, so every reduction sums in one order whatever the input's strides."""
    if is_tensor(values):
        values = values.detach().cpu()
        values = values.double().numpy() if values.dtype.is_floating_point and values.dtype.itemsize == 8 \
            else values.float().numpy() if values.dtype.is_floating_point else values.numpy()
    # always a fresh NumPy allocation: the same memory layout and alignment whether the tokens came from
    # torch or from a file, so the vectorised kernels add in the same order on both paths
    return np.array(values, dtype=dtype, order="C", copy=True)


def like(array: np.ndarray, *references):
    """`array` as a torch tensor when any reference is one (torch is loaded then), else as it is."""
    if any(is_tensor(r) for r in references):
        return sys.modules["torch"].from_numpy(np.ascontiguousarray(array))
    return array


def sigmoid(z):
    """The logistic function, written with tanh so that large |z| neither overflows nor warns."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z)))
