"""Collect every model's metrics over replicas into one comparison per system and protocol."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np
from omegaconf import DictConfig, open_dict
from scipy import stats

from neqgen.commands.evaluate import NOISE_FLOOR
from neqgen.commands.reference import equilibrium_table_path
from neqgen.config import build_system, metrics_path, plots_dir
from neqgen.evaluation.figures import (
    plot_entropy_production,
    plot_error_against_equilibrium,
    plot_metrics_over_time,
    plot_snapshots,
)
from neqgen.tracking import ensure_experiment

log = logging.getLogger(__name__)

# Time-averaged and early-time scores against the held-out ensemble and the exact density,
# and the entropy production; the lag entries exist for rotating systems only.
ACCURACY_KEYS = (
    "jsd_exact_mean",
    "kl_exact_mean",
    "jsd_mean",
    "w1_mean",
    "w2_mean",
    "mmd_mean",
    "energy_mean",
    "population_error_mean",
    "lag_error_mean",
    "jsd_early_mean",
    "jsd_exact_early_mean",
    "jsd_max",
    "jsd_exact_max",
)
ENTROPY_KEYS = (
    "entropy_early",
    "entropy_early_paths",
    "entropy_early_exact",
    "epr_late",
    "epr_late_paths",
    "epr_late_exact",
)
SUMMARY_KEYS = ACCURACY_KEYS + ENTROPY_KEYS
# The score on which models are compared pairwise: against the exact density where one
# exists, else against the held-out ensemble.
HEADLINE_KEYS = ("jsd_exact_mean", "jsd_mean")


def _read_table(path: Path) -> dict[str, np.ndarray]:
    table = np.genfromtxt(path, delimiter=",", names=True)
    return {name: np.atleast_1d(table[name]) for name in table.dtype.names}


def _stack_tables(paths: list[Path]) -> dict[str, np.ndarray]:
    """Read one per-frame table per replica; metrics become arrays (replicas, frames)."""
    tables = [_read_table(path) for path in paths]
    stacked = {"time": tables[0]["time"]}
    for name in tables[0]:
        if name != "time":
            stacked[name] = np.stack([table[name] for table in tables])
    return stacked


def aggregate(values: list[float]) -> dict[str, float]:
    """Return the mean, sample standard deviation and 95% interval half-width of values."""
    array = np.asarray(values, dtype=np.float64)
    n = len(array)
    std = float(array.std(ddof=1)) if n > 1 else float("nan")
    half_width = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(array.mean()), "std": std, "ci95": half_width, "n": n}


def compare(a: list[float], b: list[float]) -> dict[str, float]:
    """Welch's t-test of two models' replica values; the difference is a - b."""
    difference = float(np.mean(a) - np.mean(b))
    if len(a) < 2 or len(b) < 2:
        return {"difference": difference, "t": float("nan"), "p": float("nan")}
    test = stats.ttest_ind(a, b, equal_var=False)
    return {"difference": difference, "t": float(test.statistic), "p": float(test.pvalue)}


def _equilibrium_summary(table: dict[str, np.ndarray], early_until: float) -> dict:
    """Average the exact density's divergences from the instantaneous Boltzmann density.

    The exact entropy production rate is averaged over t >= early_until only: right after
    a sharp start or a quench it is singular, and its frame values do not integrate.
    """
    early = table["time"] <= early_until
    summary = {
        "js_from_boltzmann_mean": float(np.mean(table["js"])),
        "js_from_boltzmann_early_mean": float(np.mean(table["js"][early])),
        "js_from_boltzmann_final": float(table["js"][-1]),
        "kl_from_boltzmann_mean": float(np.mean(table["kl"])),
    }
    late = table["time"] >= early_until
    if late.sum() > 1:
        time = table["time"][late]
        rate = table["entropy_production"][late]
        summary["epr_late_exact"] = float(np.trapezoid(rate, time) / (time[-1] - time[0]))
    return summary


def _format_value(metrics: dict, key: str) -> str:
    if key not in metrics:
        return "n/a"
    std = metrics.get(f"{key}_std")
    if std is None or not math.isfinite(std):
        return f"{metrics[key]:.4g}"
    return f"{metrics[key]:.4g} ± {std:.2g}"


def _markdown_table(protocol: str, models: dict[str, dict], keys: tuple[str, ...]) -> list[str]:
    keys = [key for key in keys if any(key in metrics for metrics in models.values())]
    if not keys:
        return []
    lines = [
        "| protocol | model | " + " | ".join(keys) + " |",
        "|" + " --- |" * (2 + len(keys)),
    ]
    for name, metrics in models.items():
        values = " | ".join(_format_value(metrics, key) for key in keys)
        lines.append(f"| {protocol} | {name} | {values} |")
    return [*lines, ""]


def format_table(system: str, summary: dict[str, dict]) -> str:
    """Return the summary as Markdown: per protocol, tables of mean ± std over replicas."""
    lines = [f"# {system}", ""]
    for protocol, entries in summary.items():
        models = {
            name: metrics
            for name, metrics in entries.items()
            if name not in ("equilibrium", "comparisons")
        }
        replicas = max(int(metrics.get("n_replicas", 1)) for metrics in models.values())
        if replicas > 1:
            spread = f"Mean ± standard deviation over {replicas} replicas."
        else:
            spread = "One replica, so no spread."
        lines += [f"## {protocol}", "", spread, ""]
        lines += _markdown_table(protocol, models, ACCURACY_KEYS)
        lines += _markdown_table(protocol, models, ENTROPY_KEYS)
        if "equilibrium" in entries:
            distance = entries["equilibrium"]
            lines.append(
                f"- Distance from equilibrium (JS of the exact density from the instantaneous "
                f"Boltzmann density): mean {distance['js_from_boltzmann_mean']:.4g}, "
                f"early (t <= evaluation.early_until) "
                f"{distance['js_from_boltzmann_early_mean']:.4g}, final "
                f"{distance['js_from_boltzmann_final']:.4g} nats; KL mean "
                f"{distance['kl_from_boltzmann_mean']:.4g} nats."
                + (
                    f" Exact entropy production rate after the transient (from the "
                    f"Fokker-Planck fluxes): {distance['epr_late_exact']:.4g} k_B per unit time."
                    if "epr_late_exact" in distance
                    else ""
                )
            )
        for pair, result in entries.get("comparisons", {}).items():
            verdict = "significant" if result["p"] < 0.05 else "not significant"
            lines.append(
                f"- {pair} on {result['metric']}: difference {result['difference']:.3g} "
                f"(Welch t = {result['t']:.3g}, p = {result['p']:.2g}; {verdict} at 5%)."
            )
        lines.append("")
    return "\n".join(lines)


def _load_entry(cfg: DictConfig, name: str, replicas: list[int]) -> list[dict]:
    """Return the metrics of one model (or the noise floor) for every replica."""
    records = []
    for replica in replicas:
        replica_cfg = cfg.copy()
        with open_dict(replica_cfg):
            replica_cfg.replica = int(replica)
        path = metrics_path(replica_cfg, name)
        if not path.is_file():
            target = "--noise-floor" if name == NOISE_FLOOR else f"model={name}"
            raise FileNotFoundError(
                f"{path} not found; run `neqgen evaluate {target} system={cfg.system.name} "
                f"protocol={cfg.protocol.name} replica={replica}` first, or `dvc repro`, or "
                f"report fewer with pipeline.replicas=[...] pipeline.protocols=[...] "
                f"pipeline.models=[...]"
            )
        records.append(json.loads(path.read_text()))
    return records


def _protocol_report(cfg: DictConfig, replicas: list[int]) -> tuple[dict, dict, dict]:
    """Summarise one protocol: metrics with spreads, comparisons and the figures' data."""
    names = [*cfg.pipeline.models, NOISE_FLOOR]
    entries, values, curves, entropy_curves = {}, {}, {}, {}
    for name in names:
        records = _load_entry(cfg, name, replicas)
        label = "noise floor" if name == NOISE_FLOOR else name
        metrics = {"n_replicas": len(records)}
        values[name] = {}
        for key in SUMMARY_KEYS:
            if all(key in record for record in records):
                values[name][key] = [record[key] for record in records]
                statistics = aggregate(values[name][key])
                metrics[key] = statistics["mean"]
                if len(records) > 1:
                    metrics[f"{key}_std"] = statistics["std"]
                    metrics[f"{key}_ci95"] = statistics["ci95"]
        entries[name] = metrics
        folders = [plots_dir(_with_replica(cfg, replica)) for replica in replicas]
        curves[label] = _stack_tables([folder / f"{name}.csv" for folder in folders])
        entropy_tables = [folder / f"{name}_entropy.csv" for folder in folders]
        if all(path.is_file() for path in entropy_tables):
            entropy_curves[label] = _stack_tables(entropy_tables)

    metric = next((key for key in HEADLINE_KEYS if all(key in v for v in values.values())), None)
    comparisons = {}
    if metric is not None and len(replicas) > 1:
        # Every model against the best one and against the noise floor: enough to tell
        # which differences exceed the seed noise, without all pairs.
        models = [name for name in entries if name != NOISE_FLOOR]
        best = min(models, key=lambda name: entries[name][metric])
        for name in models:
            for other in (best, NOISE_FLOOR):
                if name != other:
                    result = compare(values[name][metric], values[other][metric])
                    comparisons[f"{name} - {other}"] = {"metric": metric, **result}
    entries["comparisons"] = comparisons
    table_path = equilibrium_table_path(cfg)
    equilibrium = _read_table(table_path) if table_path.is_file() else None
    if equilibrium is not None:
        entries["equilibrium"] = _equilibrium_summary(
            equilibrium, float(cfg.evaluation.early_until)
        )
    return entries, {"curves": curves, "entropy": entropy_curves}, {"equilibrium": equilibrium}


