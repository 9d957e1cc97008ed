"""Langevin and Metropolis-adjusted Langevin (MALA) chains on an energy E(x).

Both kernels target the density exp(-E(x)) / Z, with E dimensionless (for a physical
system, E = beta V). A step of size h (in units of x squared) proposes

    y = x - h grad E(x) + sqrt(2 h) z,    z ~ N(0, I).

The unadjusted Langevin algorithm (ULA) always moves to y, so its stationary density is
biased by O(h). MALA accepts y with probability

    min(1, exp(E(x) - E(y)) q(x | y) / q(y | x)),
    log q(y | x) = -|y - x + h grad E(x)|^2 / (4 h),

which makes exp(-E) exactly stationary (see Roberts and Rosenthal 1998, "Optimal scaling
of discrete approximations to Langevin diffusions", J. R. Stat. Soc. B 60). Gradients
come from autograd, so any differentiable energy works, including a neural network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

EnergyFunction = Callable[[torch.Tensor], torch.Tensor]
"""A map from positions of shape (n, dim) to energies of shape (n,)."""

METHODS = ("langevin", "mala")

# Gain of the per-chain step-size adaptation in log h per unit of acceptance error.
ADAPTATION_RATE = 0.2


@dataclass(frozen=True)
class ChainResult:
    """The states kept from a batch of chains.

    Attributes
    ----------
    samples:
        Kept states, shape (n_kept, n_chains, dim), oldest first; detached from autograd.
    acceptance:
        Per-chain fraction of accepted MALA proposals over the steps after the burn-in,
        shape (n_chains,); None for the unadjusted Langevin algorithm, which accepts every
        move.
    step_size:
        Per-chain step size after the burn-in, shape (n_chains,).
    """

    samples: torch.Tensor
    acceptance: torch.Tensor | None = None
    step_size: torch.Tensor | None = None

    @property
    def final(self) -> torch.Tensor:
        """The last state of every chain, shape (n_chains, dim)."""
        return self.samples[-1]

    @property
    def acceptance_rate(self) -> float | None:
        """Fraction of accepted MALA proposals over all chains after the burn-in; None for ULA."""
        if self.acceptance is None:
            return None
        return float(self.acceptance.mean())


def energy_and_gradient(
    energy: EnergyFunction, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return E(x), shape (n,), and grad E(x), shape (n, dim), both detached.

    Works inside ``torch.no_grad`` and ``torch.inference_mode`` blocks (as in sampling and
    Lightning validation): autograd is switched back on locally and x is copied into a
    normal tensor. Only the gradient with respect to x is computed, so the parameters of a
    network energy receive no gradient.

    Raises
    ------
    ValueError
        If the energy does not return one value per position.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        values = energy(x)
        if values.shape != x.shape[:1]:
            raise ValueError(
                f"the energy must return shape ({len(x)},) for positions of shape "
                f"{tuple(x.shape)}, got {tuple(values.shape)}"
            )
        (gradient,) = torch.autograd.grad(values.sum(), x)
    return values.detach(), gradient.detach()


def reflect_into_box(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Mirror positions at the faces of the box [low, high] until they lie inside it.

    The reflection is periodic with period 2 (high - low), so even a move longer than the
    box lands inside.
    """
    width = high - low
    folded = torch.remainder(x - low, 2 * width)
    return low + torch.where(folded > width, 2 * width - folded, folded)


def langevin(
    energy: EnergyFunction,
    start: torch.Tensor,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    burn_in: int = 0,
    thinning: int | None = None,
    domain: list[list[float]] | None = None,
    target_acceptance: float | None = None,
) -> ChainResult:
    """Run the unadjusted Langevin algorithm (ULA) on every row of ``start``.

    The update is x <- x - h grad E(x) + sqrt(2 h) z. Its stationary density differs from
    exp(-E) by O(h): for E = |x|^2 / (2 s^2) the variance is s^2 / (1 - h / (2 s^2)).
    With a ``domain``, moves that leave the box are mirrored at its faces, which
    approximates the reflected diffusion whose stationary density is exp(-E) restricted
    to the box.

    Parameters
    ----------
    energy:
        E(x) for x of shape (n_chains, dim), returning shape (n_chains,).
    start:
        Initial states, shape (n_chains, dim), for example uniform points of the domain
        or the states of a replay buffer.
    step_size:
        h, in units of x squared (the time step of the Langevin dynamics at unit
        temperature); the initial value when ``target_acceptance`` is set.
    n_steps:
        Number of updates of every chain.
    generator:
        Random generator on the device of ``start``, for reproducible chains.
    burn_in, thinning, target_acceptance:
        See :func:`run_chains`. For ULA the acceptance is that of the MALA test that the
        move would have faced, a measure of the discretisation error of the step.
    domain:
        Per-dimension (low, high) bounds that confine the chains; None for no bounds.

    Returns
    -------
    ChainResult
        The kept states, with ``acceptance`` None.
    """
    return run_chains(
        "langevin",
        energy,
        start,
        step_size,
        n_steps,
        generator,
        burn_in,
        thinning,
        domain,
        target_acceptance,
    )


