"""Run a small tensor computation on one CPU thread.

Some steps are too small to split across threads (a 768 x 768 eigendecomposition, scoring one image's
1,200 patches): on a busy CPU the threads' hand-offs cost many times the work (search: 15 ms per image
with torch's default threads on a loaded 2-core machine, 0.5 ms on one). torch's thread count is
process-wide, so the switch is serialised: concurrent callers (the web explorer) cannot restore each
other's setting.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

_LOCK = threading.Lock()
_BLAS_LOCK = threading.Lock()


@contextmanager
def one_thread():
    # torch is imported on use, as in pca.py, so that `import dinoscope.analyses` stays free of torch
    import torch

    with _LOCK:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


@contextmanager
def one_blas_thread():
    """NumPy's BLAS and LAPACK on one thread for the duration: the NumPy counterpart of `one_thread`.

    The PCA's 768 x 768 eigendecomposition took 1.6-3 s of CPU (9-17 s wall) with OpenBLAS's threads on
    the loaded 2-core machine, 0.09 s on one. One thread also makes the result independent of the thread
    count. Serialised like `one_thread`, the limit being process-wide too.
    """
    with _BLAS_LOCK, threadpool_limits(1, user_api="blas"):
        yield
