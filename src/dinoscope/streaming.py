"""Kept for code written against it: the streaming PCA lives in :mod:`dinoscope.analyses.streaming`."""

from .analyses.streaming import Moments, Range, StreamingPCA, fit_streaming

__all__ = ["Moments", "Range", "StreamingPCA", "fit_streaming"]