def mala(
    energy: EnergyFunction,
    start: torch.Tensor,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    burn_in: int = 0,
    thinning: int | None = None,
    domain: list[list[float]] | None = None,
    target_acceptance: float | None = None,
) -> ChainResult:
    """Run the Metropolis-adjusted Langevin algorithm on every row of ``start``.

    The Metropolis-Hastings test makes exp(-E) exactly stationary for any step size, so a
    larger step only lowers the acceptance rate. With a ``domain``, proposals outside the
    box are rejected, which targets exp(-E) restricted to the box. Parameters and returns
    are those of :func:`langevin`, except that ``acceptance`` is set.
    """
    return run_chains(
        "mala",
        energy,
        start,
        step_size,
        n_steps,
        generator,
        burn_in,
        thinning,
        domain,
        target_acceptance,
    )


def run_chains(
    method: str,
    energy: EnergyFunction,
    start: torch.Tensor,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    burn_in: int = 0,
    thinning: int | None = None,
    domain: list[list[float]] | None = None,
    target_acceptance: float | None = None,
) -> ChainResult:
    """Run ``method`` ("langevin" or "mala") chains; see :func:`langevin` and :func:`mala`.

    Parameters
    ----------
    burn_in:
        Number of initial steps whose states are discarded and whose acceptances are not
        counted.
    thinning:
        Keep the state after every ``thinning``-th step past ``burn_in``; None keeps only
        the final state of each chain.
    target_acceptance:
        If set, every chain adapts its own step size during the burn-in,
        log h <- log h + 0.2 (a - target), with a the Metropolis-Hastings acceptance
        probability of its last proposal, and keeps it fixed afterwards. The kept states
        then come from a fixed kernel, so adaptation does not bias them. About 0.6 suits
        MALA (Roberts and Rosenthal 1998 derive 0.574 as optimal in high dimension). ULA
        needs a higher target such as 0.9 to keep its bias small.

    Raises
    ------
    ValueError
        For an unknown method, a non-positive step size or fewer than one step. Also for
        a burn-in that leaves no step to keep, a non-positive thinning, or a target
        acceptance outside (0, 1) or without burn-in. Also for a ``start`` that is not
        two-dimensional, or a domain whose size does not match ``start``.
    """
    check_settings(method, step_size, n_steps, burn_in, thinning, target_acceptance)
    if start.ndim != 2:
        raise ValueError(f"chain starts must have shape (n_chains, dim), got {tuple(start.shape)}")
    low, high = _bounds(domain, start)

    x = start.detach().clone()
    energies, gradients = energy_and_gradient(energy, x)
    step_sizes = torch.full((len(x), 1), float(step_size), device=x.device, dtype=x.dtype)
    accepted = torch.zeros(len(x), device=x.device, dtype=x.dtype)
    kept = []
    for step in range(1, n_steps + 1):
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        proposal = x - step_sizes * gradients + torch.sqrt(2 * step_sizes) * noise
        if method == "langevin" and low is not None:
            proposal = reflect_into_box(proposal, low, high)
        proposal_energies, proposal_gradients = energy_and_gradient(energy, proposal)
        log_acceptance = _log_acceptance(
            x, proposal, energies, proposal_energies, gradients, proposal_gradients, step_sizes
        )

        if method == "mala":
            if low is not None:
                inside = ((proposal >= low) & (proposal <= high)).all(-1)
                log_acceptance = log_acceptance.masked_fill(~inside, -math.inf)
            uniform = torch.rand(len(x), device=x.device, dtype=x.dtype, generator=generator)
            accept = torch.log(uniform) < log_acceptance
        else:
            accept = torch.ones(len(x), dtype=torch.bool, device=x.device)
        x = torch.where(accept[:, None], proposal, x)
        energies = torch.where(accept, proposal_energies, energies)
        gradients = torch.where(accept[:, None], proposal_gradients, gradients)

        if step <= burn_in:
            if target_acceptance is not None:
                probability = log_acceptance.clamp(max=0).exp()
                step_sizes = (
                    step_sizes
                    * torch.exp(ADAPTATION_RATE * (probability - target_acceptance))[:, None]
                )
            continue
        accepted += accept.to(x.dtype)
        if _is_kept(step, burn_in, thinning, n_steps):
            kept.append(x.clone())

    acceptance = accepted / (n_steps - burn_in) if method == "mala" else None
    return ChainResult(torch.stack(kept), acceptance, step_sizes.squeeze(-1))


