"""Denser feature grids by shift-and-stitch: k x k passes over copies of the input shifted by
patch/k pixels, interleaved into a grid k times denser along each axis. No training, any model.

The core works on a callable, so it runs with any model family:

    forward(pixels (B, 3, H, W)) -> [(cls (B, D), registers (B, R, D), patches (B, rows, cols, D)), ...]

one tuple per block asked for (the shape of `features.forward_tokens` and of the model adapter's
`forward_intermediates(pixels, blocks, norm)`); `dense_patches` takes the simpler
`tokens(pixels) -> patches (B, rows, cols, D)`.

Layout (what makes the geometry exact). Let p be the patch size, k the density, s = p / k the
cell size, and pad the input by lead = (p - s) // 2 pixels at the top/left and p - s - lead at
the bottom/right. Pass (a, b), for a, b in 0..k-1, is the padded input cropped at (a*s, b*s) to
the original input size, so it has the same rows x cols patches; its patch (r, c) becomes dense
cell (r*k + a, c*k + b). Dense cell (R, C) therefore is the model's token for the p x p window
whose top-left input pixel is (C*s - lead, R*s - lead): a window centred (to within half a
pixel when p - s is odd) on the s x s square [C*s, (C+1)*s) x [R*s, (R+1)*s), which is the
square the dense `Geometry` says the cell covers. The squares tile the input exactly, so maps
of a dense grid are placed like native ones. Only windows within lead pixels of the border
see padding (replicated edge pixels by default).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .errors import InputError
from .geometry import Geometry, check_density
from .models.loading import available_memory

PAD_MODES = ("replicate", "reflect", "constant")
# float32 activations alive at once per token, in units of the width D (residual, normed input, qkv,
# attention output, 4x MLP hidden, the returned copies): a rule of thumb, on the safe side of the
# measured peaks (ViT-B density 2 at 640x480: 278 MB above the model, estimated 387 MB)
ACTIVATION_WIDTHS = 24


def pad_before(patch_size: int, density: int) -> int:
    """Pixels of padding above and left of the input: how far a dense cell's window starts before its square."""
    return (patch_size - patch_size // density) // 2


def padded_input(pixels: torch.Tensor, patch_size: int, density: int, pad: str = "replicate") -> torch.Tensor:
    """A (3, H, W) input padded by `pad_before` at the top/left and the rest of patch - cell at the bottom/right."""
    check_density(patch_size, density)
    if pad not in PAD_MODES:
        raise InputError(f"unknown padding {pad!r}; use one of {', '.join(PAD_MODES)}")
    lead = pad_before(patch_size, density)
    trail = patch_size - patch_size // density - lead
    return F.pad(pixels[None], (lead, trail, lead, trail), mode=pad)[0]


def shifted_input(padded: torch.Tensor, pass_index: int, patch_size: int, density: int, size: tuple[int, int]
                  ) -> torch.Tensor:
    """Pass (a, b) = divmod(pass_index, density): the padded input cropped at (a, b) cells to `size` (h, w), a view."""
    a, b = divmod(pass_index, density)
    step = patch_size // density
    h, w = size
    return padded[:, a * step:a * step + h, b * step:b * step + w]


def shifted_inputs(pixels: torch.Tensor, patch_size: int, density: int, pad: str = "replicate") -> torch.Tensor:
    """All k*k shifted copies of a (3, H, W) input as (k*k, 3, H, W), pass (a, b) at index a*k + b."""
    padded = padded_input(pixels, patch_size, density, pad)
    return torch.stack([shifted_input(padded, i, patch_size, density, tuple(pixels.shape[-2:]))
                        for i in range(density * density)])


def check_dense_cost(geometry: Geometry, density: int, *, max_tokens: int | None = None, dim: int | None = None,
                     blocks: int = 1, batch_size: int = 4, device=None) -> None:
    """Raise a one-line InputError if the dense grid is over the token budget or cannot fit in free memory.

    The budget bounds the dense grid's cell count (what every analysis afterwards scales
    with); memory counts the dense output (k^2 * cells * D float32 per block) plus one batch
    of passes' activations. `dim` unknown skips the memory check.
    """
    check_density(geometry.patch_size, density)
    rows, cols = geometry.rows * density, geometry.cols * density
    cells = rows * cols
    if max_tokens is not None and cells > max_tokens:
        raise InputError(
            f"density {density} turns the {geometry.rows}x{geometry.cols} grid into {rows}x{cols} = {cells} cells, above "
            f"the budget of {max_tokens}; use a lower density, a smaller resolution (e.g. short:512) or raise max_tokens="
        )
    if dim is None:
        return
    need = dense_memory_bytes(geometry.num_patches, density, dim, patch_size=geometry.patch_size, blocks=blocks,
                              batch_size=batch_size)
    free = available_memory(torch.device(device or "cpu"))
    if free is not None and need > free:
        raise InputError(
            f"density {density} on a {geometry.rows}x{geometry.cols} grid needs about {need / 2**30:.1f} GiB but only "
            f"{free / 2**30:.1f} GiB is free; use a lower density, a smaller resolution or a smaller batch"
        )


def dense_memory_bytes(patches: int, density: int, dim: int, *, patch_size: int = 16, blocks: int = 1,
                       batch_size: int = 4) -> int:
    """Bytes a shift-and-stitch run holds at its peak beyond the model's weights (an estimate):
    the dense output, the padded input plus one batch of shifted copies, and that batch's activations."""
    passes = min(batch_size, density * density)
    output = density * density * patches * dim * 4 * blocks
    inputs = (1 + passes) * patches * 3 * patch_size * patch_size * 4
    return output + inputs + passes * pass_activation_bytes(patches, dim)


def pass_activation_bytes(tokens: int, dim: int) -> int:
    """Float32 activations of one image's pass, linear in tokens: SDPA attention (CPU and CUDA) streams its
    scores rather than holding a tokens x tokens matrix (a 16,170-token ViT-B pass peaks at 1.07 GiB RSS)."""
    return tokens * dim * ACTIVATION_WIDTHS * 4


def shift_and_stitch(forward: Callable, pixels: torch.Tensor, geometry: Geometry, density: int, *,
                     batch_size: int = 4, pad: str = "replicate", max_tokens: int | None = None,
                     dim: int | None = None) -> tuple[Geometry, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Run `forward` on the k*k shifted copies of `pixels` (3, H, W) and interleave them.

    `geometry` is the native (density 1) geometry `pixels` was preprocessed for. Returns the
    dense geometry and, per block `forward` returns, (cls, registers, patches (rows*k, cols*k, D));
    cls and registers are the mean over the k*k passes (each saw a slightly shifted image).
    Passes run `batch_size` at a time; cost is checked first (see `check_dense_cost`).
    """
    if geometry.density != 1:
        raise InputError(f"the input geometry is already at density {geometry.density}; pass the native one")
    if tuple(pixels.shape[-2:]) != (geometry.input_size[1], geometry.input_size[0]):
        raise InputError(f"pixels of size {tuple(pixels.shape[-2:])} do not match the geometry's input "
                         f"{geometry.input_size[1]}x{geometry.input_size[0]} (height x width)")
    if batch_size < 1:
        raise InputError(f"batch size {batch_size} must be at least 1")
    check_dense_cost(geometry, density, max_tokens=max_tokens, dim=dim, batch_size=batch_size, device=pixels.device)
    dense = geometry.densified(density)
    padded = padded_input(pixels, geometry.patch_size, density, pad)  # copies are cut from it a batch at a time
    k, rows, cols = density, geometry.rows, geometry.cols
    grids: list[torch.Tensor] = []
    cls_sum: list[torch.Tensor] = []
    reg_sum: list[torch.Tensor] = []
    for start in range(0, k * k, batch_size):
        batch = [shifted_input(padded, i, geometry.patch_size, k, tuple(pixels.shape[-2:]))
                 for i in range(start, min(k * k, start + batch_size))]
        outputs = forward(torch.stack(batch))
        for block, (cls_t, regs, patches) in enumerate(outputs):
            if tuple(patches.shape[1:3]) != (rows, cols):
                raise InputError(f"the model returned a {tuple(patches.shape[1:3])} grid for a {rows}x{cols} input")
            if block == len(grids):
                grids.append(torch.empty(rows, k, cols, k, patches.shape[-1], dtype=patches.dtype))
                cls_sum.append(torch.zeros_like(cls_t[0]))
                reg_sum.append(torch.zeros_like(regs[0]))
            for j in range(patches.shape[0]):
                a, b = divmod(start + j, k)
                grids[block][:, a, :, b] = patches[j].to(grids[block].device)
            cls_sum[block] += cls_t.sum(0)
            reg_sum[block] += regs.sum(0)
    results = [(c / (k * k), r / (k * k), g.reshape(rows * k, cols * k, -1)) for c, r, g in zip(cls_sum, reg_sum, grids)]
    return dense, results


def dense_patches(tokens: Callable, pixels: torch.Tensor, geometry: Geometry, density: int, **options
                  ) -> tuple[Geometry, torch.Tensor]:
    """`shift_and_stitch` for a callable that returns only patch tokens (B, rows, cols, D)."""
    def forward(batch):
        patches = tokens(batch)
        empty = patches.new_zeros(patches.shape[0], 0)
        return [(empty, empty[:, None], patches)]

    dense, [(_cls, _regs, patches)] = shift_and_stitch(forward, pixels, geometry, density, **options)
    return dense, patches
