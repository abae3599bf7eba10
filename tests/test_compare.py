"""`make compare`: the report's numbers against values worked out by hand from known curves."""

import time

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution, IntDistribution
from PIL import Image

from harness.analysis import compare, seed_scan

from harness.core import config
from harness.analysis.compare_config import CompareOptions
from harness.core.config import ConfigError
from harness.experiment import RunSpec, record_trained_run
from harness.analysis.report import band_name, band_tables, terminal_table, trial_gifs
from harness.analysis.report_files import write_report
from harness.study.storage import PARENT_RUN_ATTR, RUN_ID_ATTR, read_study
from harness.core.train import TrainResult
from tests.conftest import run_cli

STEPS = 61  # steps 0..60
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]  # the boundary image at steps 0, 30, 60

# (lr, seed, iterations_to_target, final val_accuracy, image steps); a None seed marks the
# pruned trial below
KNOWN = [
    (0.5, 6, 50, 0.95, (0, 30, 60)),
    (0.5, 2, 20, 0.75, (0, 30, 60)),
    (0.5, 4, 40, 0.85, (0, 30)),  # stopped drawing early: the grid's common step is 30
    (0.5, 1, 10, 0.70, (0, 30, 60)),
    (0.5, 5, None, 0.90, (0, 30, 60)),  # never reached the target
    (0.5, 3, 30, 0.80, (0, 30, 60)),
    (0.05, 7, 55, 0.60, (0, 30, 60)),
    (0.05, 8, 45, 0.65, (0, 30, 60)),
]
PRUNED = (0.5, 9, None, 0.10, (0, 30))  # stopped by the pruner: its last val_accuracy is no final value


