"""Which image tokens a sequence-parallel rank holds, and moving latents between the image
layout and a token layout.

Under Ulysses and ring attention the ``U*R`` ranks of a stage split every patch's tokens into
equal runs; sequence position ``s = ring*U + ulysses`` holds run ``s`` of each patch. A
whole-image slot (a warmup step, or no PipeFusion) is given to each rank as the union of its
runs of every patch, not as one run of the image: then a rank keeps the same latent elements
in every step, so its per-patch schedulers see the same elements throughout and the latent
that the last stage returns after a warmup step is the one stage 0 embeds next (the schedule
sizes that message as ``1/(U*R)`` of the image, which both readings satisfy).

Tokens are numbered row-major over the ``rows x cols`` token grid; a token layout of a latent
is ``(batch, channels, tokens, p*p)`` with the ``p x p`` pixels of a token row-major.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Ranges = list[tuple[int, int]]  # half-open token ranges, in the order a rank holds them


@dataclass(frozen=True)
class TokenPlan:
    """The token grid and its split into PipeFusion patches and sequence positions."""

    rows: int
    cols: int
    patch_rows: tuple[int, ...]
    seq: int  # sequence-parallel ranks per patch (Ulysses x ring)

    @property
    def full(self) -> int:
        """Tokens of the whole image."""
        return self.rows * self.cols

    def patch_range(self, patch: int) -> tuple[int, int]:
        """Token range of ``patch`` (-1: the whole image)."""
        if patch < 0:
            return 0, self.full
        r0 = sum(self.patch_rows[:patch])
        return r0 * self.cols, (r0 + self.patch_rows[patch]) * self.cols

    def owned(self, patch: int, s: int) -> Ranges:
        """Ranges sequence position ``s`` holds of ``patch`` (-1: its run of every patch)."""
        patches = range(len(self.patch_rows)) if patch < 0 else [patch]
        out = []
        for j in patches:
            lo, hi = self.patch_range(j)
            n = (hi - lo) // self.seq
            out.append((lo + s * n, lo + (s + 1) * n))
        return out

    def patch_of(self, token: int) -> int:
        """The patch holding ``token``."""
        for j in range(len(self.patch_rows)):
            lo, hi = self.patch_range(j)
            if lo <= token < hi:
                return j
        raise ValueError(f"token {token} is outside the image")


def count(ranges: Ranges) -> int:
    """Tokens in ``ranges``."""
    return sum(hi - lo for lo, hi in ranges)


def to_tokens(latent: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, rows*p, cols*p)`` image layout -> ``(B, C, rows*cols, p*p)`` token layout."""
    b, c, h, w = latent.shape
    x = latent.reshape(b, c, h // p, p, w // p, p).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(b, c, (h // p) * (w // p), p * p)


def to_image(tokens: torch.Tensor, p: int, rows: int, cols: int) -> torch.Tensor:
    """The inverse of ``to_tokens``."""
    b, c = tokens.shape[:2]
    x = tokens.reshape(b, c, rows, cols, p, p).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(b, c, rows * p, cols * p)


def take(x: torch.Tensor, ranges: Ranges, dim: int) -> torch.Tensor:
    """The slices ``ranges`` of ``x`` along ``dim``, concatenated."""
    parts = [x.narrow(dim, lo, hi - lo) for lo, hi in ranges]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def put(x: torch.Tensor, ranges: Ranges, dim: int, values: torch.Tensor) -> None:
    """Write ``values`` (the concatenation of ``ranges``' slices) into ``x`` along ``dim``."""
    at = 0
    for lo, hi in ranges:
        x.narrow(dim, lo, hi - lo).copy_(values.narrow(dim, at, hi - lo))
        at += hi - lo
