import csv

import numpy as np
import pytest
from mlflow import MlflowClient

from harness.core import data as data_lib

from harness.analysis import seed_scan
from conftest import PARITY
from harness.core.config import ConfigError
from harness.core.train import train


def test_a_seed_scan_is_one_run_with_percentiles_table_and_figures(tmp_path, tracker, cpu):
    path = tmp_path / "seeds.toml"
    path.write_text('experiment = "scan-test"\niterations = 40\nplot_every = 20\ndevice = "cpu"\n[seeds]\ncount = 5\nfirst = 3\n')
    scan = seed_scan.load(path)
    run_id, summary = seed_scan.run_scan(scan, tracker)

    # the same seeds, trained one at a time: the numbers the run must hold
    wine = data_lib.load(scan.base, cpu)
    singles = [train(type(scan.base)(**{**vars(scan.base), "seed": s}), wine, cpu) for s in range(3, 8)]
    losses = np.array([r.history["train_loss"] for r in singles])  # (seeds, steps)

    client = MlflowClient(tracker.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["seeds.count"] == "5" and run.data.params["seed"] == "3..7"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # one run, not one per seed
    median = {m.step: m.value for m in client.get_metric_history(run_id, "train_loss_median")}
    p90 = {m.step: m.value for m in client.get_metric_history(run_id, "train_loss_p90")}
    assert sorted(median) == list(range(41))
    for step in (0, 17, 40):
        assert median[step] == pytest.approx(np.median(losses[:, step]), rel=1e-5)
        assert p90[step] == pytest.approx(np.percentile(losses[:, step], 90), rel=1e-5)

    local = tmp_path / "download"
    local.mkdir()
    rows = list(csv.DictReader(open(client.download_artifacts(run_id, "seeds.csv", str(local)))))
    assert [int(r["seed"]) for r in rows] == [3, 4, 5, 6, 7]
    for row, single in zip(rows, singles):
        for name in ("iterations_to_target", "iterations_to_target_held"):  # as the loop measures them
            expected = getattr(single, name)
            assert row[name] == ("" if expected is None else str(expected))
        assert float(row["final_val_loss"]) == pytest.approx(single.final["val_loss"], rel=PARITY["rtol"], abs=PARITY["atol"])
    figures = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert figures == {"figures/loss_fan.png", "figures/iterations_to_target_histogram.png"}
    # also as step images, for the run's Model metrics tab; the description says where they are
    images = {a.path.split("+")[0] for a in client.list_artifacts(run_id, "images")}
    assert images == {"images/loss_fan", "images/iterations_to_target_histogram"}
    assert "`loss_fan`" in run.data.tags["mlflow.note.content"]
    reached = [r.iterations_to_target for r in singles if r.iterations_to_target is not None]
    assert summary["reached"] == len(reached)
    if reached:
        assert run.data.metrics["iterations_to_target_min"] == min(reached)
        assert run.data.metrics["iterations_to_target_max"] == max(reached)


@pytest.mark.parametrize("text, message", [
    ("[seeds]\ncont = 3\n", "seeds.cont: unknown key; allowed: count, first"),
    ("[seeds]\ncount = 0\n", "seeds.count: must be an integer >= 1, got 0"),
    ("[seeds]\nfirst = -1\n", "seeds.first: must be an integer >= 0, got -1"),
])
def test_seed_scan_config_errors(tmp_path, text, message):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        seed_scan.load(path)