def known_result(reached: int | None, final_val_accuracy: float) -> TrainResult:
    """train_accuracy 0.5 until `reached`, 0.9 from then on; val_accuracy peaks at 0.99 halfway,
    then ends at the given value (so the final value is not the best one)."""
    steps = np.arange(STEPS)
    accuracy = np.where(steps >= (reached if reached is not None else STEPS), 0.9, 0.5)
    val_accuracy = np.where(steps == STEPS // 2, 0.99, np.linspace(0.4, final_val_accuracy, STEPS))
    loss = 1.0 / (1.0 + steps)
    return TrainResult(history={"train_loss": loss.tolist(), "train_accuracy": accuracy.tolist(),
                                "val_loss": (loss * 1.1).tolist(), "val_accuracy": val_accuracy.tolist()},
                       iterations_to_target=reached)


@pytest.fixture
def known_study(tmp_path, tracker, cpu):
    """A study whose trials' runs hold the known curves, logged the way the sweep logs them."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    name = f"known-{tmp_path.name}"
    experiment = f"compare-{tmp_path.name}"
    parent = tracker.open_run(experiment, name, tags={"optuna.study_name": name})
    tracker.close_run(parent, "FINISHED")
    study = optuna.create_study(study_name=name, storage=storage)
    study.set_user_attr(PARENT_RUN_ATTR, parent.run_id)
    for number, (lr, seed, reached, val_accuracy, image_steps) in enumerate(KNOWN + [PRUNED]):
        cfg = config.build({"experiment": experiment, "lr": lr, "seed": seed, "iterations": STEPS - 1, "device": "cpu"})
        images = [(s, Image.new("RGB", (32, 32), color=COLOURS[s // 30])) for s in image_steps]
        run_id, _ = record_trained_run(cfg, tracker, cpu, known_result(reached, val_accuracy), images,
                                       RunSpec(run_name=f"trial-{number}", parent_run_id=parent.run_id))
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr, "seed": seed, "iterations": STEPS - 1},
            distributions={"lr": FloatDistribution(1e-3, 1.0, log=True), "seed": IntDistribution(0, 100),
                           "iterations": IntDistribution(10, 100)},
            value=None if number == len(KNOWN) else 1.0 - val_accuracy + 0.01 * seed,
            state=optuna.trial.TrialState.PRUNED if number == len(KNOWN) else optuna.trial.TrialState.COMPLETE,
            user_attrs={RUN_ID_ATTR: run_id}))
    return name, storage, parent.run_id


def test_a_study_whose_trials_differ_in_more_than_lr_seed_and_iterations_says_so(tmp_path, tracker, cpu):
    """A sweep that searched the optimizer: each lr band mixes SGD and Adam, which the report notes;
    and each trial is measured in its own data's points (here moons, 210 to train on, and wine, 124)."""
    storage, name = f"sqlite:///{tmp_path}/optuna.db", f"mixed-{tmp_path.name}"
    parent = tracker.open_run(f"compare-{tmp_path.name}", name)
    tracker.close_run(parent, "FINISHED")
    study = optuna.create_study(study_name=name, storage=storage)
    study.set_user_attr(PARENT_RUN_ATTR, parent.run_id)
    for number, keys in enumerate([{"optimizer": "adam"}, {"optimizer": "sgd"}, {"optimizer": "sgd", "dataset": "moons"}]):
        cfg = config.build({"experiment": f"compare-{tmp_path.name}", "iterations": STEPS - 1, "device": "cpu", **keys})
        result = known_result(30, 0.9)
        if keys.get("dataset"):  # 178 of 210 points is 0.8476: below the target there, 85% of 124 points at wine's
            result.history["train_accuracy"] = [0.8476 if s >= 30 else 0.3 for s in range(STEPS)]
        run_id, _ = record_trained_run(cfg, tracker, cpu, result, [], RunSpec(run_name=f"trial-{number}",
                                                                            parent_run_id=parent.run_id))
        study.add_trial(optuna.trial.create_trial(params={"lr": 0.7}, distributions={"lr": FloatDistribution(1e-3, 1.0)},
                                                  value=0.1, user_attrs={RUN_ID_ATTR: run_id}))
    c = compare.study_comparison(read_study(name, storage), tracker, CompareOptions(min_trials=2))
    assert c.mixed == ["dataset", "features", "optimizer"] and c.base is None
    assert c.target == "85% train accuracy"  # not in one dataset's points
    assert [curve.iterations_to_target for curve in c.bands[0].curves] == [30, 30, None]


def test_the_spread_per_band_is_computed_from_the_logged_curves(known_study, tracker):
    name, storage, _ = known_study
    c = compare.study_comparison(read_study(name, storage), tracker, CompareOptions(min_trials=5))
    assert c.mixed == []
    assert [b.label for b in c.bands] == ["[0.01, 0.1)", "[0.1, 1)"]
    few, main = c.bands
    assert [curve.seed for curve in main.curves] == [1, 2, 3, 4, 5, 6, 9]  # sorted by seed
    assert main.reached == 5 and few.reached == 2 and main.stopped == 1
    # held for hold_steps = 20 of the 61 steps: from 10, 20, 30 and 40; not from 50 (11 steps
    # left), nor from the other band's 45 and 55
    assert [c.iterations_to_target_held for c in main.curves] == [10, 20, 30, 40, None, None, None]
    assert main.held == 4 and few.held == 0 and main.iterations_to_target_held is None

    # by hand, from [10, 20, 30, 40, 50] with linear interpolation: p10 at 0.4 of the first gap
    s = main.iterations_to_target
    assert (s.n, s.min, s.p10, s.median, s.p90, s.max) == (5, 10, 14, 30, 46, 50)
    # the 95% percentile bootstrap of the median, 2000 resamples drawn with seed 0
    values = np.array([10.0, 20, 30, 40, 50])
    picks = np.random.default_rng(0).integers(0, 5, size=(2000, 5))
    assert s.median_ci == tuple(np.percentile(np.median(values[picks], axis=1), [2.5, 97.5]))
    assert s.median_ci[0] < 30 < s.median_ci[1]
    # final val_accuracy of the six that finished: 0.70 .. 0.95 in steps of 0.05 (not the
    # mid-run peak of 0.99, not the pruned trial's 0.10)
    v = main.val_accuracy
    assert v.n == 6 and v.min == pytest.approx(0.70) and v.max == pytest.approx(0.95)
    assert v.median == pytest.approx(0.825) and v.p10 == pytest.approx(0.725) and v.p90 == pytest.approx(0.925)
    # two trials are too few for numbers: the report says so
    assert few.iterations_to_target is None and few.val_accuracy is None
    assert "too few: 2 reached, need 5" in terminal_table(c)
    assert set(c.importances) == {"fANOVA", "PED-ANOVA"} and set(c.importances["fANOVA"]) <= {"lr", "seed", "iterations"}


def test_bootstrap_interval_is_seeded_and_collapses_on_equal_values():
    values = np.array([3.0, 9.0, 4.0, 12.0, 7.0, 5.0])
    assert compare.bootstrap_median_ci(values, 500, seed=1) == compare.bootstrap_median_ci(values, 500, seed=1)
    assert compare.bootstrap_median_ci(np.full(5, 7.0), 500, seed=1) == (7.0, 7.0)
    assert compare.lr_band(0.5, 1) == pytest.approx((0.1, 1.0)) and compare.lr_band(0.1, 1) == pytest.approx((0.1, 1.0))
    assert compare.lr_band(0.05, 2) == pytest.approx((10 ** -1.5, 0.1))


@pytest.mark.slow  # an end-to-end command: CI runs it in make test-slow, keeping make test under 4 minutes
def test_compare_writes_and_logs_the_report_and_a_gif_per_trial(known_study, tracker, cli_env, tmp_path):
    name, storage, parent = known_study
    out = tmp_path / "report"
    out.mkdir()
    (out / "keep.png").write_text("mine")
    result = run_cli("compare", "--study", name, "--out", str(out), env={**cli_env, "OPTUNA_STORAGE": storage})
    assert result.returncode == 0, result.stderr
    # the printed table and the report hold the numbers above
    row = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("[0.1, 1)")][0]
    assert row[2:11] == ["7", "1", "5", "5", "10", "14", "30", "46", "50"]  # steps are counted in integers
    assert "| [0.1, 1) | 7 | 1 | 5 | 5 | 10 | 14 | 30 | 46 | 50 |" in (out / "report.md").read_text()
    assert "boundary.gif: logged to 9 trial runs (0 had one already)" in result.stdout
    assert (out / "keep.png").read_text() == "mine"  # the folder's other files are left alone

    client = MlflowClient(tracker.uri)
    first = client.get_run(parent).data.tags["report"]  # report/<time>/report.html
    folder = first.rsplit("/", 1)[0]
    logged = {f.path.rsplit("/", 1)[1] for f in client.list_artifacts(parent, folder)}
    assert logged == {"report.md", "report.html", "curves.png", "iterations_to_target.png", "importances.png",
                      "boundaries_lr0.1-1_step30.png", "boundaries_lr0.01-0.1_step30.png"}  # one step for all bands
    assert "data:image/png;base64," in (out / "report.html").read_text()  # self-contained
    assert "<strong>" in (out / "report.html").read_text() and "**" not in (out / "report.html").read_text()

    run_id = optuna.load_study(study_name=name, storage=storage).trials[0].user_attrs[RUN_ID_ATTR]
    gif = Image.open(client.download_artifacts(run_id, "boundary.gif", str(tmp_path)))
    assert gif.n_frames == 3  # one frame per logged image, in step order (trial 0: steps 0, 30, 60)
    assert [gif.seek(i) or gif.convert("RGB").getpixel((0, 0)) for i in range(3)] == COLOURS

    time.sleep(1)  # a new report folder per second
    again = run_cli("compare", "--study", name, "--out", str(out), "--step", "0", env={**cli_env, "OPTUNA_STORAGE": storage})
    assert "boundary.gif: logged to 0 trial runs (9 had one already)" in again.stdout
    assert (out / "boundaries_lr0.1-1_step0.png").exists() and not (out / "boundaries_lr0.1-1_step30.png").exists()
    second = client.get_run(parent).data.tags["report"]
    assert second != first, again.stdout + again.stderr
    assert not any("step30" in f.path for f in client.list_artifacts(parent, second.rsplit("/", 1)[0]))


