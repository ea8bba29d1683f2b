"""A linear probe on patch features: foreground (or one class per mask colour) learnt from a few masks.

This is the recipe of the official DINOv3 foreground-segmentation notebook, in NumPy and SciPy:
each patch is labelled by the share of its area the mask covers (patches between 1% and 99% are
ambiguous and left out), an L2-regularised logistic regression is fitted on the patch features
(the objective scikit-learn's `LogisticRegression(C=...)` minimises, solved with L-BFGS), the
regularisation is chosen by held-out average precision over a small grid of C (leave one image
out when there are several, else a fixed split of the patches), and at apply time the score map is
median-filtered 3x3 and thresholded at 0.5.

A `Probe` remembers the model, layer and width it was trained on and refuses other features.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from scipy.optimize import minimize
from scipy.signal import medfilt2d

from ..errors import InputError
from ..files import atomic_path
from .arrays import as_array, sigmoid

C_GRID = tuple(float(c) for c in np.logspace(-7, 0, 8))  # the notebook's grid
CLEAR = 0.01  # a patch is background below this mask share, foreground above 1 - CLEAR; ambiguous between
THRESHOLD = 0.5
MEDIAN = 3
MAX_CLASSES = 16
KIND = "dinoscope-probe"


@dataclass
class Probe:
    """A fitted linear classifier on the patch tokens of one model and layer.

    `weight` is (k, D) and `bias` (k,): one row for a binary (foreground) probe, one per class
    otherwise. `classes` names them (for a binary probe: background, foreground). `scores` holds
    the held-out average precision of every C tried; `c` is the one chosen.
    """

    weight: np.ndarray
    bias: np.ndarray
    classes: tuple[str, ...]
    model: str
    layer: int
    normed: bool = True
    c: float = 1.0
    scores: dict = field(default_factory=dict)
    patches: int = 0  # labelled patches it was trained on

    def __repr__(self) -> str:
        what = "foreground" if self.binary else f"{len(self.classes)} classes"
        return (f"Probe({what}, {self.model or 'model'!r} layer {self.layer}, dim {self.dim}, C={self.c:g}, "
                f"held-out AP {self.held_out_ap:.3f}, {self.patches} patches)")

    @property
    def binary(self) -> bool:
        return self.weight.shape[0] == 1

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def held_out_ap(self) -> float:
        return float(self.scores.get(self.c, float("nan")))

    def check(self, features) -> None:
        """One InputError when `features` come from another width, model or layer than the training ones."""
        if features.dim != self.dim:
            raise InputError(f"the probe was trained on {self.dim}-dim features, these are {features.dim}-dim; "
                             f"use the model it was trained with ({self.model}) or train a new probe")
        if features.model and self.model and features.model != self.model:
            raise InputError(f"the probe was trained on {self.model} features, these come from {features.model}; "
                             "use that model or train a new probe")
        if features.layer != self.layer or features.normed != self.normed:
            raise InputError(f"the probe was trained on layer {self.layer}{'' if self.normed else ' (pre-norm)'}, "
                             f"these features are layer {features.layer}{'' if features.normed else ' (pre-norm)'};"
                             " extract that layer or train a new probe")

    def probabilities(self, features) -> np.ndarray:
        """(rows, cols) foreground probability for a binary probe, (rows, cols, k) class probabilities otherwise."""
        self.check(features)
        rows, cols = features.patches.shape[:2]
        logits = as_array(features.flat, np.float64) @ self.weight.T.astype(np.float64) + self.bias
        if self.binary:
            return sigmoid(logits[:, 0]).reshape(rows, cols).astype(np.float32)
        return _softmax(logits).reshape(rows, cols, -1).astype(np.float32)

    def predict(self, features, *, threshold: float = THRESHOLD, median: int = MEDIAN) -> np.ndarray:
        """(rows, cols) labels: a bool foreground mask for a binary probe (score median-filtered, then
        above `threshold`), class indices otherwise (each class's score median-filtered, then the largest)."""
        probs = self.probabilities(features)
        if self.binary:
            return smooth(probs, median) > threshold
        filtered = np.stack([smooth(probs[..., k], median) for k in range(probs.shape[-1])], -1)
        return filtered.argmax(-1)

    def save(self, path: str | os.PathLike) -> Path:
        meta = {"kind": KIND, "classes": json.dumps(list(self.classes)), "model": self.model,
                "layer": str(self.layer), "normed": str(self.normed), "c": repr(self.c),
                "scores": json.dumps({repr(k): v for k, v in self.scores.items()}), "patches": str(self.patches)}
        with atomic_path(path) as tmp:
            save_file({"weight": self.weight.astype(np.float32), "bias": self.bias.astype(np.float32)},
                      os.fspath(tmp), metadata=meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Probe":
        try:
            with safe_open(os.fspath(path), framework="numpy") as f:
                meta = f.metadata() or {}
                if meta.get("kind") != KIND:
                    raise KeyError("kind")
                weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
            scores = {float(k): float(v) for k, v in json.loads(meta["scores"]).items()}
            return cls(weight, bias, tuple(json.loads(meta["classes"])), meta["model"], int(meta["layer"]),
                       meta["normed"] == "True", float(meta["c"]), scores, int(meta.get("patches", 0)))
        except (OSError, KeyError, ValueError, SafetensorError) as exc:
            raise InputError(f"{path} is not a dinoscope probe file; train one with `dinoscope probe train`") from exc


def smooth(score: np.ndarray, size: int = MEDIAN) -> np.ndarray:
    """A size x size median filter of a score map (zero beyond the border, as the notebook's medfilt2d); 1 = none."""
    if size <= 1:
        return np.asarray(score, np.float32)
    return medfilt2d(np.asarray(score, np.float64), kernel_size=size).astype(np.float32)


# --------------------------------------------------------------------------- masks to patch labels


@dataclass
class MaskClasses:
    """A mask image read as labels: (height, width) int class indices and the classes' names."""

    labels: np.ndarray
    classes: tuple[str, ...]


def read_mask(mask: Image.Image, classes: tuple[str, ...] | None = None) -> MaskClasses:
    """Labels of a mask picture. A mask with an alpha channel that varies is binary on alpha (as the
    notebook's label PNGs); otherwise each distinct colour is a class, black (or the darkest) first as
    background. Two colours make a binary mask. `classes` (colour names like "#ff0000") maps the
    colours to a probe's classes; a colour the probe does not know is an error."""
    if mask.mode in ("RGBA", "LA") and np.ptp(np.asarray(mask.getchannel("A"))) > 0:
        alpha = np.asarray(mask.getchannel("A")) > 127
        return _binary_check(MaskClasses(alpha.astype(np.int64), ("background", "foreground")))
    rgb = np.asarray(mask.convert("RGB")).reshape(-1, 3)
    if (rgb == rgb[:, :1]).all() and classes in (None, ("background", "foreground")):
        # grey (antialiased edges included): binary on half intensity
        grey = (rgb[:, 0] > 127).reshape(mask.size[1], mask.size[0])
        return _binary_check(MaskClasses(grey.astype(np.int64), ("background", "foreground")))
    colours, labels = np.unique(rgb, axis=0, return_inverse=True)
    if len(colours) > MAX_CLASSES:
        raise InputError(f"the mask has {len(colours)} colours; a mask needs flat colours (at most {MAX_CLASSES}), "
                         "one per class, saved as PNG (not JPEG)")
    order = np.argsort(colours.astype(np.int64).sum(1), kind="stable")  # darkest first: background
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    names = tuple("#%02x%02x%02x" % tuple(int(v) for v in colours[i]) for i in order)
    labels = rank[labels.reshape(-1)].reshape(mask.size[1], mask.size[0])
    if len(names) == 2:
        names = ("background", "foreground")
    found = MaskClasses(labels, names)
    if classes is not None and names != classes and len(names) != 1:
        raise InputError(f"the mask's colours {', '.join(names)} are not the classes {', '.join(classes)} of the "
                         "other masks; give every mask the same colours")
    return _binary_check(found) if len(names) <= 2 else found


def _binary_check(found: MaskClasses) -> MaskClasses:
    share = found.labels.mean() if found.labels.size else 0.0
    if share <= 0.0:
        raise InputError("the mask has no foreground (it is one flat colour); paint the object in white or a colour")
    if share >= 1.0:
        raise InputError("the mask has no background (it covers the whole image); leave the background black")
    return found


def patch_shares(labels: np.ndarray, geometry, n_classes: int) -> np.ndarray:
    """(rows, cols, n_classes): the share of each patch's area each class covers, the mask placed on the
    patches as the photo is (the top-left covered area at native size; resized to the model input otherwise)."""
    h, w = labels.shape
    if (w, h) != tuple(geometry.image_size):
        raise InputError(f"the mask is {w}x{h} but its image is {geometry.image_size[0]}x{geometry.image_size[1]}; "
                         "give a mask of the image's own size")
    iw, ih = geometry.input_size
    shares = []
    for k in range(n_classes):
        plane = (labels == k).astype(np.float32)
        if geometry.resized:
            plane = np.asarray(Image.fromarray(plane, mode="F").resize((iw, ih), Image.BILINEAR))
        else:
            plane = plane[:ih, :iw]
        c = geometry.cell_size
        shares.append(plane.reshape(ih // c, c, iw // c, c).mean(axis=(1, 3)))
    return np.stack(shares, -1)


def labelled_patches(features, mask: MaskClasses) -> tuple[np.ndarray, np.ndarray]:
    """(X (n, D) float32, y (n,) int) of the patches the mask labels clearly (ambiguous ones left out)."""
    shares = patch_shares(mask.labels, features.geometry, len(mask.classes)).reshape(-1, len(mask.classes))
    if len(mask.classes) == 2:  # the notebook's rule: share of foreground below 1% or above 99%
        keep = (shares[:, 1] < CLEAR) | (shares[:, 1] > 1 - CLEAR)
    else:  # one class covers nearly the whole patch
        keep = shares.max(1) > 1 - CLEAR
    return as_array(features.flat)[keep].astype(np.float32), shares.argmax(1)[keep]


# --------------------------------------------------------------------------- fitting


def train_probe(features: list, masks: list[MaskClasses], *, c_grid=C_GRID, c: float | None = None) -> Probe:
    """Fit a probe on the labelled patches of each (features, mask) pair; the C of `c_grid` with the best
    held-out average precision wins unless `c` is given."""
    if not features or len(features) != len(masks):
        raise InputError(f"give one mask per image: {len(features)} image(s), {len(masks)} mask(s)")
    classes = masks[0].classes
    for m in masks[1:]:
        if m.classes != classes:
            raise InputError(f"the masks disagree on the classes ({', '.join(classes)} vs {', '.join(m.classes)}); "
                             "give every mask the same colours")
    first = features[0]
    for f in features[1:]:
        if f.dim != first.dim or f.model != first.model or f.layer != first.layer:
            raise InputError("all training features must come from the same model and layer")
    parts = [labelled_patches(f, m) for f, m in zip(features, masks)]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    groups = np.concatenate([np.full(len(p[1]), i) for i, p in enumerate(parts)])
    k = len(classes)
    present = np.unique(y)
    if len(present) < k:
        missing = ", ".join(classes[i] for i in range(k) if i not in present)
        raise InputError(f"no patch is clearly {missing}; the masks need whole patches of every class")
    scores = {} if c is not None else held_out_scores(x, y, groups, k, c_grid)
    chosen = c if c is not None else max(scores, key=lambda key: (scores[key], -key))
    weight, bias = fit_logistic(x, y, k, chosen)
    return Probe(weight, bias, classes, first.model, first.layer, first.normed, chosen, scores, len(y))


def held_out_scores(x: np.ndarray, y: np.ndarray, groups: np.ndarray, k: int, c_grid) -> dict:
    """{C: mean held-out average precision}: leave one image out when there are several, else 5 folds of
    the patches (a fixed permutation, so the choice is repeatable)."""
    images = np.unique(groups)
    if len(images) > 1:
        folds = [groups == g for g in images]
    else:
        fold_of = np.empty(len(y), np.int64)
        fold_of[np.random.default_rng(0).permutation(len(y))] = np.arange(len(y)) % 5
        folds = [fold_of == i for i in range(5)]
    scores = {}
    for c in c_grid:
        found = []
        for test in folds:
            train = ~test
            if len(np.unique(y[train])) < k or not test.any():
                continue
            weight, bias = fit_logistic(x[train], y[train], k, c)
            found.append(mean_ap(x[test] @ weight.T + bias, y[test], k))
        scores[float(c)] = float(np.nanmean(found)) if found else float("nan")
    return scores


def fit_logistic(x: np.ndarray, y: np.ndarray, k: int, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Minimise 0.5 |W|^2 + C * sum of log-losses (intercept not penalised) with L-BFGS: binary when k == 2
    (one row), multinomial otherwise. Returns (weight (rows, D), bias (rows,)) as float32."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    rows = 1 if k == 2 else k
    target = (y == 1).astype(np.float64)[:, None] if k == 2 else np.eye(k)[y]

    def loss(theta):
        w, b = theta[:rows * d].reshape(rows, d), theta[rows * d:]
        z = x @ w.T + b
        if rows == 1:
            p = sigmoid(z)
            nll = np.sum(np.logaddexp(0, z) - target * z)
        else:
            zmax = z.max(1, keepdims=True)
            logsum = zmax[:, 0] + np.log(np.exp(z - zmax).sum(1))
            p = np.exp(z - logsum[:, None])
            nll = np.sum(logsum - (z * target).sum(1))
        grad_z = c * (p - target)
        grad = np.concatenate([(grad_z.T @ x + w).ravel(), grad_z.sum(0)])
        return c * nll + 0.5 * np.sum(w * w), grad

    result = minimize(loss, np.zeros(rows * d + rows), jac=True, method="L-BFGS-B",
                      options={"maxiter": 1000, "gtol": 1e-6})
    theta = result.x
    return theta[:rows * d].reshape(rows, d).astype(np.float32), theta[rows * d:].astype(np.float32)


def average_precision(score: np.ndarray, truth: np.ndarray) -> float:
    """Average precision of a score for binary truth: the sum over thresholds of precision times the
    recall gained (scikit-learn's `average_precision_score`); NaN when there is no positive."""
    truth = np.asarray(truth, bool)
    positives = truth.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-np.asarray(score, np.float64), kind="stable")
    score, truth = np.asarray(score)[order], truth[order]
    hits = np.cumsum(truth)
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # the end of each run of equal scores
    precision = hits[last] / (last + 1)
    recall = hits[last] / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_ap(logits: np.ndarray, y: np.ndarray, k: int) -> float:
    """Average precision of the foreground score (binary) or the mean over classes, one against the rest."""
    if k == 2:
        return average_precision(logits[:, 0], y == 1)
    return float(np.nanmean([average_precision(logits[:, j], y == j) for j in range(k)]))


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
