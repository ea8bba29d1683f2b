"""Where each patch lies in the original image, and how the image is sized for the model.

Every map and box is placed through a `Geometry`, so that a patch's value lands on
exactly the original pixels that patch saw, whatever resizing or cropping happened.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Union

from .errors import InputError

DEFAULT_MAX_TOKENS = 16384
#: Largest image (width * height) decoded unless the caller raises the limit (enforced by dinoscope.images).
DEFAULT_MAX_PIXELS = 100_000_000
# The largest side a resolution policy may ask for (far above any real input; keeps sizes from overflowing).
MAX_SIDE = 65536
DENSITIES = (1, 2, 4)
UPSAMPLE_METHODS = ("guided", "bilinear", "nearest")  # analyses.upsample; here so options check without torch


def check_density(patch_size: int, density: int) -> None:
    """Raise a one-line InputError unless `density` cells per patch is supported for this patch size."""
    if density not in DENSITIES:
        raise InputError(f"density {density} is not supported; use one of {', '.join(map(str, DENSITIES))}")
    if patch_size % density:
        raise InputError(f"density {density} does not divide the {patch_size}-pixel patch; use "
                         f"{' or '.join(str(k) for k in DENSITIES if patch_size % k == 0)}")


CLS = -1  # the query index that means the CLS token


@dataclass(frozen=True)
class Patch:
    """A patch by grid position."""

    row: int
    col: int


@dataclass(frozen=True)
class Pixel:
    """A point in original-image pixels; the patch covering it is the query."""

    x: float
    y: float


Query = Union[int, Patch, Pixel]


@dataclass(frozen=True)
class Resolution:
    """How an image is sized before the model sees it.

    mode "native" keeps the pixels as they are (the model drops the right and bottom
    remainder that does not fill a patch); "short" / "long" resize so that the short or
    long side is `size` pixels, rounded to a multiple of the patch size. Above
    `max_tokens` patches the input is downscaled further (None disables the budget).
    """

    mode: str = "native"
    size: int | None = None
    max_tokens: int | None = DEFAULT_MAX_TOKENS

    def __post_init__(self):
        if self.mode not in ("native", "short", "long"):
            raise InputError(f"unknown resolution mode {self.mode!r}; use native, short:N or long:N")
        if self.mode != "native" and (self.size is None or self.size < 1):
            raise InputError(f"resolution {self.mode} needs a positive side length, e.g. {self.mode}:768")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InputError("the token budget must be at least 1 (or none to disable it)")

    @classmethod
    def parse(cls, text: str, max_tokens: int | None = DEFAULT_MAX_TOKENS) -> "Resolution":
        """Parse "native", "short:960" or "long:768" (a bare number means short side)."""
        text = text.strip().lower()
        if text == "native":
            return cls("native", None, max_tokens)
        mode, _, size = text.partition(":")
        if not size and mode.isdigit():
            mode, size = "short", mode
        if mode not in ("short", "long") or not size.isdigit():
            raise InputError(f"cannot read resolution {text!r}; use native, short:N or long:N (e.g. short:768)")
        if not 1 <= int(size) <= MAX_SIDE:
            raise InputError(f"resolution {text!r} is out of range; give a side between 1 and {MAX_SIDE} pixels")
        return cls(mode, int(size), max_tokens)

    @classmethod
    def coerce(cls, value: "Resolution | str | None") -> "Resolution":
        """A Resolution from itself, a string such as "short:768" (see `parse`), or None (the default policy)."""
        if value is None:
            return cls()
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, Resolution):
            return value
        raise InputError(f"cannot use {value!r} as a resolution; give native, short:N or long:N (e.g. short:768)")

    def __str__(self) -> str:
        return self.mode if self.mode == "native" else f"{self.mode}:{self.size}"

    def input_size(self, width: int, height: int, patch_size: int) -> tuple[tuple[int, int], str | None]:
        """The model input size (w, h), a multiple of `patch_size`, and a notice if the budget shrank it."""
        p = patch_size
        if width < p or height < p:
            raise InputError(
                f"image of {width}x{height} pixels is smaller than one {p}x{p} patch; use a larger image"
            )
        if self.mode == "native":
            w, h = (width // p) * p, (height // p) * p
        else:
            side = min(width, height) if self.mode == "short" else max(width, height)
            scale = self.size / side
            w = max(p, round(width * scale / p) * p)
            h = max(p, round(height * scale / p) * p)
        notice = None
        if self.max_tokens is not None and (w // p) * (h // p) > self.max_tokens:
            before = (w // p) * (h // p)
            shrink = math.sqrt(self.max_tokens / before)
            w2 = max(p, int(w * shrink / p) * p)
            h2 = max(p, int(h * shrink / p) * p)
            while (w2 // p) * (h2 // p) > self.max_tokens:  # floor rounding can still overshoot by a row
                if w2 >= h2 and w2 > p:
                    w2 -= p
                else:
                    h2 -= p
            notice = (
                f"{width}x{height} image would give {before} patches, above the budget of {self.max_tokens}; "
                f"downscaled to {w2}x{h2} ({(w2 // p) * (h2 // p)} patches); raise it with max_tokens="
            )
            w, h = w2, h2
        return (w, h), notice


@dataclass(frozen=True)
class Geometry:
    """The mapping between patch indices, grid cells and original-image pixels.

    The model input is `input_size` (a whole number of patches). For native resolution
    it is the top-left crop of the original image, so a patch covers exactly its own
    pixels and the right/bottom remainder is uncovered; for resized inputs it is the
    whole image rescaled, so a patch covers a scaled box.

    A dense grid (`density` k > 1, made by shift-and-stitch, see `dinoscope.dense`) has k
    cells per patch along each axis: `rows`, `cols` count cells, each cell stands for the
    model patch whose window is centred on it, and the pixels a cell *covers* (where its
    value is painted, what `box` and `patch_at` use) are the `cell_size` = patch_size / k
    square at that window's centre, so the cells tile the covered area exactly as patches
    do at density 1. `window` gives the full patch_size square the model saw for a cell.
    """

    patch_size: int
    rows: int
    cols: int
    image_size: tuple[int, int]  # original (width, height)
    input_size: tuple[int, int]  # model input (width, height) == (cols, rows) * cell_size
    resized: bool
    density: int = 1

    @classmethod
    def for_image(cls, width: int, height: int, patch_size: int, resolution: Resolution) -> tuple["Geometry", str | None]:
        (w, h), notice = resolution.input_size(width, height, patch_size)
        resized = resolution.mode != "native" or notice is not None
        return cls(patch_size, h // patch_size, w // patch_size, (width, height), (w, h), resized), notice

    def densified(self, density: int) -> "Geometry":
        """The same image and input with `density` cells per patch along each axis (1 gives the native grid)."""
        check_density(self.patch_size, density)
        w, h = self.input_size
        step = self.patch_size // density
        return Geometry(self.patch_size, h // step, w // step, self.image_size, self.input_size, self.resized, density)

    @property
    def cell_size(self) -> int:
        """Input pixels per grid cell along each axis: the patch size, divided by the density."""
        return self.patch_size // self.density

    @property
    def grid(self) -> tuple[int, int]:
        return self.rows, self.cols

    @property
    def num_patches(self) -> int:
        return self.rows * self.cols

    @property
    def scale(self) -> tuple[float, float]:
        """Original pixels per input pixel, along x and y."""
        if not self.resized:
            return 1.0, 1.0
        return self.image_size[0] / self.input_size[0], self.image_size[1] / self.input_size[1]

    @property
    def covered(self) -> tuple[int, int]:
        """Width and height of the original-image area the patch grid describes (from the top-left)."""
        if self.resized:
            return self.image_size
        return self.input_size

    def index(self, row: int, col: int) -> int:
        self._check_cell(row, col)
        return row * self.cols + col

    def cell(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.num_patches:
            raise InputError(
                f"patch index {index} is outside the {self.rows}x{self.cols} grid (0..{self.num_patches - 1}, or -1 for CLS)"
            )
        return divmod(index, self.cols)

    def box(self, index: int) -> tuple[float, float, float, float]:
        """The original-image pixel box (x0, y0, x1, y1) that patch `index` covers; x1, y1 exclusive."""
        row, col = self.cell(index)
        sx, sy = self.scale
        p = self.cell_size
        return col * p * sx, row * p * sy, (col + 1) * p * sx, (row + 1) * p * sy

    def window(self, index: int) -> tuple[float, float, float, float]:
        """The original-image box (x0, y0, x1, y1) of the whole patch the model saw for cell `index`.

        At density 1 this is `box`; on a dense grid it is the patch_size square centred on the
        cell (shifted up/left by `dense.pad_before`), which may reach into the padded border.
        """
        row, col = self.cell(index)
        sx, sy = self.scale
        c, lead = self.cell_size, (self.patch_size - self.cell_size) // 2
        x0, y0 = col * c - lead, row * c - lead
        return x0 * sx, y0 * sy, (x0 + self.patch_size) * sx, (y0 + self.patch_size) * sy

    def center(self, index: int) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box(index)
        return (x0 + x1) / 2, (y0 + y1) / 2

    def patch_at(self, x: float, y: float) -> int:
        """The index of the patch covering original-image pixel (x, y)."""
        cw, ch = self.covered
        if not (0 <= x < cw and 0 <= y < ch):
            w, h = self.image_size
            where = "outside the image" if not (0 <= x < w and 0 <= y < h) else "in the uncovered right/bottom margin"
            raise InputError(
                f"pixel ({x:g}, {y:g}) is {where}; patches cover x in [0, {cw}) and y in [0, {ch}) of the {w}x{h} image"
            )
        sx, sy = self.scale
        col = min(int(x / (self.cell_size * sx)), self.cols - 1)
        row = min(int(y / (self.cell_size * sy)), self.rows - 1)
        return row * self.cols + col

    def query_index(self, query: Query) -> int:
        """The row-major patch index a query names (an index, Patch or Pixel), or CLS (-1)."""
        if isinstance(query, Pixel):
            return self.patch_at(query.x, query.y)
        if isinstance(query, Patch):
            return self.index(query.row, query.col)
        if isinstance(query, bool) or not isinstance(query, int):
            raise InputError(f"cannot use {query!r} as a query; give a patch index, Patch(row, col) or Pixel(x, y)")
        if query == CLS:
            return CLS
        self.cell(query)  # raises with the valid range when out of bounds
        return query

    def _check_cell(self, row: int, col: int) -> None:
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise InputError(
                f"patch (row {row}, col {col}) is outside the {self.rows}x{self.cols} grid; rows 0..{self.rows - 1}, cols 0..{self.cols - 1}"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Geometry":
        d = json.loads(text)
        return cls(d["patch_size"], d["rows"], d["cols"], tuple(d["image_size"]), tuple(d["input_size"]), d["resized"],
                   d.get("density", 1))
