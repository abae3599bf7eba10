"""`make compare`: the report's numbers against values worked out by hand from known curves."""

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution, IntDistribution
from PIL import Image

from harness import compare, config, seed_scan
from harness.compare_config import CompareOptions
from harness.experiment import record_trained_run
from harness.report import terminal_table, trial_gifs, write_report
from harness.study_storage import PARENT_RUN_ATTR, RUN_ID_ATTR
from harness.train import TrainResult
from tests.conftest import run_cli

STEPS = 61  # steps 0..60
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]  # the boundary image at steps 0, 30, 60

# (lr, seed, iterations_to_target, final val_accuracy, image steps)
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


def known_result(reached: int | None, final_val_accuracy: float) -> TrainResult:
    """train_accuracy 0.5 until `reached`, 0.9 from then on; val_accuracy ends at the given value."""
    steps = np.arange(STEPS)
    accuracy = np.where(steps >= (reached if reached is not None else STEPS), 0.9, 0.5)
    val_accuracy = np.linspace(0.4, final_val_accuracy, STEPS)
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
    for number, (lr, seed, reached, val_accuracy, image_steps) in enumerate(KNOWN):
        cfg = config.build({"experiment": experiment, "lr": lr, "seed": seed, "iterations": STEPS - 1, "device": "cpu"})
        images = [(s, Image.new("RGB", (32, 32), color=COLOURS[s // 30])) for s in image_steps]
        run_id = record_trained_run(cfg, tracker, cpu, known_result(reached, val_accuracy), images,
                                    run_name=f"trial-{number}", parent_run_id=parent.run_id)
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr, "seed": seed, "iterations": STEPS - 1},
            distributions={"lr": FloatDistribution(1e-3, 1.0, log=True), "seed": IntDistribution(0, 100),
                           "iterations": IntDistribution(10, 100)},
            value=1.0 - val_accuracy + 0.01 * seed, user_attrs={RUN_ID_ATTR: run_id}))
    return name, storage, parent.run_id


def test_the_spread_per_band_is_computed_from_the_logged_curves(known_study, tracker):
    name, storage, _ = known_study
    c = compare.study_comparison(name, storage, tracker, CompareOptions(min_trials=5))
    assert [b.label for b in c.bands] == ["[0.01, 0.1)", "[0.1, 1)"]
    few, main = c.bands
    assert [curve.seed for curve in main.curves] == [1, 2, 3, 4, 5, 6]  # sorted by seed
    assert main.reached == 5 and few.reached == 2

    # by hand, from [10, 20, 30, 40, 50] with linear interpolation: p10 at 0.4 of the first gap
    s = main.iterations_to_target
    assert (s.n, s.min, s.p10, s.median, s.p90, s.max) == (5, 10, 14, 30, 46, 50)
    assert s.median_ci[0] <= 30 <= s.median_ci[1] and 10 <= s.median_ci[0] and s.median_ci[1] <= 50
    # final val_accuracy of all six: 0.70 .. 0.95 in steps of 0.05
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


def test_compare_writes_and_logs_the_report_and_a_gif_per_trial(known_study, tracker, cli_env, tmp_path):
    name, storage, parent = known_study
    out = tmp_path / "report"
    result = run_cli("compare", "--study", name, "--out", str(out), env={**cli_env, "OPTUNA_STORAGE": storage})
    assert result.returncode == 0, result.stderr
    # the printed table and the report hold the numbers above
    row = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("[0.1, 1)")][0]
    assert row[2:10] == ["6", "5", "5", "10.0", "14.0", "30.0", "46.0", "50.0"]
    assert "| [0.1, 1) | 6 | 5 | 5 | 10.0 | 14.0 | 30.0 | 46.0 | 50.0 |" in (out / "report.md").read_text()
    assert "boundary.gif: logged to 8 trial runs (0 had one already)" in result.stdout

    client = MlflowClient(tracker.uri)
    logged = {f.path for f in client.list_artifacts(parent, "report")}
    assert {"report/report.md", "report/report.html", "report/curves.png", "report/importances.png",
            "report/boundaries_band1_step30.png", "report/boundaries_band0_step60.png"} <= logged
    assert "data:image/png;base64," in (out / "report.html").read_text()  # self-contained

    run_id = optuna.load_study(study_name=name, storage=storage).trials[0].user_attrs[RUN_ID_ATTR]
    gif = Image.open(client.download_artifacts(run_id, "boundary.gif", str(tmp_path)))
    assert gif.n_frames == 3  # one frame per logged image, in step order
    assert [gif.seek(i) or gif.convert("RGB").getpixel((0, 0)) for i in range(3)] == COLOURS

    again = run_cli("compare", "--study", name, "--out", str(out), "--step", "0", env={**cli_env, "OPTUNA_STORAGE": storage})
    assert "boundary.gif: logged to 0 trial runs (8 had one already)" in again.stdout
    assert (out / "boundaries_band1_step0.png").exists() and not (out / "boundaries_band1_step30.png").exists()


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
    html, notes = write_report(c, tracker, tmp_path / "scan-report")
    assert notes[0].startswith("retrained curves match the logged ones")
    assert (tmp_path / "scan-report" / "boundaries_step40.png").exists() and html.exists()
    assert trial_gifs(c, tracker) == (0, 0)  # a scan has no trial runs


def test_compare_errors_are_one_line(tmp_path, cli_env, known_study):
    env = {**cli_env, "OPTUNA_STORAGE": known_study[1]}
    for args, message in [(["--study", "nope"], "error: study: no study named 'nope'"),
                          (["--min-trials", "1"], "error: min-trials: must be >= 2, got 1"),
                          (["--run", known_study[2]], "is not a seed scan")]:
        result = run_cli("compare", *args, env=env)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
