"""Bootstrap over images: seeded resamples and percentile confidence intervals.

The unit resampled is the image (key slice): its detections and lesions move together, as
the FROC's false positives per image and its lesions are correlated within an image. A
resample draws ``num_images`` images with replacement; it is represented by how often each
image was drawn, which :func:`ctlesion.evaluate.froc.weighted_sensitivity` scores without
building the resampled lists (the matching of an image does not depend on the others).
Intervals are the percentile bootstrap (Efron & Tibshirani 1993, ch. 13).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

#: Resamples drawn (and scored) per block; fixed, so that a seed always gives the same draws.
CHUNK_RESAMPLES = 16


def resample_counts(num_images: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Draw bootstrap resamples of images, in blocks.

    Args:
        num_images: n, the number of images of the evaluated set (> 0).
        resamples: total number of resamples R (>= 0).
        seed: seed of the ``numpy.random.Generator`` (PCG64): same seed, same draws.

    Yields:
        (R_b, n) int64 arrays, row r counting how often each image was drawn in resample r
        (each row sums to n); the blocks together hold R rows.

    Raises:
        ValueError: if ``num_images`` < 1 or ``resamples`` < 0.
    """
    if num_images < 1 or resamples < 0:
        raise ValueError(f"need num_images >= 1 and resamples >= 0, got {num_images} and {resamples}")
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, CHUNK_RESAMPLES):
        rows = min(CHUNK_RESAMPLES, resamples - start)
        drawn = rng.integers(0, num_images, size=(rows, num_images))
        flat = (drawn + np.arange(rows)[:, None] * num_images).ravel()
        yield np.bincount(flat, minlength=rows * num_images).reshape(rows, num_images)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Percentile bootstrap interval along axis 0, ignoring undefined (NaN) resamples.

    Args:
        samples: (R, ...) float64 statistic per resample; NaN where undefined (e.g. a resample
            that drew no lesion of a group).
        level: coverage, in (0, 1).

    Returns:
        (..., 2) float64 lower and upper bounds (the (1 - level) / 2 and (1 + level) / 2
        quantiles, linear interpolation); NaN where no resample is defined.

    Raises:
        ValueError: if ``level`` is outside (0, 1) or there is no resample.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if samples.ndim == 0 or len(samples) == 0:
        raise ValueError("percentile_interval needs at least one resample")
    quantiles = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    columns = samples.reshape(len(samples), -1)
    defined = ~np.isnan(columns).all(axis=0)
    bounds = np.full((columns.shape[1], 2), np.nan)
    if defined.any():
        bounds[defined] = np.nanpercentile(columns[:, defined], quantiles, axis=0).T
    return bounds.reshape(samples.shape[1:] + (2,))
