"""Seed scans with arms: the file's checks, the best lr, the runs, the report."""

import csv
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import PARITY, ROOT
from harness.analysis import arms, arms_report, arms_run
from harness.analysis.seed_scan import SeedScan
from harness.core import config
from harness.core import data as data_lib
from harness.core.config import ConfigError
from harness.core.train import train

TWO_ARMS = """experiment = "arms-test"
iterations = 40
device = "cpu"
plot_every = 20
target_accuracy = 0.8  # every seed holds it within 40 steps at both lrs: the lower median picks the lr
hold_steps = 5
[seeds]
count = 3
first = 2
[[seeds.arm]]
label = "sgd"
lr = [0.3, 1.5]
[[seeds.arm]]
label = "zeros"
init = "zeros"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "arms.toml"
    path.write_text(text)
    return path


def single_runs(cfg, seeds, cpu):
    """Each seed trained alone by the lecture's loop: the reference the scan must match."""
    data = data_lib.load(cfg, cpu)
    return [train(replace(cfg, seed=s), data, cpu) for s in seeds]


def held_rank(results, lr):
    """The best-lr rule, from the loop's results: most seeds held, then the lower median step,
    then the higher median final train accuracy, then the lower lr."""
    held = sorted(r.iterations_to_target_held for r in results if r.iterations_to_target_held is not None)
    accuracy = sorted(r.final["train_accuracy"] for r in results)
    def median(v):
        return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2 if v else float("inf")
    return (-len(held), median(held), -median(accuracy), lr)


