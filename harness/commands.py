"""What each command of `python -m harness` does: load its config (a bad key fails before the
heavy imports), call the library (train, seeds, sweep and compare: the Python API,
harness/api.py), print what the user needs. The parser and the one-line
errors are harness/__main__.py's."""

import argparse
import os
import shlex
import sys
from pathlib import Path

from harness.signals import exit_code

DEFAULT_STUDY = "experiments/sweep.toml"  # the study `make sweep` runs, `make ui` and `make dashboard` link to, `make export` writes


def cmd_train(args: argparse.Namespace) -> int:
    from harness.core import config

    cfg = config.load(args.experiment, args.set)  # a bad key fails here, before the heavy imports
    from harness import api
    from harness.core.config import target_text

    run = api.train(cfg, boundaries=False, progress=True)
    print(f"run {run.run_id} in experiment '{cfg.experiment}' on {run.device}")
    print("final  " + "  ".join(f"{k} {v:.4f}" for k, v in run.final.items()))
    if run.diverged:
        print(f"diverged: the loss became non-finite at step {run.last_step}")
    target = target_text(cfg)
    if run.iterations_to_target is None:
        print(f"never reached {target}")
    else:
        held = run.iterations_to_target_held
        print(f"iterations_to_target {run.iterations_to_target}, iterations_to_target_held "
              f"{held if held is not None else f'none (never held for {cfg.hold_steps} steps)'}: {target}")
    print(f"the run: {with_ui_hint(run.link)}")
    return 0


def with_ui_hint(link: str) -> str:
    """A run's page (an API result's `link`), and for a local store how to start the UI that serves it."""
    from harness.tracking.tracker import Tracker

    return Tracker().with_ui_hint(link)


def cmd_sweep(args: argparse.Namespace) -> int:
    from harness.study import config as study_config

    sweep = study_config.load(args.experiment, args.set)  # a bad key fails here, before the heavy imports
    if (args.workers or sweep.settings.workers) == 1:
        from harness.tracking import writer, writer_process  # a lone worker's writer process (harness/study/worker.py, `work`)

        writer_process.start_early(writer.tracking_uri())
    from harness import api
    from harness.study.summary import format_table

    study = args.study or sweep.settings.study
    try:
        result = api.sweep(sweep, trials=args.trials, study=study, workers=args.workers, total=args.total,
                           progress=True)
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
    print(format_table(result.summary))
    return 0


def cmd_seeds(args: argparse.Namespace) -> int:
    from harness.analysis import arms, seed_scan
    from harness.core import config

    if args.experiment and arms.has_arms(config.read_toml(args.experiment)):
        return seed_arms(args)
    scan = seed_scan.load(args.experiment, args.set, count=args.count)  # bad input fails before the heavy work
    from harness import api
    from harness.core.config import target_text

    result = api.seed_scan(scan, progress=True)
    base, summary = scan.base, result.summary
    print(f"run {result.run_id} in experiment '{base.experiment}': {scan.count} seeds at lr {base.lr:g}, "
          f"{base.iterations} iterations, trained together in {summary['train_seconds']:.1f} s")
    print(f"iterations to {target_text(base)}, depending only on the seed:")
    for name, what, count in (("iterations_to_target", "first reached", "reached"),
                              ("iterations_to_target_held", f"held {base.hold_steps} steps", "held")):
        numbers = (f"{summary[f'{name}_min']:.0f} to {summary[f'{name}_max']:.0f} (median {summary[f'{name}_median']:.0f}, "
                   f"p10 {summary[f'{name}_p10']:.0f}, p90 {summary[f'{name}_p90']:.0f}); " if summary[count] else "")
        print(f"  {what}: {numbers}{summary[count]} of {scan.count} seeds")
    print(f"{summary['diverged']} of {scan.count} seeds diverged")
    print(f"the run: {with_ui_hint(result.link)}")
    return 0


def seed_arms(args: argparse.Namespace) -> int:
    """`make seeds` on a file with [[seeds.arm]] tables: each arm a seed scan, side by side
    (harness/analysis/arms.py)."""
    from harness.analysis import arms

    scan = arms.load(args.experiment, args.set, count=args.count)  # every bad key before anything runs
    from harness.analysis import arms_report, arms_run
    from harness.progress import Status
    from harness.tracking.store_check import check_writable
    from harness.tracking.tracker import Tracker, tracking_uri

    check_writable(tracking_uri())
    tracker = Tracker()
    with Status(f"training {len(scan.arms)} arms of {scan.count} seeds") as status:
        outcome = arms_run.run_arms(scan, tracker, status)  # each arm's trainer is checked before the first trains
    print(f"run {outcome.run_id} in experiment '{scan.base.experiment}': {len(scan.arms)} arms of {scan.count} seeds")
    print(arms_report.format_table(outcome.table))
    print(f"report: {outcome.folder / 'report.md'}")
    print(f"the run: {tracker.run_link(outcome.run_id)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from harness import api

    result = api.compare(args.experiment, study=args.study, run=args.run, out=args.out, step=args.step,
                         bands_per_decade=args.bands_per_decade, min_trials=args.min_trials, progress=True)
    from harness.analysis import report

    print(report.terminal_table(result.comparison))
    for note in result.notes:
        print(note)
    if result.gifs is not None:
        print(f"boundary.gif: logged to {result.gifs[0]} trial runs ({result.gifs[1]} had one already)")
    print(f"report: {result.report} (logged to run {result.run_id} as {result.logged}/)" if result.logged else
          f"report: {result.report} (the tracking store is read-only: nothing was logged to it)")
    print(f"the run: {with_ui_hint(result.link)}")
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
