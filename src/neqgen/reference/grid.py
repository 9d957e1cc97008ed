"""A uniform Cartesian grid of cells over a system's domain."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class Grid:
    """Uniform cells over a box, the finite volumes of the Fokker-Planck solver.

    Cells are indexed in C order: a flat index runs fastest along the last dimension, as in
    ``numpy.ravel`` of an array of shape ``shape``.

    Parameters
    ----------
    domain:
        Per-dimension (low, high) bounds, as in ``System.domain``.
    n_cells:
        Cells per dimension: one integer for every dimension, or one per dimension.

    Attributes
    ----------
    edges:
        Per dimension, the n_cells[d] + 1 cell boundaries, float64.
    centers:
        Per dimension, the n_cells[d] cell midpoints, float64.
    widths:
        Cell width per dimension, shape (dim,).
    cell_volume:
        Product of the widths (a length in 1D, an area in 2D).
    shape:
        Cells per dimension, as a tuple.

    Raises
    ------
    ValueError
        If a bound pair does not have high > low, ``n_cells`` does not match the number of
        dimensions, or a dimension has fewer than 2 cells.
    """

    domain: Sequence[Sequence[float]]
    n_cells: int | Sequence[int]
    edges: tuple[np.ndarray, ...] = field(init=False, repr=False)
    centers: tuple[np.ndarray, ...] = field(init=False, repr=False)
    widths: np.ndarray = field(init=False, repr=False)
    cell_volume: float = field(init=False, repr=False)
    shape: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self):
        domain = [[float(low), float(high)] for low, high in self.domain]
        for low, high in domain:
            if not high > low:
                raise ValueError(f"reference.domain bounds must have high > low, got {domain}")

        if isinstance(self.n_cells, int | np.integer):
            n_cells = [int(self.n_cells)] * len(domain)
        else:
            n_cells = [int(n) for n in self.n_cells]
        if len(n_cells) != len(domain):
            raise ValueError(
                f"reference.n_cells must give one count per dimension ({len(domain)}), "
                f"got {self.n_cells}"
            )
        for n in n_cells:
            # Two cells are the fewest that can exchange probability through a face.
            if n < 2:
                raise ValueError(f"reference.n_cells must be at least 2, got {self.n_cells}")

        edges = tuple(
            np.linspace(low, high, n + 1) for (low, high), n in zip(domain, n_cells, strict=True)
        )
        widths = np.array(
            [(high - low) / n for (low, high), n in zip(domain, n_cells, strict=True)]
        )
        # Midpoints from the bounds and the width, so that every cell has the same width to
        # round-off; np.linspace edges differ in the last bit.
        centers = tuple(
            low + (np.arange(n) + 0.5) * width
            for (low, _), n, width in zip(domain, n_cells, widths, strict=True)
        )

        object.__setattr__(self, "domain", domain)
        object.__setattr__(self, "n_cells", n_cells)
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "centers", centers)
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "cell_volume", float(np.prod(widths)))
        object.__setattr__(self, "shape", tuple(n_cells))

    @property
    def dim(self) -> int:
        """Number of spatial dimensions."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Total number of cells, the product of ``shape``."""
        return int(np.prod(self.shape))

    def points(self) -> torch.Tensor:
        """Return the cell centres as a float64 tensor of shape (size, dim), in C order.

        This is the layout that ``System.potential`` takes, so
        ``system.potential(grid.points(), t).reshape(grid.shape)`` is V on the grid.
        """
        mesh = np.meshgrid(*self.centers, indexing="ij")
        flat = np.stack([axis.ravel() for axis in mesh], axis=-1)
        return torch.from_numpy(flat)

    def coarsen(self, values: np.ndarray, factor: int | Sequence[int]) -> np.ndarray:
        """Sum blocks of ``factor`` neighbouring cells per dimension.

        Passing cell masses (density times ``cell_volume``) gives the probability of each
        coarse bin. The coarse bins are those of ``numpy.histogramdd`` with
        ``bins = shape[d] // factor[d]`` and ``range = domain``.

        Parameters
        ----------
        values:
            Array of shape (..., *shape); leading axes (such as frames) are kept.
        factor:
            Cells per coarse bin, one integer for every dimension or one per dimension.

        Returns
        -------
        np.ndarray
            Shape (..., shape[0] // factor[0], ..., shape[-1] // factor[-1]).

        Raises
        ------
        ValueError
            If ``values`` does not end with ``shape`` or a factor does not divide its cell
            count.
        """
        values = np.asarray(values)
        if values.shape[values.ndim - self.dim :] != self.shape:
            raise ValueError(
                f"values must end with the grid shape {self.shape}, got shape {values.shape}"
            )
        factors = [int(factor)] * self.dim if isinstance(factor, int) else [int(f) for f in factor]
        lead = values.shape[: values.ndim - self.dim]
        blocked = list(lead)
        for n, f in zip(self.shape, factors, strict=True):
            if f < 1 or n % f != 0:
                raise ValueError(
                    f"coarsening factor must divide the {n} cells of each dimension, got {f}"
                )
            blocked += [n // f, f]
        summed_axes = tuple(len(lead) + 2 * d + 1 for d in range(self.dim))
        return values.reshape(blocked).sum(axis=summed_axes)
