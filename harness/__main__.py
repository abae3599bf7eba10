"""Command line: parse, run the command (harness/commands.py), say any error in one line.
`python -m harness --help`."""

import argparse
import logging
import sys

from harness.commands import (DEFAULT_STUDY, cmd_bench, cmd_compare, cmd_dashboard, cmd_export, cmd_seeds,
                              cmd_services, cmd_sweep, cmd_train, cmd_ui)
from harness.core.config import ConfigError
from harness.errors import NothingCompleted, ServiceError, one_line_warnings
from harness.signals import exit_code, stop_on_first_interrupt, survive_closed_pipes


def web_server_options(command: argparse.ArgumentParser, port: int, what: str) -> None:
    """--port, --host and --allow-remote of a web server run until Ctrl-C (harness/ops/web_server.py)."""
    command.add_argument("--port", type=int, default=port, help=f"port (default: {port})")
    command.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1; only loopback addresses)")
    command.add_argument("--allow-remote", action="store_true", help=f"bind a non-loopback --host anyway ({what} has no login)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness", description="wine-init: how the convergence of a small "
                                "network depends on its initialization, tracked in MLflow and swept with Optuna.")
    sub = p.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one network, tracked in MLflow")
    train.add_argument("experiment", nargs="?", help="experiment TOML file (only the differences from the defaults)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    train.set_defaults(func=cmd_train)

    sweep = sub.add_parser("sweep", help="run (or continue) an Optuna study; every trial is a nested MLflow run")
    sweep.add_argument("experiment", nargs="?", help="experiment TOML file with a [sweep] table")
    budget = sweep.add_mutually_exclusive_group()
    budget.add_argument("--trials", type=int, help="trials to add (default: the file's sweep.trials)")
    budget.add_argument("--total", type=int, metavar="N", help="work on the study until it has N trials in all, "
                       "with any other workers on it (what make worker runs); instead of --trials")
    sweep.add_argument("--study", help="study name (default: the file's sweep.study)")
    sweep.add_argument("--workers", type=int, help="parallel worker processes (default: the file's sweep.workers)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a fixed config key")
    sweep.set_defaults(func=cmd_sweep)

    seeds = sub.add_parser("seeds", help="train many seeds at once, logged as one MLflow run")
    seeds.add_argument("experiment", nargs="?", help="experiment TOML file with an optional [seeds] table")
    seeds.add_argument("--count", type=int, help="how many seeds (default: the file's seeds.count, else 1000)")
    seeds.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    seeds.set_defaults(func=cmd_seeds)

    compare = sub.add_parser("compare", help="report how the seed changes convergence, for a study or a seed scan")
    compare.add_argument("experiment", nargs="?", help="a sweep file (its study) or a seeds file (its latest scan)")
    compare.add_argument("--study", help="study name (default: the file's sweep.study)")
    compare.add_argument("--run", help="a seed scan's MLflow run id (default: the latest scan of the file's experiment)")
    compare.add_argument("--step", type=int, help="step of the boundary grid (default: the last step all tiles have)")
    compare.add_argument("--bands-per-decade", type=int, default=1, help="learning-rate bands per factor of 10 (default 1)")
    compare.add_argument("--min-trials", type=int, default=5, help="fewest values for a band's spread (default 5)")
    compare.add_argument("--out", help="folder for the report (default: mlruns/reports/<study or run name>)")
    compare.set_defaults(func=cmd_compare)

    ui = sub.add_parser("ui", help="the MLflow UI over the tracking store, on 127.0.0.1 until Ctrl-C")
    ui.add_argument("experiment", nargs="?", help=f"experiment TOML file whose MLflow experiment to link (default: {DEFAULT_STUDY})")
    web_server_options(ui, 5000, "the UI")
    ui.set_defaults(func=cmd_ui)

    dashboard = sub.add_parser("dashboard", help="optuna-dashboard over the study storage, on 127.0.0.1 until Ctrl-C")
    dashboard.add_argument("experiment", nargs="?", help=f"experiment TOML file whose study to link (default: {DEFAULT_STUDY})")
    dashboard.add_argument("--study", help="study name to link (default: the file's sweep.study)")
    web_server_options(dashboard, 8080, "the dashboard")
    dashboard.set_defaults(func=cmd_dashboard)

    export = sub.add_parser("export", help="a study's trials as a CSV file: params, final metrics, MLflow run ids")
    export.add_argument("experiment", nargs="?", help=f"experiment TOML file naming the study (default: {DEFAULT_STUDY})")
    export.add_argument("out", metavar="OUT.csv", help="the CSV file to write (its folder is made when missing)")
    export.add_argument("--study", help="study name (default: the file's sweep.study)")
    export.set_defaults(func=cmd_export)

    services = sub.add_parser("services", help="PostgreSQL and an MLflow tracking server on this machine")
    services.add_argument("action", choices=["start", "stop", "status"])
    services.add_argument("--host", default="127.0.0.1", help="address both servers listen on (default 127.0.0.1)")
    services.add_argument("--pg-port", type=int, default=5433, help="PostgreSQL's port (default 5433)")
    services.add_argument("--mlflow-port", type=int, default=5001, help="the MLflow server's port (default 5001)")
    services.set_defaults(func=cmd_services)

    bench = sub.add_parser("bench", help="speed figures against in-process references")
    bench.add_argument("--quick", action="store_true", help="smaller workloads, for a smoke test")
    bench.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    bench.set_defaults(func=cmd_bench)
    return p


def store_urls() -> tuple[str, str]:
    """The stores a command writes to: the tracking store and Optuna's."""
    from harness.study.storage import storage_url
    from harness.tracking.writer import tracking_uri

    return tracking_uri(), storage_url()


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C and SIGTERM reach us as KeyboardInterrupt, also when started from a shell that ignores Ctrl-C
    stop_on_first_interrupt()
    survive_closed_pipes()
    one_line_warnings()
    # a store error is raised to us and said in one line; MLflow would also log it with its traceback
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ServiceError, NothingCompleted) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a store that stopped taking writes: one line, not MLflow's tracebacks
        from harness.tracking.store_check import store_fault, store_folders
        folders = store_folders(*store_urls())
        fault = store_fault(e, folders)
        if fault is None:
            raise
        where = ", ".join(f"{f}/" for f in folders) or "the tracking store"
        print(f"error: {where}: {fault}; what was written before stays, and the same command "
              "continues once the store takes writes again", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print("interrupted", file=sys.stderr)
        return exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