def test_a_seed_scan_report_matches_the_scan_and_its_retrained_boundaries(tmp_path, tracker):
    path = tmp_path / "seeds.toml"
    path.write_text('experiment = "compare-scan"\niterations = 120\ndevice = "cpu"\nimage_size = 256\n'
                    '[seeds]\ncount = 24\n')
    run_id, summary = seed_scan.run_scan(seed_scan.load(path), tracker)
    c = compare.scan_comparison(None, "compare-scan", tracker, CompareOptions(step=40, max_tiles=6))
    assert c.run_id == run_id and len(c.bands) == 1 and len(c.bands[0].curves) == 24
    s = c.bands[0].iterations_to_target
    # the scan's own summary, computed from its per-seed table when it was logged
    assert s.n == summary["reached"]
    for key in ("min", "p10", "median", "p90", "max"):
        assert getattr(s, key) == pytest.approx(summary[f"iterations_to_target_{key}"])
    html, notes, _ = write_report(c, tracker, tmp_path / "scan-report")
    assert notes[0].startswith("retrained curves match the logged ones")
    assert (tmp_path / "scan-report" / "boundaries_step40.png").exists() and html.exists()
    assert trial_gifs(c, tracker) == (0, 0)  # a scan has no trial runs
    with pytest.raises(ConfigError, match=r"step: must be in \[0, 120\]"):
        compare.scan_comparison(run_id, "", tracker, CompareOptions(step=121))


