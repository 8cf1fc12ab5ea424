"""Small real images for tests."""

from __future__ import annotations

import numpy as np


def astronaut_crop(i: int, size: int = 24) -> np.ndarray:
    """A size×size RGB crop of scikit-image's astronaut, a different one for each ``i``."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[40 + 7 * i:40 + 7 * i + size, 150 + 5 * i:150 + 5 * i + size])