def _with_replica(cfg: DictConfig, replica: int) -> DictConfig:
    copy = cfg.copy()
    with open_dict(copy):
        copy.replica = int(replica)
    return copy


def run_report(cfg: DictConfig) -> dict:
    """Write the comparison of cfg.pipeline's models for one system, and log it to MLflow.

    For every protocol in pipeline.protocols it reads each model's (and the noise floor's)
    metrics of every replica in pipeline.replicas and reports their mean, standard
    deviation and 95% interval, Welch t-tests between every pair, and the system's
    distance from equilibrium. Writes <paths.metrics>/summary/<system>.json (and .md), the
    figures to <paths.plots>/figures/<system>/, and logs all to a ``report`` run.
    """
    pipeline = cfg.pipeline
    replicas = [int(replica) for replica in pipeline.get("replicas", [0])]
    if not replicas:
        raise ValueError("pipeline.replicas is empty; list at least one replica, e.g. [0]")
    if len(set(replicas)) != len(replicas):
        raise ValueError(
            f"pipeline.replicas={replicas} lists a replica twice, which would fake the "
            f"spread; list each replica once"
        )
    system = build_system(cfg.system)
    summary: dict[str, dict] = {}
    figures: dict[str, plt.Figure] = {}
    scatter: dict[str, dict] = {}
    for protocol in pipeline.protocols:
        protocol_cfg = cfg.copy()
        with open_dict(protocol_cfg):
            protocol_cfg.protocol.name = protocol
        entries, series, reference = _protocol_report(protocol_cfg, replicas)
        summary[protocol] = entries
        title = f"{cfg.system.name} / {protocol} ({len(replicas)} replicas)"
        figures[f"{protocol}_metrics_over_time.png"] = plot_metrics_over_time(
            series["curves"], title
        )
        if series["entropy"]:
            figures[f"{protocol}_entropy_production.png"] = plot_entropy_production(
                series["entropy"], title
            )
        first = plots_dir(_with_replica(protocol_cfg, replicas[0]))
        truth = np.load(first / "truth_snapshots.npz")
        rows = {"held-out truth": truth["samples"]}
        for name in pipeline.models:
            rows[name] = np.load(first / f"{name}_snapshots.npz")["samples"]
        figures[f"{protocol}_snapshots.png"] = plot_snapshots(
            rows, truth["times"], system.domain, title=f"{title}, replica {replicas[0]}"
        )
        equilibrium = reference["equilibrium"]
        if equilibrium is not None:
            for label, curve in series["curves"].items():
                if "jsd_exact" in curve:
                    distance = np.interp(curve["time"], equilibrium["time"], equilibrium["js"])
                    error = np.atleast_2d(curve["jsd_exact"]).mean(0)
                    scatter.setdefault(label, {})[protocol] = (distance, error)
    if scatter:
        figures["error_vs_equilibrium.png"] = plot_error_against_equilibrium(
            scatter, f"{cfg.system.name}: model error against distance from equilibrium"
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
                if name == "comparisons":
                    continue
                for metric, value in metrics.items():
                    if math.isfinite(float(value)):
                        key = f"{protocol}/{name.replace(' ', '_')}/{metric}"
                        mlflow.log_metric(key, float(value))
        mlflow.log_artifact(str(summary_path))
        mlflow.log_artifact(str(table_path))
        for filename in figures:
            mlflow.log_artifact(str(figure_dir / filename), "figures")
    log.info("Wrote %s and %d figures in %s", summary_path, len(figures), figure_dir)
    return summary
