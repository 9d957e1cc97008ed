"""Simulate the training and held-out ensembles of one system and protocol."""

from __future__ import annotations

import contextlib
import logging

import torch
from omegaconf import DictConfig

from neqgen.config import build_system, dataset_path, replica, to_container
from neqgen.data.dataset import EnsembleWriter, library_versions
from neqgen.simulation import frame_times, initial_positions, simulate

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Replica k simulates with the configured seeds plus k times this stride.
REPLICA_SEED_STRIDE = 1000


def run_simulation(cfg: DictConfig) -> dict[str, str]:
    """Simulate both ensembles into temporary files, rename them and return their hashes.

    Each chunk of frames goes to the file as soon as it is simulated, so no ensemble is
    held in memory whole. Both ensembles are complete before either file replaces an
    existing dataset, so a blow-up leaves the existing datasets untouched.
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
    hashes = {}
    with contextlib.ExitStack() as stack:
        writers = {}
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
            writer = stack.enter_context(
                EnsembleWriter(
                    dataset_path(cfg, split), times.numpy(), sim.n_particles, system.dim, metadata
                )
            )
            simulate(
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
                record=lambda frames, writer=writer: writer.write(frames.numpy()),
            )
            writer.finish()
            writers[split] = writer

        # Leaving the with block deletes every temporary file not renamed here.
        for split, writer in writers.items():
            hashes[split] = writer.commit()["content_hash"]
            log.info("Wrote %s (content hash %s)", writer.path, hashes[split][:12])
    return hashes
