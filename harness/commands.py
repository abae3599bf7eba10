"""What each command of `python -m harness` does: load its config (a bad key fails before the
heavy imports), call the library, print what the user needs. The parser and the one-line
errors are harness/__main__.py's."""

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path

from harness.core.config import ConfigError
from harness.signals import exit_code

DEFAULT_STUDY = "experiments/sweep.toml"  # the study `make sweep` runs, `make ui` and `make dashboard` link to, `make export` writes


def cmd_train(args: argparse.Namespace) -> int:
    from harness.core import config

    cfg = config.load(args.experiment, args.set)  # a bad key fails here, before the heavy imports
    from harness.experiment import Workspace, run_training
    from harness.tracking.store_check import check_writable
    from harness.tracking.tracker import Tracker, tracking_uri

    from harness.trainers.registry import choose

    workspace = Workspace.for_config(cfg)  # device and data errors surface before any run exists
    choose([cfg], workspace.device, drawing=True)  # and a named trainer that does not train it
    from harness.core.config import target_text
    from harness.progress import StepBar, bar

    check_writable(tracking_uri())
    tracker = Tracker()
    with bar(cfg.iterations + 1, f"training lr {cfg.lr:g} seed {cfg.seed}", "step") as steps:
        outcome = run_training(cfg, tracker, workspace, callbacks=StepBar(steps))
    result = outcome.result
    print(f"run {outcome.run_id} in experiment '{cfg.experiment}' on {outcome.device}")
    print("final  " + "  ".join(f"{k} {v:.4f}" for k, v in result.final.items()))
    if result.diverged:
        print(f"diverged: the loss became non-finite at step {result.last_step}")
    target = target_text(cfg)
    if result.iterations_to_target is None:
        print(f"never reached {target}")
    else:
        held = result.iterations_to_target_held
        print(f"iterations_to_target {result.iterations_to_target}, iterations_to_target_held "
              f"{held if held is not None else f'none (never held for {cfg.hold_steps} steps)'}: {target}")
    print(f"the run: {tracker.run_link(outcome.run_id)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from harness.study import config as study_config

    sweep = study_config.load(args.experiment, args.set)  # a bad key fails here, before the heavy imports
    if (args.workers or sweep.settings.workers) == 1:
        from harness.tracking import writer, writer_process  # a lone worker's writer process (harness/study/worker.py, `work`)

        writer_process.start_early(writer.tracking_uri())
    from harness.study.sweep import run_sweep
    from harness.study.summary import format_table

    study = args.study or sweep.settings.study
    try:
        summary = run_sweep(sweep, trials=args.trials, study_name=study, workers=args.workers, total=args.total)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (harness/signals.py)
        if args.total is not None:
            again = "the same command (make worker ...)"
        elif not args.set:
            again = shlex.join(["make", "sweep", f"STUDY={study}", f"CONFIG={args.experiment or ''}"])
        else:
            python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
            again = shlex.join([python, "-m", "harness", "sweep", *([args.experiment] if args.experiment else []),
                                "--study", study, *(w for o in args.set for w in ("--set", o))])
        print(f"\ninterrupted: the running trial is FAILED in Optuna and KILLED in MLflow; finished trials are kept.\n"
              f"continue the study with: {again}", file=sys.stderr)
        return exit_code(e)
    print(format_table(summary))
    return 0


def cmd_seeds(args: argparse.Namespace) -> int:
    from harness.analysis import seed_scan

    scan = seed_scan.load(args.experiment, args.set, count=args.count)  # bad input fails before the heavy work
    from harness.core.runtime import resolve_device
    from harness.trainers.registry import choose
    from harness.tracking.store_check import check_writable

    choose([scan.base], resolve_device(scan.base.device), drawing=False)
    from harness.tracking.tracker import Tracker, tracking_uri

    from harness.core.config import target_text
    from harness.progress import Status

    check_writable(tracking_uri())
    tracker = Tracker()
    with Status(f"training {scan.count} seeds together") as status:
        run_id, summary = seed_scan.run_scan(scan, tracker, status)
    base = scan.base
    print(f"run {run_id} in experiment '{base.experiment}': {scan.count} seeds at lr {base.lr:g}, "
          f"{base.iterations} iterations, trained together in {summary['train_seconds']:.1f} s")
    print(f"iterations to {target_text(base)}, depending only on the seed:")
    for name, what, count in (("iterations_to_target", "first reached", "reached"),
                              ("iterations_to_target_held", f"held {base.hold_steps} steps", "held")):
        numbers = (f"{summary[f'{name}_min']:.0f} to {summary[f'{name}_max']:.0f} (median {summary[f'{name}_median']:.0f}, "
                   f"p10 {summary[f'{name}_p10']:.0f}, p90 {summary[f'{name}_p90']:.0f}); " if summary[count] else "")
        print(f"  {what}: {numbers}{summary[count]} of {scan.count} seeds")
    print(f"{summary['diverged']} of {scan.count} seeds diverged")
    print(f"the run: {tracker.run_link(run_id)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.core import config
    from harness.study import config as study_config
    from harness.analysis.compare_config import CompareOptions

    options = CompareOptions(step=args.step, bands_per_decade=args.bands_per_decade,
                             min_trials=args.min_trials).check()
    values = config.read_toml(args.experiment) if args.experiment else {"sweep": {}}
    if args.run and args.study:
        raise ConfigError("--study, --run: give one, a study or a seed scan's run")
    if not args.run and not ({"sweep", "seeds"} & set(values)):
        raise ConfigError(f"experiment file: {args.experiment} has neither a [sweep] table (a study) "
                          "nor a [seeds] table (a seed scan) to compare")
    scan = args.run is not None or ("seeds" in values and "sweep" not in values)
    if scan:
        from harness.analysis.seed_scan import load as seed_scan_file
        experiment = seed_scan_file(args.experiment).base.experiment
    else:
        study = args.study or study_config.load(args.experiment).settings.study
    from harness.analysis import compare, report, report_files
    from harness.study.storage import read_study, storage_url
    from harness.tracking.tracker import Tracker

    from harness.progress import Status

    with Status("reading the seed scan" if scan else f"reading study '{study}'") as status:
        if scan:
            tracker = Tracker()
            comparison = compare.scan_comparison(args.run, experiment, tracker, options)
        else:  # a store this process cannot write to is read as it is
            found = read_study(study, storage_url())  # before the tracking store is touched
            tracker = Tracker()
            comparison = compare.study_comparison(found, tracker, options, status)
        if args.out:
            folder = Path(args.out)
        elif tracker.read_only:  # not beside the store: it cannot be written to
            folder = Path(tempfile.mkdtemp(prefix=f"wine-init-report-{report_files.folder_name(comparison.name)}-"))
        else:
            folder = report_files.default_folder(tracker, comparison.name)
        status.set("drawing the report's figures")
        path, notes, logged = report_files.write_report(comparison, tracker, folder)
        made = existing = None
        if comparison.kind == "study" and not tracker.read_only:
            status.set("making each trial's boundary.gif")
            made, existing = report.trial_gifs(comparison, tracker)
    print(report.terminal_table(comparison))
    for note in notes:
        print(note)
    if made is not None:
        print(f"boundary.gif: logged to {made} trial runs ({existing} had one already)")
    print(f"report: {path} (logged to run {comparison.run_id} as {logged}/)" if logged else
          f"report: {path} (the tracking store is read-only: nothing was logged to it)")
    print(f"the run: {tracker.run_link(comparison.run_id)}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from harness.study import config as study_config
    from harness.ops import ui, web_server

    web_server.check_host(args.host, args.allow_remote, "the UI")
    experiment = study_config.load(study_file(args.experiment)).base.experiment
    return ui.serve(experiment, host=args.host, port=args.port)


def study_file(experiment: str | None) -> str | None:
    """The file naming the study (and its MLflow experiment): the one given, else `make sweep`'s."""
    return experiment or (DEFAULT_STUDY if os.path.exists(DEFAULT_STUDY) else None)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from harness.study import config as study_config
    from harness.ops import web_server

    web_server.check_host(args.host, args.allow_remote, "the dashboard")
    study = args.study or study_config.load(study_file(args.experiment)).settings.study
    from harness.ops import dashboard
    from harness.study.storage import storage_url

    return dashboard.serve(storage_url(), study, host=args.host, port=args.port)


def cmd_export(args: argparse.Namespace) -> int:
    from harness.study import config as study_config

    study = args.study or study_config.load(study_file(args.experiment)).settings.study
    from harness.study import export
    from harness.study.storage import read_study, storage_url
    from harness.tracking.tracker import tracking_uri

    out = Path(args.out)
    export.check_out(out)
    found = read_study(study, storage_url())  # read-only; a missing study or store: nothing is created
    table = export.trial_table(found, export.tracker_for(tracking_uri()))
    export.write_csv(table, out)
    print(f"wrote {len(table.rows)} trials of study '{study}' to {out}")
    if table.runs_missing:
        print(f"note: {table.runs_missing} trials name an MLflow run that {tracking_uri()} does not hold; "
              "their metric cells are empty")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench import main as bench
    return bench.main(args)


def cmd_services(args: argparse.Namespace) -> int:
    from harness.ops.services import DEFAULT_ROOT, Services

    if args.action == "start":
        services = Services(DEFAULT_ROOT, args.host, args.pg_port, args.mlflow_port)
        services.start()
        print(services.describe())
    elif args.action == "stop":
        Services.saved().stop()
        print(f"stopped; the data stay in {DEFAULT_ROOT} for the next start")
    else:
        services = Services.saved()
        up = {True: "running", False: "stopped"}
        print(f"PostgreSQL  {up[services.cluster.running()]}\nMLflow      {up[services.mlflow.pid() is not None]}")
    return 0
