"""The Python API, `from harness import train, seed_scan, sweep, compare`: what the commands of
the same names run (harness/commands.py calls these), returning what they made.

    run = train(lr=0.5, seed=3, tracking=False)
    run.history["train_loss"], run.iterations_to_target_held, run.boundaries[100]
    seed_scan(count=50, tracking=False).table.describe()

A config is an experiment file, a dict of its keys, a TrainConfig, or what the command line
loads (a SeedScan, a Sweep); keyword overrides go on top of it, as `--set` does. A bad key raises
ConfigError with the command line's one line. Runs go to the tracking store the commands use
(MLFLOW_TRACKING_URI, else mlruns/); with `tracking=False` nothing is logged or written. The
results are harness/api_results.py's; docs/api.md shows them in use. Heavy modules are
imported inside the functions: `import harness` stays quick, and a bad key fails before them.
"""

import copy
import dataclasses
import tempfile
from pathlib import Path

from harness.api_results import CompareResult, SeedScanResult, SweepResult, TrainRun
from harness.core import config as config_lib
from harness.core.config import ConfigError, TrainConfig

__all__ = ["train", "seed_scan", "sweep", "compare", "TrainRun", "SeedScanResult", "SweepResult", "CompareResult"]


def keys_of(config) -> dict:
    """The keys a config sets: an experiment file's, a dict's, or a TrainConfig's differences
    from the defaults (as an experiment file lists them)."""
    if config is None:
        return {}
    if isinstance(config, (str, Path)):
        return config_lib.read_toml(config)
    if isinstance(config, TrainConfig):
        defaults = TrainConfig()
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)
                if getattr(config, f.name) != getattr(defaults, f.name)}
    if isinstance(config, dict):
        return copy.deepcopy(config)  # the caller's dict stays as it was
    raise TypeError(f"config: expected an experiment file, a dict or a TrainConfig, got {type(config).__name__}")


def train_config(config=None, **overrides) -> TrainConfig:
    """The TrainConfig of `config` and `overrides`, checked as `python -m harness train` checks it."""
    return config_lib.build({**keys_of(config), **overrides})


def tracker():
    """The commands' tracking store, checked writable first (one line when it is not)."""
    from harness.tracking.store_check import check_writable
    from harness.tracking.tracker import Tracker, tracking_uri

    check_writable(tracking_uri())
    return Tracker()


def train(config=None, *, tracking: bool = True, boundaries: bool = True, progress: bool = False,
          **overrides) -> TrainRun:
    """Train one network as `make train` does: with `trainer = auto`, the lecture's loop
    (harness/core/train.py), logged as one MLflow run as it trains. `boundaries`: keep the
    boundary image of every plot step (the loop's; a kernel trainer's go to MLflow only).
    `progress`: a step bar, on a terminal's stderr only."""
    cfg = train_config(config, **overrides)
    from harness.api_training import KeepBoundaries
    from harness.core.train import train as loop
    from harness.experiment import Workspace, run_training
    from harness.progress import StepBar, bar
    from harness.trainers.batched import train_batch
    from harness.trainers.registry import choose

    workspace = Workspace.for_config(cfg)  # device and data errors surface before any run exists
    chosen = choose([cfg], workspace.device, drawing=True)  # and a named trainer that does not train it
    store = tracker() if tracking else None
    trainer = "torch" if cfg.trainer == "auto" else chosen.name  # auto: the loop, as make train
    with bar(cfg.iterations + 1, f"training lr {cfg.lr:g} seed {cfg.seed}", "step", shown=progress) as steps:
        callbacks = StepBar(steps)
        if boundaries:
            callbacks = KeepBoundaries(workspace.renderer, callbacks)
        if store is not None:  # the loop, or the named kernel, as run_training chooses
            outcome = run_training(cfg, store, workspace, callbacks=callbacks)
            run_id, result = outcome.run_id, outcome.result
        elif trainer == "torch":
            run_id, result = None, loop(cfg, workspace.data, workspace.device, callbacks)
        else:
            run_id, result = None, train_batch([cfg], workspace.data, workspace.device).result(0, cfg)
    images = callbacks.images if boundaries else {}
    return TrainRun.of(cfg, result, images, trainer, workspace.device, run_id,
                       store.run_url(run_id) if store else None)


def scan_of(config, count: int | None = None, first: int | None = None, overrides: dict | None = None):
    """The SeedScan of `config` (a file or dict with an optional [seeds] table, a TrainConfig, a
    SeedScan), `count`, `first` and `overrides`, checked as `python -m harness seeds` checks it."""
    from harness.analysis import arms, seed_scan as scans

    if isinstance(config, scans.SeedScan):
        values, table = keys_of(config.base), {"count": config.count, "first": config.first}
    else:
        values = keys_of(config)
        if arms.has_arms(values):
            raise ConfigError(f"experiment file: {config} has [[seeds.arm]] tables: make seeds SEEDS_CONFIG={config} "
                              "trains and compares its arms (harness.analysis.arms_run.run_arms)")
        table = values.pop("seeds", {})
        values.pop("sweep", None)  # a sweep file can be scanned too; its search space is ignored
    return scans.make({**values, **(overrides or {})}, table, count, first)


