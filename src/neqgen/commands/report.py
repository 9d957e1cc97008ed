"""Collect every model's metrics of the pipeline into one summary with comparison figures."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np
from omegaconf import DictConfig, open_dict

from neqgen.commands.evaluate import NOISE_FLOOR
from neqgen.config import build_system, metrics_path, plots_dir
from neqgen.evaluation.figures import plot_metrics_over_time, plot_snapshots
from neqgen.tracking import ensure_experiment

log = logging.getLogger(__name__)

# The time-averaged, early-time and worst per-frame scores kept for every model; the lag
# entries exist for rotating systems only.
SUMMARY_KEYS = (
    "jsd_mean",
    "jsd_exact_mean",
    "w1_mean",
    "w2_mean",
    "mmd_mean",
    "energy_mean",
    "population_error_mean",
    "lag_mean",
    "lag_error_mean",
    "jsd_early_mean",
    "w1_early_mean",
    "jsd_max",
    "w1_max",
)


def _read_table(path: Path) -> dict[str, np.ndarray]:
    table = np.genfromtxt(path, delimiter=",", names=True)
    return {name: np.atleast_1d(table[name]) for name in table.dtype.names}


def _equilibrium_summary(table: dict[str, np.ndarray], early_until: float) -> dict:
    """Average the exact density's Jensen-Shannon divergence from the Boltzmann density."""
    early = table["time"] <= early_until
    return {
        "js_from_boltzmann_mean": float(np.mean(table["js"])),
        "js_from_boltzmann_early_mean": float(np.mean(table["js"][early])),
        "js_from_boltzmann_final": float(table["js"][-1]),
    }


def format_table(system: str, summary: dict[str, dict]) -> str:
    """Return the summary as a Markdown table, one row per protocol and model."""
    models = {
        protocol: {name: metrics for name, metrics in entries.items() if name != "equilibrium"}
        for protocol, entries in summary.items()
    }
    keys = [
        key
        for key in SUMMARY_KEYS
        if any(key in metrics for entries in models.values() for metrics in entries.values())
    ]
    header = "| system | protocol | model | " + " | ".join(keys) + " |"
    lines = [header, "|" + " --- |" * (3 + len(keys))]
    for protocol, entries in models.items():
        for name, metrics in entries.items():
            values = " | ".join(f"{metrics[key]:.4g}" if key in metrics else "n/a" for key in keys)
            lines.append(f"| {system} | {protocol} | {name} | {values} |")
    lines.append("")
    for protocol, entries in summary.items():
        if "equilibrium" in entries:
            distance = entries["equilibrium"]
            lines.append(
                f"- {protocol}: Jensen-Shannon divergence of the exact density from the "
                f"instantaneous Boltzmann density, mean {distance['js_from_boltzmann_mean']:.4g}, "
                f"early {distance['js_from_boltzmann_early_mean']:.4g}, final "
                f"{distance['js_from_boltzmann_final']:.4g} nats"
            )
    return "\n".join(lines) + "\n"


def run_report(cfg: DictConfig) -> dict:
    """Write the summary JSON and the comparison figures for cfg.pipeline, and log them.

    The summary maps system -> protocol -> model (and ``noise_floor``) -> metrics. It is
    written to <paths.metrics>/summary/<system>.json (and .md), the figures to
    <paths.plots>/figures/<system>/, and all are logged to a ``report`` run in the
    system's MLflow experiment.
    """
    pipeline = cfg.pipeline
    summary: dict[str, dict] = {}
    figures: dict[str, plt.Figure] = {}
    for protocol in pipeline.protocols:
        protocol_cfg = cfg.copy()
        with open_dict(protocol_cfg):
            protocol_cfg.protocol.name = protocol
        summary[protocol] = {}
        curves = {}
        snapshots = {}
        for name in [*pipeline.models, NOISE_FLOOR]:
            path = metrics_path(protocol_cfg, name)
            if not path.is_file():
                target = "--noise-floor" if name == NOISE_FLOOR else f"model={name}"
                raise FileNotFoundError(
                    f"{path} not found; run `neqgen evaluate {target} system={cfg.system.name} "
                    f"protocol={protocol}` first, or `dvc repro`, or report fewer with "
                    f"pipeline.protocols=[...] pipeline.models=[...]"
                )
            metrics = json.loads(path.read_text())
            summary[protocol][name] = {key: metrics[key] for key in SUMMARY_KEYS if key in metrics}
            label = "noise floor" if name == NOISE_FLOOR else name
            curves[label] = _read_table(plots_dir(protocol_cfg) / f"{name}.csv")
            if name != NOISE_FLOOR:
                snapshots[name] = np.load(plots_dir(protocol_cfg) / f"{name}_snapshots.npz")
        truth = np.load(plots_dir(protocol_cfg) / "truth_snapshots.npz")
        equilibrium_table = plots_dir(protocol_cfg) / "equilibrium.csv"
        if equilibrium_table.is_file():
            summary[protocol]["equilibrium"] = _equilibrium_summary(
                _read_table(equilibrium_table), float(cfg.evaluation.early_until)
            )

        title = f"{cfg.system.name} / {protocol}"
        figures[f"{protocol}_metrics_over_time.png"] = plot_metrics_over_time(curves, title)
        rows = {"held-out truth": truth["samples"]}
        rows.update({name: data["samples"] for name, data in snapshots.items()})
        figures[f"{protocol}_snapshots.png"] = plot_snapshots(
            rows, truth["times"], build_system(cfg.system).domain, title=title
        )

    summary_path = Path(cfg.paths.metrics) / "summary" / f"{cfg.system.name}.json"
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps({cfg.system.name: summary}, indent=2) + "\n")
    table_path = summary_path.with_suffix(".md")
    table_path.write_text(format_table(cfg.system.name, summary))
    figure_dir = Path(cfg.paths.plots) / "figures" / cfg.system.name
    figure_dir.mkdir(parents=True, exist_ok=True)
    for filename, figure in figures.items():
        figure.savefig(figure_dir / filename, dpi=110)
        plt.close(figure)

    with mlflow.start_run(
        experiment_id=ensure_experiment(cfg),
        run_name=f"report-{cfg.system.name}",
        tags={"kind": "report", "system": cfg.system.name},
    ):
        for protocol, entries in summary.items():
            for name, metrics in entries.items():
                for metric, value in metrics.items():
                    mlflow.log_metric(f"{protocol}/{name}/{metric}", float(value))
        mlflow.log_artifact(str(summary_path))
        mlflow.log_artifact(str(table_path))
        for filename in figures:
            mlflow.log_artifact(str(figure_dir / filename), "figures")
    log.info("Wrote %s and %d figures in %s", summary_path, len(figures), figure_dir)
    return summary
