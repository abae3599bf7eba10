import pytest

from conftest import run_cli


@pytest.mark.slow  # make bench --quick end to end, 11 s: make test-slow (and CI) runs it
def test_bench_prints_the_render_and_call_figures(cli_env):
    proc = run_cli("bench", "--quick", "--only", "render", "--only", "calls", "--only", "seeds", env=cli_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("machine: ") and "cpu: " in proc.stdout.splitlines()[0]  # the CPU every figure is from
    assert "ms/image, figure-per-image reference" in proc.stdout
    assert "calls   log_image of one boundary (a trial's 21 written together):" in proc.stdout
    assert "models x 200 iterations at once" in proc.stdout and "peak memory" in proc.stdout


def test_bench_rejects_an_unknown_name(cli_env):
    proc = run_cli("bench", "--only", "speed", env=cli_env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --only: 'speed' is not one of render, seeds, calls, sweep, workers, fast_paths"


@pytest.mark.slow
def test_bench_sweep_and_workers_quick(cli_env):
    proc = run_cli("bench", "--quick", "--only", "sweep", "--only", "workers", "--only", "fast_paths", env=cli_env,
                   timeout=600)
    assert proc.returncode == 0, proc.stderr
    for path in ("metric_rows", "image_files", "trial_records"):
        assert f"paths   without {path}:" in proc.stdout and "of the sweep's time" in proc.stdout
    assert "tutorial-style reference" in proc.stdout and "2 workers" in proc.stdout
    assert "trials in batches of 3, 2 workers:" in proc.stdout