def seed_scan(config=None, *, count: int | None = None, first: int | None = None, tracking: bool = True,
              progress: bool = False, **overrides) -> SeedScanResult:
    """Train `count` seeds (the [seeds] table's count, else 1000) from `first` (else 0) at once,
    everything else fixed, as `make seeds` does; logged as one MLflow run. `progress`: a status
    line, on a terminal's stderr only."""
    scan = scan_of(config, count, first, overrides)
    from harness.analysis import seed_scan as scans
    from harness.core.runtime import resolve_device
    from harness.experiment import Workspace
    from harness.progress import Status
    from harness.trainers.registry import choose

    choose([scan.base], resolve_device(scan.base.device), drawing=False)
    store = tracker() if tracking else None
    workspace = Workspace.for_config(scan.base)
    with Status(f"training {scan.count} seeds together", enabled=None if progress else False) as status:
        if store is not None:
            run_id, trained = scans.tracked_scan(scan, store, status, workspace)
        else:
            run_id, trained = None, scans.train_scan(scan, workspace)
    return SeedScanResult.of(scan, trained, run_id, store.run_url(run_id) if store else None)


def sweep_of(config, overrides: dict | None = None):
    """The Sweep of `config` (a file or dict with a [sweep] table, a TrainConfig, a Sweep) and
    `overrides`, read by the reader of `make sweep`'s files."""
    from harness.study import config as study_config

    if isinstance(config, study_config.Sweep):
        if overrides:
            raise TypeError("sweep: a loaded Sweep takes no overrides; give its file or a dict")
        return config
    return study_config.from_values({**keys_of(config), **(overrides or {})})  # overrides as --set gives them


def sweep(config=None, *, trials: int | None = None, study: str | None = None, workers: int | None = None,
          total: int | None = None, tracking: bool = True, progress: bool = False, **overrides) -> SweepResult:
    """Add `trials` trials (else the file's sweep.trials) to the Optuna study `study` (else the
    file's sweep.study), as `make sweep` does, with its `workers` and `total`: the study in the
    commands' Optuna storage, each trial an MLflow run under the study's parent run. Without
    tracking, the study is in memory and its trials train one after another in this process
    (harness/api_training.py), their curves kept. `progress`: a trial bar on a terminal."""
    loaded = sweep_of(config, overrides)
    name = study or loaded.settings.study
    if not tracking:
        if workers not in (None, 1) or total is not None:
            raise ConfigError("workers, total: a sweep without tracking runs its trials in this process, one at a time")
        from harness.api_training import sweep_in_memory

        return sweep_in_memory(loaded, loaded.settings.trials if trials is None else trials, name)
    from harness.study.storage import storage_url
    from harness.study.sweep import run_sweep

    summary = run_sweep(loaded, trials=trials, study_name=name, workers=workers, progress=progress, total=total)
    return SweepResult.of_summary(summary, storage_url())


def compare(config=None, *, study: str | None = None, run: str | None = None, out: str | Path | None = None,
            step: int | None = None, bands_per_decade: int = 1, min_trials: int = 5,
            progress: bool = False) -> CompareResult:
    """The report of `make compare` on how the seed changes convergence: for the study `study`
    (else the file's sweep.study), or for the seed scan `run` (else the latest scan of a seeds
    file's experiment); written to `out` (else mlruns/reports/<name>/) and logged to the
    study's parent run or the scan's run. `progress`: a status line, on a terminal only."""
    from harness.analysis import arms
    from harness.analysis.compare_config import CompareOptions

    options = CompareOptions(step=step, bands_per_decade=bands_per_decade, min_trials=min_trials).check()
    values = keys_of(config) if config is not None else {"sweep": {}}
    if run and study:
        raise ConfigError("--study, --run: give one, a study or a seed scan's run")
    if not run and arms.has_arms(values):
        raise ConfigError(f"experiment file: {config} has [[seeds.arm]] tables: make seeds SEEDS_CONFIG={config} trains "
                          "and compares its arms; make compare RUN=<an arm's run id> reports on one")
    if not run and not ({"sweep", "seeds"} & set(values)):
        where = f"experiment file: {config}" if isinstance(config, (str, Path)) else "config:"
        raise ConfigError(f"{where} has neither a [sweep] table (a study) nor a [seeds] table (a seed scan) to compare")
    scan = run is not None or ("seeds" in values and "sweep" not in values)
    if scan:
        experiment = scan_of(config).base.experiment
    else:
        study = study or sweep_of(config).settings.study
    from harness.analysis import compare as comparing, report, report_files
    from harness.progress import Status
    from harness.study.storage import read_study, storage_url
    from harness.tracking.tracker import Tracker

    with Status("reading the seed scan" if scan else f"reading study '{study}'",
                enabled=None if progress else False) as status:
        if scan:
            store = Tracker()
            comparison = comparing.scan_comparison(run, experiment, store, options)
        else:  # a store this process cannot write to is read as it is
            found = read_study(study, storage_url())  # before the tracking store is touched
            store = Tracker()
            comparison = comparing.study_comparison(found, store, options, status)
        if out:
            folder = Path(out)
        elif store.read_only:  # not beside the store: it cannot be written to
            folder = Path(tempfile.mkdtemp(prefix=f"wine-init-report-{report_files.folder_name(comparison.name)}-"))
        else:
            folder = report_files.default_folder(store, comparison.name)
        status.set("drawing the report's figures")
        path, notes, logged = report_files.write_report(comparison, store, folder)
        gifs = None
        if comparison.kind == "study" and not store.read_only:
            status.set("making each trial's boundary.gif")
            gifs = report.trial_gifs(comparison, store)
    return CompareResult(comparison, path, notes, logged, gifs, comparison.run_id, store.run_url(comparison.run_id))