def test_an_arms_file_is_a_parent_run_with_a_child_run_per_arm_at_its_best_lr(tmp_path, tracker, cpu):
    scan = arms.load(write(tmp_path, TWO_ARMS))
    outcome = arms_run.run_arms(scan, tracker, out=tmp_path / "report")

    # the sgd arm at each lr, seed by seed, by the loop: the arm is reported at the best of them
    by_lr = {lr: single_runs(replace(scan.arms[0].base, lr=lr), range(2, 5), cpu) for lr in (0.3, 1.5)}
    best = min(by_lr, key=lambda lr: held_rank(by_lr[lr], lr))
    zeros = single_runs(scan.arms[1].base, range(2, 5), cpu)

    client = MlflowClient(tracker.uri)
    parent = client.get_run(outcome.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["scan"] == "arms"
    assert parent.data.params["arms"] == "sgd, zeros" and parent.data.params["seed"] == "2..4"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{outcome.run_id}'")
    assert sorted(c.data.tags["arm"] for c in children) == ["sgd", "zeros"]
    child = {c.data.tags["arm"]: c for c in children}
    for label, c in child.items():
        assert c.info.status == "FINISHED" and c.data.tags["scan"] == "seeds"
        assert c.data.tags["trainer"] == next(r for r in outcome.arms if r.arm.label == label).chosen.batch.trainer
    assert float(child["sgd"].data.params["lr"]) == best and child["sgd"].data.params["arm.lrs"] == "0.3, 1.5"
    assert child["zeros"].data.params["init"] == "zeros"

    local = tmp_path / "download"
    local.mkdir()
    for label, singles in (("sgd", by_lr[best]), ("zeros", zeros)):
        rows = list(csv.DictReader(open(client.download_artifacts(child[label].info.run_id, "seeds.csv", str(local)))))
        assert [int(r["seed"]) for r in rows] == [2, 3, 4]
        for row, single in zip(rows, singles):
            expected = single.iterations_to_target_held
            assert row["iterations_to_target_held"] == ("" if expected is None else str(expected))
            assert float(row["final_train_accuracy"]) == pytest.approx(single.final["train_accuracy"], abs=PARITY["atol"])
        assert child[label].data.metrics["held"] == sum(s.iterations_to_target_held is not None for s in singles)
    lrs = list(csv.DictReader(open(client.download_artifacts(child["sgd"].info.run_id, "lrs.csv", str(local)))))
    assert [(float(r["lr"]), r["chosen"]) for r in lrs] == [(0.3, str(best == 0.3)), (1.5, str(best == 1.5))]

    # zeros: only the output biases ever move, so every seed predicts the majority class of the training part
    wine = data_lib.load(scan.arms[1].base, cpu)
    majority = wine.y_train.bincount().max().item() / len(wine.y_train)
    assert all(s.final["train_accuracy"] == pytest.approx(majority) for s in zeros)

    # the report: the table it returns, its files, and the same files on the parent run
    assert [(r["arm"], r["lr"], r["held"]) for r in outcome.table] == [
        ("sgd", best, sum(s.iterations_to_target_held is not None for s in by_lr[best])), ("zeros", 0.7, 0)]
    assert {r["run_id"] for r in outcome.table} == {c.info.run_id for c in children}
    written = {p.name for p in outcome.folder.iterdir()}
    assert written == {"report.md", "report.html", "arms.csv", "lrs.csv", "spread.png", "curves.png", "boundaries.png"}
    logged = {a.path for a in client.list_artifacts(outcome.run_id, "report")}
    assert logged == {f"report/{name}" for name in written}
    assert "| zeros | 0.7 | 0/3 | 0/3 |" in (outcome.folder / "report.md").read_text()
    assert all(r.boundary is not None and r.boundary_matches for r in outcome.arms)


def test_an_arm_s_child_run_is_a_seed_scan_that_make_compare_reads(tmp_path, tracker):
    from harness.analysis.compare import scan_comparison
    from harness.analysis.compare_config import CompareOptions

    outcome = arms_run.run_arms(arms.load(write(tmp_path, TWO_ARMS)), tracker, out=tmp_path / "report")
    sgd = outcome.arms[0]
    comparison = scan_comparison(sgd.run_id, "arms-test", tracker, CompareOptions())
    curves = comparison.bands[0].curves
    assert [c.seed for c in curves] == [2, 3, 4] and comparison.base.lr == sgd.chosen.lr
    assert [c.iterations_to_target_held for c in curves] == [r["iterations_to_target_held"] for r in sgd.chosen.rows]


def test_without_a_tracker_the_report_is_written_and_nothing_is_logged(tmp_path, session_store):
    text = TWO_ARMS.replace('experiment = "arms-test"', 'experiment = "arms-untracked"')
    outcome = arms_run.run_arms(arms.load(write(tmp_path, text)), None, out=tmp_path / "report")
    assert outcome.run_id is None and (outcome.folder / "report.md").is_file()
    assert "not tracked" in (outcome.folder / "report.md").read_text()
    assert MlflowClient(session_store).get_experiment_by_name("arms-untracked") is None
    lines = arms_report.format_table(outcome.table).splitlines()
    assert lines[0].split()[:4] == ["arm", "lr", "reached", "held"] and lines[2].startswith("zeros")


@pytest.mark.parametrize("arm, message", [
    ('label = "a"\nlr = [0.1, -1]', "seeds.arm[2].lr: must be a finite number > 0, got -1.0"),
    ('label = "a"\nlr = []', "seeds.arm[2].lr: expected a number or a non-empty list of numbers, got []"),
    ('label = "a"\nlr = [0.1, 0.1]', "seeds.arm[2].lr: each learning rate once, got [0.1, 0.1]"),
    ('label = "a"\nlr = ["fast"]', "seeds.arm[2].lr: expected a number, got 'fast'"),
    ('label = "a"\nint = "zeros"', "seeds.arm[2].int: unknown key; allowed:"),
    ('label = "a"\ninit = "ones"', "seeds.arm[2].init: 'ones' is not one of"),
    ('label = "a"\nseed = 3', "seeds.arm[2].seed: not in an arm: every arm trains the seeds of [seeds]"),
    ('label = "a"\nexperiment = "x"', "seeds.arm[2].experiment: not in an arm: every arm logs under the file's experiment"),
    ('init = "zeros"', "seeds.arm[2].label: expected a non-empty name for the arm, got None"),
    ('label = "first"', "seeds.arm[2].label: 'first' names arm 1 already; each arm needs its own label"),
])
def test_a_bad_arm_is_one_line_naming_it(tmp_path, arm, message):
    path = write(tmp_path, f'[seeds]\ncount = 3\n[[seeds.arm]]\nlabel = "first"\n[[seeds.arm]]\n{arm}\n')
    with pytest.raises(ConfigError) as error:
        arms.load(path)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_an_arm_no_trainer_covers_stops_before_anything_trains_or_is_logged(tmp_path, tracker):
    text = ('experiment = "arms-refused"\ndevice = "cpu"\n[seeds]\ncount = 2\n[[seeds.arm]]\nlabel = "a"\n'
            '[[seeds.arm]]\nlabel = "deep"\nhidden = [8, 8]\ntrainer = "fused_cpu"\n')
    with pytest.raises(ConfigError, match=r"^seeds\.arm\[2\]\.trainer: fused_cpu does not train this config"):
        arms_run.run_arms(arms.load(write(tmp_path, text)), tracker, out=tmp_path / "report")
    assert tracker.find_experiment_id("arms-refused") is None and not (tmp_path / "report").exists()


@pytest.mark.parametrize("text, message", [
    ("[seeds]\ncount = 3\narms = 2\n", "seeds.arms: unknown key; allowed: count, first, arm"),
    ("[seeds]\ncount = 0\n[[seeds.arm]]\nlabel = 'a'\n", "seeds.count: must be an integer >= 1, got 0"),
    ("[seeds]\narm = 3\n", "seeds.arm: expected one or more [[seeds.arm]] tables"),
    ("[seeds]\narm = [3]\n", "seeds.arm[1]: expected a table with a label and config keys, got 3"),
    ("lr = [0.1]\n[seeds]\n[[seeds.arm]]\nlabel = 'a'\n", "lr: expected a number, got [0.1]"),
])
def test_a_bad_seeds_table_is_one_line_naming_it(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        arms.load(write(tmp_path, text))
    assert str(error.value).startswith(message)


def test_an_arm_is_the_file_s_keys_then_its_own_then_set(tmp_path):
    text = 'iterations = 50\ninit = "normal"\n[seeds]\n[[seeds.arm]]\nlabel = "a"\ninit_std = 1.0\n[[seeds.arm]]\nlabel = "b"\niterations = 70\n'
    scan = arms.load(write(tmp_path, text), ["hold_steps=5"], count=7)
    a, b = scan.arms
    assert (a.base.init, a.base.init_std, a.base.iterations, a.base.hold_steps) == ("normal", 1.0, 50, 5)
    assert (b.base.init_std, b.base.iterations) == (0.1, 70) and a.lrs == b.lrs == [0.7]
    assert (scan.count, scan.first, scan.seeds[-1]) == (7, 0, 6)
    assert arms.load(write(tmp_path, text), ["iterations=30"]).arms[1].base.iterations == 30  # --set has the last word
    values = config.read_toml(write(tmp_path, text))
    assert arms.load(values).arms[0].base.init_std == 1.0 and "seeds" in values  # values are not consumed


def test_has_arms_tells_an_arms_file_from_a_plain_scan():
    assert not arms.has_arms(config.read_toml(ROOT / "experiments" / "seeds.toml"))
    assert not arms.has_arms({"seeds": 3}) and not arms.has_arms({})
    assert arms.has_arms({"seeds": {"count": 3, "arm": [{"label": "a"}]}})


def outcome(lr: float, held: int, median: float | None, accuracy: float) -> arms.LrOutcome:
    summary = {"held": held, "final_train_accuracy_median": accuracy}
    if median is not None:
        summary["iterations_to_target_held_median"] = median
    return arms.LrOutcome(SeedScan(config.build({"lr": lr}), 10, 0), None, [], summary)


def test_the_best_lr_holds_the_most_seeds_then_holds_soonest():
    assert arms.best_lr([outcome(0.1, 8, 300, 0.9), outcome(1.0, 9, 400, 0.86)]).lr == 1.0
    assert arms.best_lr([outcome(0.1, 9, 300, 0.9), outcome(1.0, 9, 200, 0.86)]).lr == 1.0
    assert arms.best_lr([outcome(0.1, 0, None, 0.7), outcome(1.0, 0, None, 0.8)]).lr == 1.0  # none held: best accuracy
    assert arms.best_lr([outcome(3.0, 9, 200, 0.9), outcome(1.0, 9, 200, 0.9)]).lr == 1.0  # all equal: the lower lr


def test_the_median_seed_counts_never_held_as_slowest():
    rows = [{"seed": s, "iterations_to_target_held": h, "final_train_accuracy": a}
            for s, h, a in ((0, None, 0.8), (1, 50, 0.9), (2, 10, 0.9), (3, None, 0.84), (4, 30, 0.9))]
    assert arms.median_seed(rows)["seed"] == 1  # 10, 30, [50], never (0.84), never (0.8)
    assert arms.median_seed(rows[:4])["seed"] == 1  # 10, [50], never, never: the lower middle


def test_init_std_arms_stand_on_a_log_axis_of_init_std():
    def result(std):
        arm = arms.Arm(f"std {std}", config.build({"init": "normal", "init_std": std}), [0.7])
        return arms.ArmResult(arm, [], None, 0.0, 0, None, True)
    positions, labels, xlabel, _ = arms_report.x_axis([result(s) for s in (0.01, 0.1, 1.0, 10.0)])
    assert list(positions) == pytest.approx([-2, -1, 0, 1]) and labels == ["0.01", "0.1", "1", "10"]
    assert xlabel == "init_std (log scale)"
    _, labels, xlabel, _ = arms_report.x_axis([result(0.1), arms.ArmResult(
        arms.Arm("zeros", config.build({"init": "zeros"}), [0.7]), [], None, 0.0, 0, None, True)])
    assert labels == ["std 0.1", "zeros"] and xlabel == ""  # two keys differ: one slot per arm


@pytest.mark.parametrize("name", ["zeros", "init_scale", "optimizers"])
def test_the_experiment_files_load_and_every_arm_has_a_trainer(name):
    from harness.core.runtime import resolve_device
    from harness.trainers.registry import choose

    path = ROOT / "experiments" / f"{name}.toml"
    values = config.read_toml(path)
    assert arms.has_arms(values)
    scan = arms.load(path)
    assert len(scan.arms) >= 2 and path.read_text().startswith("#")  # the question it asks, first
    for arm in scan.arms:
        choose([replace(arm.base, lr=lr) for lr in arm.lrs], resolve_device(arm.base.device), drawing=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zeros", "init_scale", "optimizers"])
def test_the_tables_in_docs_questions_reproduce(tmp_path, name):
    text = (ROOT / "docs" / "questions.md").read_text()
    command = f"$ make seeds SEEDS_CONFIG=experiments/{name}.toml\n"
    documented = text[text.index(command) + len(command):].split("```")[0].rstrip("\n")
    outcome = arms_run.run_arms(arms.load(ROOT / "experiments" / f"{name}.toml"), None, out=tmp_path)
    assert arms_report.format_table(outcome.table) == documented


@pytest.mark.slow  # an end-to-end command: CI runs it in make test-slow, keeping make test under 4 minutes
def test_make_seeds_on_an_arms_file_prints_the_table_and_logs_the_runs(tmp_path, cli_env):
    from conftest import run_cli

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_cli("seeds", str(write(tmp_path, TWO_ARMS)), env={**cli_env, "MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("run ") and lines[0].endswith("in experiment 'arms-test': 2 arms of 3 seeds")
    assert [line.split()[0] for line in lines[2:4]] == ["sgd", "zeros"] and lines[-1].startswith("the run: http")
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("arms-test").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3  # the parent and an arm each
    refused = run_cli("compare", str(write(tmp_path, TWO_ARMS)), env={**cli_env, "MLFLOW_TRACKING_URI": uri})
    assert refused.returncode == 2 and refused.stderr.strip().startswith("error: experiment file: ")
    assert "make seeds" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
