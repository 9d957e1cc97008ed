"""The tune command: Optuna studies over model configs, tracked in MLflow."""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from neqgen.cli import main
from neqgen.commands import tune as tune_command
from neqgen.commands.simulate import run_simulation
from neqgen.commands.train import run_training
from neqgen.commands.tune import TuningError, is_surplus, run_tuning
from neqgen.config import load_config
from neqgen.tuning.space import parse_search_space
from neqgen.tuning.study import build_sampler, build_storage
from neqgen.tuning.workers import WORKER_ATTRIBUTE, fail_dead_local_trials, worker_identity

from .conftest import REPO_ROOT

MODELS = sorted(path.stem for path in (REPO_ROOT / "conf" / "model").glob("*.yaml"))


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A copy of conf/ and one tiny simulated ensemble, shared by this module's tests.

    Tuned configs land in the copy's model/tuned/, never in the repository's conf/.
    """
    root = tmp_path_factory.mktemp("tune")
    shutil.copytree(REPO_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("tuned"))
    run_simulation(load_config(["experiment=tiny", f"paths.data={root / 'data'}"], root / "conf"))
    return root


def tune_overrides(workspace: Path, folder: Path, *extra: str, epochs: int = 2) -> list[str]:
    """Return tiny-sized overrides with the data of workspace and every output in folder."""
    outputs = [
        f"paths.{name}={folder / name}" for name in ("models", "metrics", "plots", "mlruns")
    ]
    return [
        "experiment=tiny",
        f"paths.data={workspace / 'data'}",
        *outputs,
        f"trainer.max_epochs={epochs}",
        *extra,
    ]


def tune(workspace: Path, overrides: list[str]) -> dict:
    cfg = load_config(overrides, workspace / "conf")
    return run_tuning(cfg, config_dir=workspace / "conf", overrides=overrides)


def load_study(folder: Path, name: str) -> optuna.Study:
    storage = f"sqlite:///{folder / 'mlruns' / 'optuna.db'}"
    return optuna.load_study(study_name=name, storage=storage)


def mlflow_runs(folder: Path) -> SimpleNamespace:
    """Return the client, the study parent runs and the trial runs (by trial number)."""
    client = MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("five_well")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if run.data.tags.get("optuna.role") == "study"]
    trials = {
        int(run.data.tags["optuna.trial"]): run for run in runs if "optuna.trial" in run.data.tags
    }
    return SimpleNamespace(client=client, parents=parents, trials=trials)


@pytest.fixture(scope="module")
def finished_study(workspace, tmp_path_factory):
    """A 3-trial study without pruning, run once for the tests that read its records."""
    folder = tmp_path_factory.mktemp("study")
    overrides = tune_overrides(
        workspace, folder, "tune.n_trials=3", "tune.study_name=record", "tune.pruner.kind=none"
    )
    handler = ListHandler()
    logger = logging.getLogger("neqgen")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        summary = tune(workspace, overrides)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return SimpleNamespace(
        folder=folder, overrides=overrides, summary=summary, messages=handler.messages
    )


def test_study_completes_every_trial(finished_study):
    study = load_study(finished_study.folder, "record")
    trials = study.get_trials()

    assert [trial.number for trial in trials] == [0, 1, 2]
    assert all(trial.state == TrialState.COMPLETE for trial in trials)
    assert finished_study.summary["n_finished"] == 3
    assert finished_study.summary["best_value"] == study.best_value


def test_trials_are_nested_mlflow_runs(finished_study):
    study = load_study(finished_study.folder, "record")
    runs = mlflow_runs(finished_study.folder)

    assert len(runs.parents) == 1
    assert sorted(runs.trials) == [0, 1, 2]
    for trial in study.get_trials():
        run = runs.trials[trial.number]
        assert run.data.tags["mlflow.parentRunId"] == runs.parents[0].info.run_id
        assert run.data.tags["optuna.state"] == "complete"
        for name, value in trial.params.items():
            assert run.data.params[f"trial.{name}"] == str(value), name
        assert run.data.metrics["tune/value"] == pytest.approx(trial.value)
        history = runs.client.get_metric_history(run.info.run_id, "val/loss")
        assert len(history) == 2, "one val/loss per epoch"


def test_parent_run_holds_figures_and_best_config(finished_study):
    runs = mlflow_runs(finished_study.folder)
    parent = runs.parents[0].info.run_id

    files = {item.path for item in runs.client.list_artifacts(parent)}
    figures = {item.path for item in runs.client.list_artifacts(parent, "figures")}

    assert {"tuned_model.yaml", "best_trial_config.yaml", "trials.csv"} <= files
    assert figures == {
        "figures/optimization_history.png",
        "figures/parallel_coordinate.png",
        "figures/param_importances.png",
    }
    assert runs.client.get_run(parent).info.status == "FINISHED"


def test_progress_line_per_finished_trial(finished_study):
    lines = [line for line in finished_study.messages if line.startswith("Trial ")]

    assert len(lines) == 3
    for number, line in enumerate(lines):
        assert line.startswith(f"Trial {number} complete: val/loss "), line
        assert "(best " in line, line
        assert f"{number + 1} of 3 trials finished" in line, line


def test_tuned_config_retrains(finished_study, workspace, tmp_path):
    best = finished_study.summary["best_params"]
    overrides = tune_overrides(workspace, tmp_path, "model=tuned/record", epochs=1)
    cfg = load_config(overrides, workspace / "conf")

    record = run_training(cfg)

    assert cfg.model.name == "diffusion-tuned-record"
    assert Path(record["checkpoint"]).is_file()
    # experiment=tiny sets hidden and n_layers after the model file; the other values hold.
    assert cfg.model.learning_rate == pytest.approx(best["learning_rate"])
    assert cfg.model.n_time_frequencies == best["n_time_frequencies"]


def test_tuned_config_warns_when_preset_wins(finished_study):
    warnings = [line for line in finished_study.messages if "composes to" in line]

    assert len(warnings) == 1
    assert "'hidden': 16" in warnings[0]


def test_resume_rejects_other_settings(finished_study, workspace):
    overrides = tune_overrides(
        workspace,
        finished_study.folder,
        "tune.n_trials=3",
        "tune.study_name=record",
        "tune.pruner.kind=none",
        epochs=3,
    )

    with pytest.raises(ValueError, match="trainer.max_epochs='2' in the study, '3' now"):
        tune(workspace, overrides)


def test_resume_runs_only_missing_trials(workspace, tmp_path):
    overrides = tune_overrides(workspace, tmp_path, "tune.study_name=resume")
    tune(workspace, [*overrides, "tune.n_trials=2"])
    before = {
        trial.number: trial.datetime_complete for trial in load_study(tmp_path, "resume").trials
    }

    summary = tune(workspace, [*overrides, "tune.n_trials=3"])
    again = tune(workspace, [*overrides, "tune.n_trials=3"])

    trials = load_study(tmp_path, "resume").trials
    assert [trial.number for trial in trials] == [0, 1, 2]
    assert {trial.number: trial.datetime_complete for trial in trials[:2]} == before
    assert summary["n_finished"] == 3
    assert again["n_finished"] == 3
    assert len(mlflow_runs(tmp_path).parents) == 1


def test_pruned_trial_is_recorded(workspace, tmp_path):
    # Every finite val/loss lies above the threshold, so the first report prunes the trial.
    # The study also takes its storage from an explicit RDB URL.
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    overrides = tune_overrides(
        workspace,
        tmp_path,
        "tune.n_trials=1",
        "tune.study_name=pruned",
        "tune.pruner.kind=threshold",
        "tune.pruner.upper=-1.0e9",
        "tune.pruner.n_warmup_steps=0",
        f"tune.storage='{storage}'",
        epochs=3,
    )

    summary = tune(workspace, overrides)

    (trial,) = optuna.load_study(study_name="pruned", storage=storage).trials
    run = mlflow_runs(tmp_path).trials[0]
    client = mlflow_runs(tmp_path).client
    assert trial.state == TrialState.PRUNED
    assert list(trial.intermediate_values) == [0]
    assert run.data.tags["optuna.state"] == "pruned"
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 1, (
        "stopped after epoch 0"
    )
    assert summary["n_pruned"] == 1
    assert summary["tuned_config"] is None
    assert not (tmp_path / "mlruns" / "optuna.db").exists()


def test_multi_objective_records_pareto_front(workspace, tmp_path):
    overrides = tune_overrides(
        workspace,
        tmp_path,
        "tune.n_trials=2",
        "tune.study_name=pareto",
        "tune.multi_objective=true",
        "tune.sampler=random",
    )

    tune(workspace, overrides)

    study = load_study(tmp_path, "pareto")
    runs = mlflow_runs(tmp_path)
    figures = {
        item.path for item in runs.client.list_artifacts(runs.parents[0].info.run_id, "figures")
    }
    assert len(study.directions) == 2
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        assert trial.values[1] == pytest.approx(trial.user_attrs["train_seconds"])
        assert trial.values[1] > 0
    assert "figures/pareto_front.png" in figures


def test_journal_storage_resumes(workspace, tmp_path):
    journal = tmp_path / "journal" / "study.log"
    first = tune_overrides(
        workspace, tmp_path, f"tune.journal={journal}", "tune.study_name=journal"
    )

    tune(workspace, [*first, "tune.n_trials=1"])
    summary = tune(workspace, [*first, "tune.n_trials=2"])

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    trials = optuna.load_study(study_name="journal", storage=storage).trials
    assert [trial.state for trial in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert summary["storage"] == f"journal:{journal}"
    assert not (tmp_path / "mlruns" / "optuna.db").exists()


def test_missing_metric_names_logged_ones(workspace, tmp_path):
    overrides = tune_overrides(
        workspace,
        tmp_path,
        "tune.n_trials=1",
        "tune.study_name=metric",
        "tune.space.metric=val/nll",
    )

    with pytest.raises(ValueError, match=r"logs no metric 'val/nll'.*'val/loss'"):
        tune(workspace, overrides)

    (trial,) = load_study(tmp_path, "metric").trials
    assert trial.state == TrialState.FAIL


def test_failing_trials_stop_worker(workspace, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("training diverged")

    monkeypatch.setattr(tune_command, "run_training", fail)
    overrides = tune_overrides(
        workspace,
        tmp_path,
        "tune.n_trials=5",
        "tune.study_name=failing",
        "tune.max_failed_trials=2",
    )

    with pytest.raises(TuningError, match="2 trials of this worker failed"):
        tune(workspace, overrides)

    states = [trial.state for trial in load_study(tmp_path, "failing").trials]
    assert states == [TrialState.FAIL, TrialState.FAIL]


@pytest.mark.parametrize("kind", ["tpe", "random", "cmaes"])
def test_sampler_reproducible_and_fresh_on_resume(kind, tmp_path):
    space = parse_search_space(
        {
            "parameters": {
                "learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
                "hidden": {"type": "int", "low": 8, "high": 64},
            }
        },
        {"name": "diffusion", "learning_rate": 1.0e-3, "hidden": 16},
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    def objective(trial):
        values = space.suggest(trial)
        return math.log(values["learning_rate"]) ** 2 + values["hidden"]

    def run(name: str, n_trials: int) -> list[dict]:
        sampler = build_sampler(kind, 7, 2, False, space)
        study = optuna.create_study(
            storage=storage, study_name=name, sampler=sampler, load_if_exists=True
        )
        study.optimize(objective, n_trials=n_trials)
        return [trial.params for trial in study.trials]

    run("first", 3)
    resumed = run("first", 3)
    repeated = run("second", 3)

    assert repeated == resumed[:3], "same seed and history, same draws"
    assert all(params not in resumed[:3] for params in resumed[3:]), "resume repeated a draw"


def test_dead_worker_trial_marked_failed():
    study = optuna.create_study()
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    current = worker_identity()
    identities = {
        "dead": {**current, "pid": finished.pid, "start": None},
        "reused_pid": {**current, "start": "not-the-start-time"},
        "alive": current,
        "other_host": {**current, "host": f"not-{socket.gethostname()}", "pid": finished.pid},
    }
    trials = {}
    for name, identity in identities.items():
        trial = study.ask()
        trial.set_user_attr(WORKER_ATTRIBUTE, identity)
        trials[name] = trial.number
    closed = []

    fail_dead_local_trials(study, lambda study, trial: closed.append(trial.number))

    states = {name: study.trials[number].state for name, number in trials.items()}
    assert states["dead"] == TrialState.FAIL
    assert states["reused_pid"] == TrialState.FAIL
    assert states["alive"] == TrialState.RUNNING
    assert states["other_host"] == TrialState.RUNNING
    assert closed == [trials["dead"], trials["reused_pid"]]


def test_heartbeat_fails_silent_trial(tmp_path):
    stale = []
    storage = build_storage(
        f"sqlite:///{tmp_path / 'optuna.db'}",
        None,
        heartbeat_interval=1,
        on_stale_trial=lambda study, trial: stale.append(trial.number),
    )
    study = optuna.create_study(storage=storage)
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for Study.optimize; this test beats by hand.
        warnings.simplefilter("ignore", UserWarning)
        trial = study.ask()
    storage.record_heartbeat(trial._trial_id)

    # The grace period is twice the interval, 2 s, and SQLite keeps whole seconds.
    time.sleep(3.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)

    assert study.trials[0].state == TrialState.FAIL
    assert stale == [trial.number]


def test_surplus_trial_detected():
    study = optuna.create_study()
    first, second, third = study.ask(), study.ask(), study.ask()
    study.tell(first, 1.0)

    assert not is_surplus(study, second.number, n_trials=2)
    assert is_surplus(study, third.number, n_trials=2)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"type": "float", "low": 1.0, "high": 0.5}, "needs finite low <= high"),
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "low must be positive"),
        ({"type": "uniform", "low": 0.0, "high": 1.0}, "type must be one of"),
        ({"type": "categorical", "choices": []}, "choices must be a non-empty list"),
        ({"type": "int", "low": 1.5, "high": 4}, "low must be a int"),
        ({"type": "float", "low": 0.0, "high": 1.0, "scale": "log"}, "unknown keys"),
    ],
)
def test_search_space_rejects_bad_entry(entry, message):
    with pytest.raises(ValueError, match=message):
        parse_search_space({"parameters": {"learning_rate": entry}}, {"learning_rate": 1.0e-3})


def test_search_space_rejects_unknown_setting():
    space = {"parameters": {"width": {"type": "int", "low": 8, "high": 64}}}

    with pytest.raises(ValueError, match="has no setting 'width'; searchable settings are"):
        parse_search_space(space, {"name": "diffusion", "hidden": 16})


@pytest.mark.parametrize("model", MODELS)
def test_every_model_space_composes(model):
    cfg = load_config([f"model={model}"], REPO_ROOT / "conf")

    if model == "oracle":
        # Nothing to train, so nothing to tune.
        assert "space" not in cfg.tune
        return
    space = parse_search_space(cfg.tune.space, cfg.model)
    assert space.metric == "val/loss"
    assert "learning_rate" in space.names


def test_cli_rejects_unknown_sampler(workspace, tmp_path, caplog):
    overrides = tune_overrides(workspace, tmp_path, "tune.sampler=grid")

    code = main(["--config-dir", str(workspace / "conf"), "tune", *overrides])

    assert code == 2
    assert "tune.sampler must be one of ('tpe', 'random', 'cmaes'), got 'grid'" in caplog.text


def test_cli_rejects_model_without_space(workspace, tmp_path, caplog):
    overrides = tune_overrides(workspace, tmp_path, "model=oracle")

    code = main(["--config-dir", str(workspace / "conf"), "tune", *overrides])

    assert code == 2
    assert "no search space for model 'oracle'" in caplog.text


def test_cli_names_missing_data(workspace, tmp_path, caplog):
    overrides = [*tune_overrides(workspace, tmp_path), f"paths.data={tmp_path / 'empty'}"]
    overrides = [item for item in overrides if item != f"paths.data={workspace / 'data'}"]

    code = main(["--config-dir", str(workspace / "conf"), "tune", *overrides])

    assert code == 2
    assert "run `neqgen simulate`" in caplog.text


def worker_command(workspace: Path, overrides: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "neqgen.cli",
        "--config-dir",
        str(workspace / "conf"),
        "tune",
        *overrides,
    ]


def worker_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_killed_study_resumes(workspace, tmp_path):
    overrides = tune_overrides(
        workspace,
        tmp_path,
        "tune.n_trials=4",
        "tune.study_name=killed",
        "tune.pruner.kind=none",
        epochs=6,
    )
    output = tmp_path / "worker.log"
    with output.open("w") as stream:
        worker = subprocess.Popen(
            worker_command(workspace, overrides),
            cwd=tmp_path,
            env=worker_env(),
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    try:
        # Wait until one trial has finished and the next one is training.
        deadline = time.monotonic() + 240
        running = None
        while running is None:
            assert worker.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.05)
            if "Trial 0 complete" not in output.read_text():
                continue
            trials = load_study(tmp_path, "killed").get_trials(deepcopy=False)
            running = next(
                (
                    trial
                    for trial in trials
                    if trial.state == TrialState.RUNNING and "mlflow_run_id" in trial.user_attrs
                ),
                None,
            )
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait()
    before = {
        trial.number: (trial.value, trial.datetime_complete)
        for trial in load_study(tmp_path, "killed").trials
        if trial.state == TrialState.COMPLETE
    }
    assert load_study(tmp_path, "killed").trials[running.number].state == TrialState.RUNNING

    code = main(["--config-dir", str(workspace / "conf"), "tune", *overrides])

    trials = load_study(tmp_path, "killed").trials
    numbers = [trial.number for trial in trials]
    runs = mlflow_runs(tmp_path)
    killed_run = runs.trials[running.number]
    assert code == 0
    assert len(numbers) == len(set(numbers))
    assert {
        n: (t.value, t.datetime_complete) for n, t in enumerate(trials) if n in before
    } == before
    assert trials[running.number].state == TrialState.FAIL
    assert sum(trial.state == TrialState.COMPLETE for trial in trials) == 4
    assert len(trials) == 5, "4 complete and the killed one, nothing lost or counted twice"
    assert killed_run.data.tags["optuna.state"] == "failed"
    assert killed_run.info.status == "KILLED"
    assert len(runs.parents) == 1


@pytest.mark.slow
def test_two_workers_share_study(workspace, tmp_path):
    overrides = tune_overrides(
        workspace,
        tmp_path,
        "tune.n_trials=6",
        "tune.study_name=shared",
        "tune.pruner.kind=none",
        epochs=4,
    )
    outputs = [tmp_path / f"worker{index}.log" for index in range(2)]
    workers = []
    for output in outputs:
        with output.open("w") as stream:
            workers.append(
                subprocess.Popen(
                    worker_command(workspace, overrides),
                    cwd=tmp_path,
                    env=worker_env(),
                    stdout=stream,
                    stderr=subprocess.STDOUT,
                )
            )
    codes = [worker.wait(timeout=300) for worker in workers]

    logs = "\n".join(output.read_text() for output in outputs)
    trials = load_study(tmp_path, "shared").trials
    finished = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    others = [trial for trial in trials if trial.state != TrialState.COMPLETE]
    numbers = [trial.number for trial in trials]
    assert codes == [0, 0], logs
    assert len(numbers) == len(set(numbers))
    assert len(finished) == 6
    # A worker may start one trial too many at the very end; it marks it surplus and fails it.
    assert all(trial.user_attrs.get("surplus") for trial in others), others
    assert len({trial.user_attrs[WORKER_ATTRIBUTE]["pid"] for trial in finished}) == 2
    assert len(mlflow_runs(tmp_path).parents) == 1
