"""DiffAugment: shapes, gradients, seeded replay, policy validation, and what translation and cutout do."""

from __future__ import annotations

import pytest
import torch

from gankd.distill.data.augment import diff_augment
from gankd.distill.errors import GankdError


def _images(n: int = 4, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout", ""])
def test_shape_kept_and_gradient_flows(policy, one_thread):
    x = _images().requires_grad_(True)
    out = diff_augment(x, policy, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_same_seed_replays_and_other_seed_differs(one_thread):
    x = _images()
    a = diff_augment(x, generator=torch.Generator().manual_seed(3))
    b = diff_augment(x, generator=torch.Generator().manual_seed(3))
    c = diff_augment(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_unknown_policy_is_named():
    with pytest.raises(GankdError, match="'blur'"):
        diff_augment(_images(), "color,blur")


def test_translation_shifts_the_image(one_thread):
    x = _images(n=16)
    out = diff_augment(x, "translation", torch.Generator().manual_seed(0))
    shifted = 0
    for image, moved in zip(x, out):
        # The result must equal the input shifted by some (dy, dx) within ±H/8, zero-filled.
        matches = []
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                expected = torch.zeros_like(image)
                src = image[:, max(0, -dy) : 32 - max(0, dy), max(0, -dx) : 32 - max(0, dx)]
                expected[:, max(0, dy) : 32 - max(0, -dy), max(0, dx) : 32 - max(0, -dx)] = src
                if torch.equal(expected, moved):
                    matches.append((dy, dx))
        assert len(matches) == 1
        shifted += matches[0] != (0, 0)
    assert shifted >= 12  # 80 of 81 shifts move the image


def test_cutout_zeros_one_square(one_thread):
    x = torch.ones(32, 3, 32, 32)
    out = diff_augment(x, "cutout", torch.Generator().manual_seed(0))
    full_squares = 0
    for image in out:
        zero = image[0] == 0
        assert torch.equal(zero, (image == 0).all(0))  # the same pixels in every channel
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert 0 < len(rows) <= 16 and 0 < len(cols) <= 16
        box = zero[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        assert box.all() and int(zero.sum()) == box.numel()  # one filled rectangle, nothing else
        full_squares += box.shape == (16, 16)
    assert full_squares > 0
