"""Simulate the training and held-out ensembles of one system and protocol."""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig

from neqgen.config import build_system, dataset_path, replica, to_container
from neqgen.data.dataset import library_versions, save_ensemble
from neqgen.simulation import frame_times, initial_positions, simulate

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Replica k simulates with the configured seeds plus k times this stride.
REPLICA_SEED_STRIDE = 1000


def run_simulation(cfg: DictConfig) -> dict[str, str]:
    """Simulate both ensembles, then write them; return each split's content hash.

    Both ensembles are simulated before either file is written, so a blow-up leaves the
    existing datasets untouched.
    """
    sim = cfg.simulation
    if sim.seed == sim.heldout_seed:
        raise ValueError(
            f"simulation.heldout_seed must differ from simulation.seed (both {sim.seed}), "
            f"or the held-out reference is not independent"
        )
    if sim.n_particles < 1:
        raise ValueError(f"simulation.n_particles must be positive, got {sim.n_particles}")
    if sim.dtype not in DTYPES:
        raise ValueError(f"simulation.dtype must be one of {sorted(DTYPES)}, got {sim.dtype!r}")
    device = sim.device
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "simulation.device=cuda but no CUDA device is visible; use simulation.device=cpu"
        )

    system = build_system(cfg.system)
    times = frame_times(sim.horizon, sim.n_frames)
    offset = REPLICA_SEED_STRIDE * replica(cfg)
    seeds = {"train": int(sim.seed) + offset, "heldout": int(sim.heldout_seed) + offset}
    positions = {}
    for split, seed in seeds.items():
        log.info(
            "Simulating %s ensemble of %s/%s: %d particles, %d frames, seed %d",
            split,
            cfg.system.name,
            cfg.protocol.name,
            sim.n_particles,
            sim.n_frames,
            seed,
        )
        generator = torch.Generator().manual_seed(int(seed))
        x0 = initial_positions(system, cfg.protocol.start, sim.n_particles, generator)
        positions[split] = simulate(
            system,
            x0,
            times,
            dt=sim.dt,
            seed=seed,
            method=sim.method,
            escape_radius=sim.escape_radius,
            n_chunks=sim.n_chunks,
            device=device,
            dtype=DTYPES[sim.dtype],
        )

    hashes = {}
    for split, seed in seeds.items():
        metadata = {
            "split": split,
            "seed": seed,
            "replica": replica(cfg),
            "system": cfg.system.name,
            "protocol": cfg.protocol.name,
            # The sections that define the data; model and trainer settings stay out so
            # they cannot change a dataset's hash.
            "config": {
                key: to_container(cfg[key]) for key in ("system", "protocol", "simulation")
            },
            "versions": library_versions(),
        }
        path = dataset_path(cfg, split)
        ensemble = save_ensemble(path, positions[split].numpy(), times.numpy(), metadata)
        hashes[split] = ensemble.content_hash
        log.info("Wrote %s (content hash %s)", path, ensemble.content_hash[:12])
    return hashes
