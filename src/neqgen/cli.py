"""The ``neqgen`` command: simulate, train, tune, evaluate, report and browse runs.

Every subcommand takes Hydra overrides of conf/config.yaml, for example
``neqgen train model=energy protocol=one_well trainer.max_epochs=5``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException

from neqgen.config import ConfigError, load_config
from neqgen.simulation import SimulationError

log = logging.getLogger("neqgen")

OVERRIDES_HELP = (
    "Hydra overrides of conf/config.yaml, such as system=quintuple_well protocol=one_well "
    "simulation.n_particles=2000 experiment=tiny"
)

COMMANDS = {
    "simulate": (
        "Simulate the training and held-out ensembles of one system and protocol with "
        "torchsde and write them to "
        "<paths.data>/<system>/<protocol>/r<replica>/{train,heldout}.npz."
    ),
    "train": (
        "Train one model (model=<name of a file in conf/model/>, for example energy, "
        "diffusion or bridge) on the training ensemble with a Lightning Trainer, recorded "
        "as an MLflow run; writes the checkpoint and run.json to "
        "<paths.models>/<system>/<protocol>/r<replica>/<model>/."
    ),
    "tune": (
        "Tune one model's hyperparameters with an Optuna study over its search space "
        "(conf/tune/<model>.yaml): every trial trains like `neqgen train`, as an MLflow run "
        "nested under the study's run. Rerunning the command resumes the study; writes the "
        "best configuration to conf/model/tuned/<study>.yaml."
    ),
    "evaluate": (
        "Sample a trained model at the recorded frames and score it against the held-out "
        "ensemble and the exact density (per-frame divergences, Wasserstein distances, "
        "MMD, well populations, entropy production), logging the results into the model's "
        "MLflow run. With --noise-floor, score the training "
        "ensemble instead, which gives the sampling-noise floor."
    ),
    "reference": (
        "Solve the Fokker-Planck equation of one system and protocol on a grid (the exact "
        "density at every recorded frame) and write its distance from the instantaneous "
        "Boltzmann density; later evaluations then also score models against it."
    ),
    "report": (
        "Collect the metrics of one system (system=...) for every protocol, replica and "
        "model listed in conf/pipeline/ into <paths.metrics>/summary/<system>.{json,md} "
        "with spreads over replicas, and comparison figures, logged as an MLflow run."
    ),
    "data": (
        "Inspect the datasets of the workspace. `neqgen data list [--json] [overrides]` "
        "shows every ensemble and reference under <paths.data> with its sizes, seed, DVC "
        "md5, content hash and whether the default DVC remote has it."
    ),
    "ui": (
        "Start the MLflow UI on the project's store (<paths.mlruns>/mlflow.db), bound to "
        "ui.host (127.0.0.1 by default) and ui.port."
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neqgen",
        description="Tracked experiments on generative models of driven stochastic systems.",
    )
    parser.add_argument(
        "--config-dir",
        default=None,
        help="folder with config.yaml (default: $NEQGEN_CONFIG_DIR or ./conf)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, description in COMMANDS.items():
        summary = description.split(". ")[0].split("; ")[0].rstrip(".") + "."
        sub = subcommands.add_parser(name, help=summary, description=description)
        if name == "data":
            actions = sub.add_subparsers(dest="data_action", required=True, metavar="ACTION")
            sub = actions.add_parser(
                "list",
                help="list every dataset with its sizes, hashes and remote status",
                description=description,
            )
            sub.add_argument(
                "--json", action="store_true", help="print the listing as JSON instead of a table"
            )
        sub.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
        sub.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="log at DEBUG level and show the traceback of an error",
        )
        if name == "evaluate":
            sub.add_argument(
                "--noise-floor",
                action="store_true",
                help="score the training ensemble against the held-out one instead of a model",
            )
        if name == "ui":
            sub.add_argument(
                "--dry-run",
                action="store_true",
                help="print the mlflow command and address without starting the server",
            )
    return parser


def serve_ui(cfg, dry_run: bool = False) -> int:
    """Run ``mlflow ui`` on the project's store and return its exit code."""
    from neqgen.tracking import artifact_root, tracking_uri

    host, port = str(cfg.ui.host), cfg.ui.port
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"ui.port must be an integer in [1, 65535], got {port!r}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({error.strerror or error}); check ui.host, or "
                f"pick another port with `neqgen ui ui.port=5001`"
            ) from error
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri(cfg),
        "--default-artifact-root",
        artifact_root(cfg).as_uri(),
        "--host",
        host,
        "--port",
        str(port),
    ]
    print(f"MLflow UI for {Path(cfg.paths.mlruns).resolve()} at http://{host}:{port}", flush=True)
    if dry_run:
        print(" ".join(command))
        return 0
    # Replace this process with the server, so signals (Ctrl-C, SIGTERM) reach it directly.
    os.execv(command[0], command)


def set_threads(cfg) -> None:
    """Apply cfg.threads, torch's intra-op thread count on CPU (null keeps torch's default)."""
    threads = cfg.get("threads")
    if threads is None:
        return
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive integer or null, got {threads!r}")
    import torch

    torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Lightning prints through handlers of its own; without this its lines appear twice.
    logging.getLogger("lightning.pytorch").propagate = False
    try:
        cfg = load_config(args.overrides, args.config_dir)
        set_threads(cfg)
        if args.command == "simulate":
            from neqgen.commands.simulate import run_simulation

            run_simulation(cfg)
        elif args.command == "train":
            from neqgen.commands.train import run_training

            run_training(cfg)
        elif args.command == "tune":
            from neqgen.commands.tune import TuningError, run_tuning

            try:
                run_tuning(cfg, config_dir=args.config_dir, overrides=args.overrides)
            except TuningError as error:
                log.error("%s", error, exc_info=args.verbose)
                return 1
        elif args.command == "evaluate":
            from neqgen.commands import evaluate

            if args.noise_floor:
                evaluate.run_noise_floor(cfg)
            else:
                evaluate.run_evaluation(cfg)
        elif args.command == "reference":
            from neqgen.commands.reference import run_reference

            run_reference(cfg)
        elif args.command == "report":
            from neqgen.commands.report import run_report

            run_report(cfg)
        elif args.command == "data":
            from neqgen.commands.data import run_data_list

            print(run_data_list(cfg, as_json=args.json))
        elif args.command == "ui":
            return serve_ui(cfg, dry_run=args.dry_run)
    except InstantiationException as error:
        # Hydra wraps the constructor's own error (say, a ValueError naming the setting).
        log.error("%s", error.__cause__ or error, exc_info=args.verbose)
        return 2
    except (ConfigError, ValueError, TypeError, FileNotFoundError, SimulationError) as error:
        # TypeError comes from a config value of the wrong type; -v shows the traceback.
        log.error("%s", error, exc_info=args.verbose)
        return 2
    except MisconfigurationException as error:
        log.error("invalid trainer settings: %s", error, exc_info=args.verbose)
        return 2
    except RuntimeError as error:
        # Divergent training or sampling; the message names the setting to change.
        log.error("%s (run with -v for the traceback)", error, exc_info=args.verbose)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
