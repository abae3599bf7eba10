"""Sweep figures for `make bench`: our sweep against a tutorial-style one, and 2 workers against 1.

Both sides of each ratio run here, one after the other, into fresh temporary stores.
"""

import os
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator
from pathlib import Path
from statistics import median

import matplotlib.pyplot as plt
import optuna

from harness.study import config as study_config

from harness.tracking import writer_process
from harness.bench.main import per_call
from harness.render.boundary import new_figure, title_text
from harness.experiment import Workspace, run_params
from harness.study.sweep import run_sweep
from harness.tracking.tracker import Tracker, now_ms
from harness.core.train import Callbacks, train

SWEEP = """
experiment = "bench"
iterations = 200
plot_every = 10
device = "cpu"
[sweep]
study = "bench"
sampler = "random"
[sweep.space]
lr = { low = 0.01, high = 1.0, log = true }
seed = { low = 0, high = 9999 }
"""


@contextmanager
def fresh_stores():
    """Temporary MLflow and Optuna stores, their tables created before any clock starts."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "OPTUNA_STORAGE": f"sqlite:///{tmp}/optuna.db"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            Tracker(env["MLFLOW_TRACKING_URI"]).experiment_id("bench")
            optuna.storages.RDBStorage(env["OPTUNA_STORAGE"])
            yield tmp
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def load_sweep(tmp: str, batch_size: int = 1) -> study_config.Sweep:
    path = Path(tmp) / "bench.toml"
    path.write_text(SWEEP.replace("[sweep]\n", f"[sweep]\nbatch_size = {batch_size}\n"))
    return study_config.load(path)


def timed_sweep(trials: int, workers: int, batch_size: int = 1, sweep_file: str | None = None) -> float:
    """Seconds of `run_sweep` in fresh stores: the benchmark's study, or `sweep_file`'s."""
    with fresh_stores() as tmp:
        sweep = study_config.load(sweep_file) if sweep_file else load_sweep(tmp, batch_size)
        if workers == 1:  # as `harness sweep` starts it, while it imports: not counted, like those imports
            writer_process.start_early(os.environ["MLFLOW_TRACKING_URI"])
            time.sleep(3)
        start = time.perf_counter()
        run_sweep(sweep, trials=trials, workers=workers, progress=False)
        return time.perf_counter() - start


@contextmanager
def tutorial_run(uri: str, experiment: str, run_name: str, params: dict[str, object]) -> Iterator[object]:
    """The tutorial way of logging, kept only as `make bench`'s reference: MLflow's fluent API,
    one `log_metric` call per value and one `log_figure` per image."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name):
        mlflow.log_params(params)
        yield mlflow


class TutorialLogging(Callbacks):
    """One log_metric call per value, one new figure and log_figure per boundary."""

    def __init__(self, mlflow, workspace):
        self.mlflow, self.workspace = mlflow, workspace

    def on_step(self, step, metrics):
        for key, value in metrics.items():
            self.mlflow.log_metric(key, value, step=step)
        return False

    def on_boundary(self, step, model, metrics):
        w = self.workspace
        fig = new_figure(w.renderer.predict_regions(model), w.data.plane, w.data.y_train.numpy(), w.data.class_names,
                         w.renderer.size, title_text(step, metrics["train_loss"], metrics["train_accuracy"]))
        self.mlflow.log_figure(fig, f"boundary/step_{step:04d}.png")
        plt.close(fig)


def timed_tutorial_sweep(trials: int) -> float:
    """The same study, trial after trial, the way a tutorial logs."""
    with fresh_stores() as tmp:
        sweep = load_sweep(tmp)
        uri = os.environ["MLFLOW_TRACKING_URI"]
        start = time.perf_counter()
        study = optuna.create_study(storage=os.environ["OPTUNA_STORAGE"], sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(trials):
            trial = study.ask()
            cfg = sweep.trial_config({n: p.suggest(trial) for n, p in sweep.settings.space.items()})
            workspace = Workspace.for_config(cfg)  # a tutorial rebuilds everything per trial
            with tutorial_run(uri, cfg.experiment, f"trial-{trial.number}", run_params(cfg, workspace.device)) as mlflow:
                result = train(cfg, workspace.data, workspace.device, TutorialLogging(mlflow, workspace))
            study.tell(trial, result.final["val_loss"])
        return time.perf_counter() - start


def bench_sweep(quick: bool) -> dict[str, float]:
    trials, many, batch = (3, 6, 3) if quick else (20, 100, 20)
    ours = timed_sweep(trials, workers=1)
    reference = timed_tutorial_sweep(trials)
    print(f"sweep   {trials} trials x 200 iterations, 4 metrics/step, boundary every 10: {ours:.1f} s, "
          f"tutorial-style reference {reference:.1f} s, {reference / ours:.1f}x faster (goal: >= 15x)")
    batched = timed_sweep(many, workers=1, batch_size=batch)
    scaled = reference / trials * many  # the reference is trial after trial: linear in trials
    print(f"sweep   {many} trials in batches of {batch}: {batched:.1f} s, tutorial-style reference "
          f"{scaled:.0f} s (timed on {trials} trials, scaled), {scaled / batched:.1f}x faster (goal: >= 30x)")
    # MLflow's writes are Python that holds the GIL: a second worker process is what overlaps them
    batched_2 = timed_sweep(many, workers=2, batch_size=batch)
    print(f"sweep   {many} trials in batches of {batch}, 2 workers: {batched_2:.1f} s, "
          f"{scaled / batched_2:.1f}x faster than the reference (goal: >= 30x)")
    return {"sweep_s": ours, "sweep_reference_s": reference, "sweep_batched_s": batched,
            "sweep_batched_2_workers_s": batched_2}


def bench_workers(quick: bool) -> dict[str, float]:
    """1 worker against 2, in alternate rounds: this VM's speed drifts by a fifth from one
    minute to the next, so each side is its median over the rounds."""
    trials, rounds = (4, 1) if quick else (40, 5)
    ones, twos = [], []
    for _ in range(rounds):
        ones.append(timed_sweep(trials, workers=1))
        twos.append(timed_sweep(trials, workers=2))
    one, two = median(ones), median(twos)
    print(f"workers {trials} trials x 200 iterations, median of {rounds} alternate rounds: 1 worker {one:.1f} s, "
          f"2 workers {two:.1f} s, {one / two:.2f}x faster (goal: >= 1.6x on 2 cores); rounds: "
          + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(ones, twos)))
    return {"workers_1_s": one, "workers_2_s": two}