@pytest.mark.slow  # a command per case, 20 s: make test-slow (and CI) runs it
def test_compare_errors_are_one_line(tmp_path, cli_env, known_study):
    name, storage, parent = known_study
    env = {**cli_env, "OPTUNA_STORAGE": storage}
    for args, message in [(["--study", "nope"], "error: study: no study named 'nope'"),
                          (["--min-trials", "1"], "error: min-trials: must be >= 2, got 1"),
                          (["--run", parent], "is not a seed scan"),
                          (["--run", "no-such-run"], "error: run: no run with id 'no-such-run'"),
                          (["--study", name, "--step", "1000"], "error: step: no trial has a boundary image at step 1000"),
                          (["--study", name, "--run", parent], "error: --study, --run: give one"),
                          (["experiments/lecture.toml"], "has neither a [sweep] table")]:
        result = run_cli("compare", *args, env=env)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_table_of_one_value_is_one_line_and_a_scan_is_labelled_by_its_lr():
    """A scan of networks that all end at the same val_accuracy (46 of 54 points): one line, not
    a table of equal cells; its one band is named by its lr, not by the decade it falls in."""
    base = config.build({"lr": 0.7, "iterations": STEPS - 1})
    history = known_result(20, 46 / 54).history
    curves = [compare.Curve(f"seed {k}", k, 0.7, {m: np.array(v) for m, v in history.items()}, 20, 20)
              for k in range(6)]
    options = CompareOptions(min_trials=5)
    c = compare.Comparison("scan", "scan", "run", base.target_accuracy, base.hold_steps, config.target_text(base),
                           options, compare.make_bands(curves, options), "a seed scan varies only the seed", base=base)
    first, held, accuracy = band_tables(c)
    assert accuracy.same == "0.852 for all 6 networks, 46 of the 54 validation points"
    assert "final val_accuracy (networks that ran all their iterations): 0.852 for all 6 networks" in terminal_table(c)
    assert first.same == held.same == "20 for all 6 networks"
    assert [row[0] for row in accuracy.rows] == ["0.7"] and band_name(c, c.bands[0]) == "lr 0.7"
    assert c.target == "85% train accuracy (106 of 124 training points)"