def _log_acceptance(x, proposal, energies, proposal_energies, gradients, proposal_gradients, h):
    """Return the log Metropolis-Hastings ratio of Langevin proposals, NaN mapped to -inf.

    log [exp(-E(y)) q(x | y)] - log [exp(-E(x)) q(y | x)] with
    log q(y | x) = -|y - x + h grad E(x)|^2 / (4 h) + const.
    """
    forward = proposal - x + h * gradients
    backward = x - proposal + h * proposal_gradients
    log_ratio_q = ((forward**2).sum(-1) - (backward**2).sum(-1)) / (4 * h.squeeze(-1))
    log_ratio = energies - proposal_energies + log_ratio_q
    return torch.nan_to_num(log_ratio, nan=-math.inf)


def _is_kept(step: int, burn_in: int, thinning: int | None, n_steps: int) -> bool:
    if thinning is None:
        return step == n_steps
    return (step - burn_in) % thinning == 0


def check_settings(
    method: str,
    step_size: float,
    n_steps: int,
    burn_in: int = 0,
    thinning: int | None = None,
    target_acceptance: float | None = None,
) -> None:
    """Raise ValueError for settings that :func:`run_chains` would reject; see there."""
    if method not in METHODS:
        raise ValueError(f"sampler must be one of {METHODS}, got {method!r}")
    if target_acceptance is not None and not 0 < target_acceptance < 1:
        raise ValueError(
            f"sampler target acceptance must be in (0, 1) or None, got {target_acceptance}"
        )
    if target_acceptance is not None and burn_in < 1:
        raise ValueError(
            "sampler step-size adaptation runs during the burn-in, so a target acceptance "
            "needs a burn-in of at least 1 step, got 0"
        )
    if not step_size > 0:
        raise ValueError(f"sampler step size must be positive, got {step_size}")
    if n_steps < 1:
        raise ValueError(f"sampler number of steps must be at least 1, got {n_steps}")
    if not 0 <= burn_in < n_steps:
        raise ValueError(
            f"sampler burn-in must be in [0, n_steps) = [0, {n_steps}) so that some state "
            f"is kept, got {burn_in}"
        )
    if thinning is not None and thinning < 1:
        raise ValueError(f"sampler thinning must be a positive integer or None, got {thinning}")
    if thinning is not None and thinning > n_steps - burn_in:
        raise ValueError(
            f"sampler thinning ({thinning}) exceeds the {n_steps - burn_in} steps after "
            f"burn-in, so no state would be kept; lower it or add steps"
        )


def _bounds(domain, start):
    """Return the domain as two tensors on the device of ``start``, or (None, None)."""
    if domain is None:
        return None, None
    bounds = torch.as_tensor(domain, dtype=start.dtype, device=start.device)
    if bounds.shape != (start.shape[1], 2):
        raise ValueError(
            f"sampler domain must list {start.shape[1]} [low, high] pairs for chains of "
            f"dimension {start.shape[1]}, got {domain}"
        )
    return bounds[:, 0], bounds[:, 1]


def uniform_in_domain(
    n: int, domain: list[list[float]], generator: torch.Generator | None, device=None
) -> torch.Tensor:
    """Draw n points uniformly in the box ``domain``, shape (n, dim), float32."""
    bounds = torch.as_tensor(domain, dtype=torch.float32, device=device)
    uniform = torch.rand(n, len(bounds), device=device, generator=generator)
    return bounds[:, 0] + (bounds[:, 1] - bounds[:, 0]) * uniform