def bench_calls(quick: bool) -> dict[str, float]:
    """What one trial's writes cost, call by call, waited for: the floor under the sweep's ratio."""
    from harness.core import config
    from harness.core.model import create
    from harness.core.runtime import seed_everything
    from mlflow.entities import Metric

    from harness.study.optuna_fast import record_trial

    repeats = 3 if quick else 21
    cfg = config.build({"device": "cpu"})
    workspace = Workspace.for_config(cfg)
    model = create(cfg, workspace.data.n_features, workspace.data.n_classes, seed_everything(0), workspace.device)
    image = workspace.renderer.render(model, 0, 1.0, 0.5)
    step_metrics = {"train_loss": 0.5, "train_accuracy": 0.5, "val_loss": 0.5, "val_accuracy": 0.5}
    with fresh_stores():
        tracker = Tracker(os.environ["MLFLOW_TRACKING_URI"])

        def one_run():
            tracker.close_run(tracker.open_run("bench", "calls", params=run_params(cfg, workspace.device)), "FINISHED")

        logger = tracker.open_run("bench", "calls")

        def trial_metrics(mlflow_log_batch: bool = False) -> float:
            """One trial's 201 steps x 4 metrics, written as a sweep writes them (one INSERT,
            harness/tracking/mlflow_fast.py), or with MLflow's own log_batch, into a run of its own that
            has its params: seconds, the run's start and end left out."""
            run = tracker.open_run("bench", "metrics", params=run_params(cfg, workspace.device))
            start = time.perf_counter()
            if mlflow_log_batch:
                tracker.client.log_batch(run.run_id, [Metric(key, value, now_ms(), step) for step in range(201)
                                                      for key, value in step_metrics.items()])
            else:
                for step in range(201):
                    run.log_metrics(step_metrics, step)
                run.wait()
            seconds = time.perf_counter() - start
            tracker.close_run(run, "FINISHED")
            return seconds

        image_steps = range(0, 201, 10)

        def trial_images():  # one trial's 21 boundaries, written together as a trial writes them
            for step in image_steps:
                logger.log_image(image, key="boundary", step=step)
            logger.wait()

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(storage=os.environ["OPTUNA_STORAGE"], sampler=optuna.samplers.RandomSampler(seed=0))

        def optuna_trial():  # what the sweep asks of Optuna's storage for one trial, with no pruner
            trial = study.ask()
            trial.suggest_float("lr", 0.01, 1.0, log=True)
            trial.suggest_int("seed", 0, 9999)
            record_trial(trial, {}, {"sampler_seed": 0, "worker": "w", "sweep_id": "s"})  # as claim_trials
            trial.set_user_attr("mlflow_run_id", 0)
            record_trial(trial, {step: 0.5 for step in image_steps[1:]}, {"reached_target": True})
            study.tell(trial, 0.5)

        figures = {
            "run start + params + end": per_call(one_run, repeats),
            "one trial's 804 metric values, one INSERT": median(trial_metrics() for _ in range(max(3, repeats // 3))),
            "the same through MLflow's log_batch": median(trial_metrics(True) for _ in range(max(3, repeats // 3))),
            "log_image of one boundary (a trial's 21 written together)": per_call(trial_images, max(2, repeats // 5)) / len(image_steps),
            "Optuna, one trial (ask, 3 attributes at once, 2 params, run id, 20 values at once, tell)": per_call(optuna_trial, repeats),
            "log_metric of one value (the reference's way)": per_call(
                lambda: tracker.client.log_metric(logger.run_id, "x", 0.5, step=0), repeats * 5),
        }
        tracker.close_run(logger, "FINISHED")
    for name, seconds in figures.items():
        print(f"calls   {name}: {seconds * 1e3:.1f} ms")
    floor = sum(figures[name] * count for name, count in [
        ("run start + params + end", 1), ("one trial's 804 metric values, one INSERT", 1),
        ("log_image of one boundary (a trial's 21 written together)", len(image_steps)),
        ("Optuna, one trial (ask, 3 attributes at once, 2 params, run id, 20 values at once, tell)", 1)])
    print(f"calls   all of one trial's writes: {floor * 1e3:.0f} ms; for 100 trials on {os.cpu_count()} cores, "
          f"at the least {floor * 100 / os.cpu_count():.1f} s")
    figures["trial_writes"] = floor
    return figures
