import os
import shutil

import numpy as np
import pytest
import torch

from harness.core import config, data as data_lib

from harness.trainers import fused_cpu
from harness.trainers.batched import BatchResult, loss_and_accuracy, stacked_parameters, train_batch
from harness.trainers.registry import choose
from harness.core.model import create
from harness.core.runtime import init_generator
from harness.core.train import METRICS, train

from conftest import PARITY


def configs(**common):
    """A mix of seeds, learning rates, inits and momentum, all sharing one architecture."""
    variants = [
        dict(seed=0, lr=0.7), dict(seed=1, lr=0.05, momentum=0.9), dict(seed=2, lr=0.3, init="xavier_uniform"),
        dict(seed=3, lr=0.1, init="kaiming_normal", momentum=0.5), dict(seed=4, lr=1.0, init="normal", init_std=0.5),
        dict(seed=5, lr=0.02, iterations=17), dict(seed=6, lr=0.45, init="orthogonal"),
        dict(seed=7, lr=0.35, init="uniform", init_low=-0.5, init_high=0.2), dict(seed=8, lr=0.65, init="zeros"),
        dict(seed=9, lr=0.25, init="constant", init_value=0.1, momentum=0.9),
        dict(seed=10, lr=0.15, init="xavier_normal"), dict(seed=11, lr=0.55, init="kaiming_uniform"),
    ]
    return [config.build({"device": "cpu", "iterations": 60, **common, **v}) for v in variants]


DIVERGING = len(configs())  # the index of the diverging model the tests append to configs()

# What only the batched torch ops train (registry.py): a batch shares its optimizer, activation
# and data, so each is a batch of its own, its models varying what the torch ops follow per model.
TORCH_ONLY = {
    "sgd-nesterov-weight_decay": [dict(seed=0, lr=0.3, momentum=0.9, nesterov=True), dict(seed=1, lr=0.2, weight_decay=0.05, nesterov=True),
                                  dict(seed=2, lr=0.1, momentum=0.5, nesterov=True, weight_decay=0.01),
                                  dict(seed=3, lr=0.4, momentum=0.9)],
    "adam": [dict(optimizer="adam", seed=0, lr=0.01), dict(optimizer="adam", seed=1, lr=0.03, beta1=0.8, weight_decay=0.01),
             dict(optimizer="adam", seed=2, lr=0.005, beta2=0.99, eps=1e-6, init="xavier_normal")],
    "adamw": [dict(optimizer="adamw", seed=0, lr=0.01, weight_decay=0.1), dict(optimizer="adamw", seed=1, lr=0.02, beta1=0.5),
              dict(optimizer="adamw", seed=2, lr=0.003, beta2=0.9, weight_decay=0.01)],
    "rmsprop": [dict(optimizer="rmsprop", seed=0, lr=0.01), dict(optimizer="rmsprop", seed=1, lr=0.003, alpha=0.9, momentum=0.5),
                dict(optimizer="rmsprop", seed=2, lr=0.005, eps=1e-4, weight_decay=0.01)],
    **{activation: [dict(activation=activation, seed=s, lr=lr) for s, lr in ((0, 0.5), (1, 0.2), (2, 0.9))]
       for activation in ("tanh", "gelu", "sigmoid", "leaky_relu")},
    **{dataset: [dict(dataset=dataset, seed=s, lr=lr) for s, lr in ((0, 0.5), (1, 0.1))]
       for dataset in ("breast_cancer", "moons", "circles")},
}
KERNEL_DATASETS = ("iris", "blobs")  # 3 classes, as the kernels need; their parity is with the kernels'


def torch_only(name: str, **common) -> list:
    return [config.build({"device": "cpu", "iterations": 50, **common, **v}) for v in TORCH_ONLY[name]]


def assert_same_curves(cfgs, batch: BatchResult, wine, cpu, exact_at_divergence: bool = True):
    """Every metric at every step within 1e-5 (`PARITY`). At the step where a model diverges its logits
    are at float32's edge, where any change in the order of a sum moves them past it or not:
    the compiled kernel (`exact_at_divergence=False`) must then only diverge there too."""
    for k, cfg in enumerate(cfgs):
        single = train(cfg, wine, cpu)
        batched = batch.result(k, cfg)
        assert batched.last_step == single.last_step and batched.diverged == single.diverged
        compared = slice(None, -1 if single.diverged and not exact_at_divergence else None)
        for name in METRICS:
            np.testing.assert_allclose(batched.history[name][compared], single.history[name][compared], **PARITY,
                                       err_msg=f"model {k} ({cfg.seed=}, {cfg.lr=}, {cfg.init=}, {cfg.momentum=}): {name}")
        if single.diverged:
            assert not np.isfinite(batched.history["train_loss"][-1])
        assert batched.iterations_to_target == single.iterations_to_target


@pytest.mark.parametrize("trainer", ["auto", "torch"], ids=["kernels", "torch-ops"])
@pytest.mark.parametrize("hidden, features", [([32], ["alcohol", "color_intensity"]), ([16, 8], "all")])
def test_each_model_follows_its_single_model_curve(hidden, features, trainer, cpu):
    cfgs = configs(hidden=hidden, features=features)
    wine = data_lib.load(cfgs[0], cpu)
    batch = train_batch(cfgs, wine, cpu, trainer=trainer)
    kernel = trainer == "auto" and len(hidden) == 1 and fused_cpu.library() is not None
    assert batch.trainer == ("fused_cpu" if kernel else "torch")
    assert_same_curves(cfgs, batch, wine, cpu)


@pytest.mark.parametrize("name, hidden", [(name, [32]) for name in sorted(TORCH_ONLY)] +
                         [(activation, [16, 8]) for activation in ("tanh", "gelu", "sigmoid", "leaky_relu")])
def test_what_only_the_torch_ops_train_follows_the_loop(name, hidden, cpu):
    """Adam, AdamW, RMSprop, SGD with Nesterov or weight decay, the other activations and the
    datasets of other than 3 classes: the torch ops (stacked_optim.py, aten's backward of each
    activation) against torch.optim and autograd in the loop. 50 steps: Adam's m / sqrt(v) turns
    the float32 rounding of a near-zero gradient into a full step, so longer curves part by the
    loop's own reproducibility (see test_the_stacked_optimizers_step_as_torch_optim)."""
    cfgs = torch_only(name, hidden=hidden)
    data = data_lib.load(cfgs[0], cpu)
    batch = train_batch(cfgs, data, cpu)
    assert batch.trainer == "torch"
    assert_same_curves(cfgs, batch, data, cpu)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
def test_the_stacked_optimizers_step_as_torch_optim(optimizer):
    """The same gradients, 100 steps: each stacked model moves as its own torch.optim optimizer
    moves it, to float32 rounding (torch fuses some multiply-adds, which rounds once less)."""
    from harness.core.train import make_optimizer
    from harness.trainers.stacked_optim import StackedOptimizer

    variants = [dict(lr=0.01), dict(lr=0.03, momentum=0.5, weight_decay=0.1, beta1=0.8, alpha=0.9, eps=1e-5),
                dict(lr=0.1, momentum=0.9, beta2=0.99, weight_decay=0.01)]
    if optimizer == "sgd":
        variants[2]["nesterov"] = True
    cfgs = [config.build({"optimizer": optimizer, **v}) for v in variants]
    generator = torch.Generator().manual_seed(0)
    stacked = torch.randn(len(cfgs), 6, 4, generator=generator)
    singles = [stacked[k].clone().requires_grad_() for k in range(len(cfgs))]
    optimizers = [make_optimizer(cfg, [p]) for cfg, p in zip(cfgs, singles)]
    ours = StackedOptimizer(cfgs, [stacked], torch.device("cpu"))
    active = torch.tensor([True, True, False])  # the last stopped after its first step
    for step in range(100):
        grads = torch.randn(len(cfgs), 6, 4, generator=generator) * 10.0 ** (step % 3 - 2)
        for k, (p, opt) in enumerate(zip(singles, optimizers)):
            if step == 0 or active[k]:
                p.grad = grads[k].clone()
                opt.step()
        ours.step([grads], active if step else torch.ones(len(cfgs), dtype=torch.bool))
    for k, p in enumerate(singles):
        torch.testing.assert_close(stacked[k], p.detach(), rtol=1e-5, atol=1e-6, msg=f"{optimizer} model {k}")


needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="needs a C compiler")


@needs_compiler
@pytest.mark.parametrize("hidden, features, dataset", [([32], ["alcohol", "color_intensity"], "wine"), ([10], "all", "wine"),
                                                       ([12], "all", "iris"), ([8], "all", "blobs")])
def test_cpu_kernel_follows_every_single_model_curve(hidden, features, dataset, cpu):
    """One hidden layer trains in compiled C on the CPU (harness/trainers/fused_cpu.c), 16 models a
    block: 42 models are two full blocks and a partial one, shared between threads."""
    common = dict(hidden=hidden, features=features, dataset=dataset)
    cfgs = configs(**common) + [config.build({"device": "cpu", "iterations": 30, "seed": 6, "lr": 1e6, **common})]
    if dataset != "wine":  # classes of equal size: under a constant init every logit ties, to rounding, after a step
        cfgs = [cfg for cfg in cfgs if cfg.init != "constant"]
    if dataset == "wine":  # and enough models for several blocks
        cfgs += [config.build({"device": "cpu", "iterations": 40, "seed": s, "lr": 0.5, **common}) for s in range(10, 45)]
    assert choose(cfgs, cpu, drawing=True).name == "fused_cpu"
    wine = data_lib.load(cfgs[0], cpu)
    batch = train_batch(cfgs, wine, cpu)
    assert list(np.flatnonzero(batch.diverged)) == [DIVERGING - (dataset != "wine")]
    assert_same_curves(cfgs, batch, wine, cpu, exact_at_divergence=False)


@needs_compiler
def test_the_cpu_kernel_draws_the_boundaries_the_loop_draws(cpu):
    """With a boundary to draw, the kernel copies out the weights of the drawing steps and the
    boundaries are drawn after training: the same steps, models, weights and metrics."""
    cfgs = configs() + [config.build({"device": "cpu", "iterations": 30, "seed": 6, "lr": 1e6}),
                        config.build({"device": "cpu", "iterations": 25, "seed": 7, "plot_every": 7})]
    wine = data_lib.load(cfgs[0], cpu)
    drawn = {}
    for kernels in (True, False):
        calls = drawn[kernels] = []
        trainer = "fused_cpu" if kernels else "torch"

        def record(step, params, models, metrics):
            calls.append((step, models.tolist(), [p[models].clone() for p in params], metrics.copy()))

        train_batch(cfgs, wine, cpu, on_boundary=record, trainer=trainer)
    assert [(step, models) for step, models, _, _ in drawn[True]] == [(step, models) for step, models, _, _ in drawn[False]]
    assert DIVERGING in drawn[True][0][1] and DIVERGING not in drawn[True][-1][1]  # drawn until it diverges
    assert (25, [DIVERGING + 1]) in [(step, models) for step, models, _, _ in drawn[True]]  # its last step, off its plot_every
    for (step, _, params, metrics), (_, _, expected, expected_metrics) in zip(drawn[True], drawn[False]):
        for got, want in zip(params, expected):
            torch.testing.assert_close(got, want, **PARITY, msg=f"weights at step {step}")
        np.testing.assert_allclose(metrics, expected_metrics, **PARITY, err_msg=f"metrics at step {step}")


def test_without_a_compiler_the_torch_ops_train(tmp_path, monkeypatch, cpu):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert fused_cpu.library() is None
    cfgs = configs()[:2]
    assert choose(cfgs, cpu, drawing=True).name == "torch"
    wine = data_lib.load(cfgs[0], cpu)
    batch = train_batch(cfgs, wine, cpu)
    assert batch.trainer == "torch"
    assert_same_curves(cfgs, batch, wine, cpu)


@needs_compiler
def test_the_kernel_is_built_once_into_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(fused_cpu, "_built", {})
    assert fused_cpu.library() is not None
    built = list((tmp_path / "wine-init").glob("fused_cpu-*.so"))
    assert len(built) == 1 and not list((tmp_path / "wine-init").glob("*.part"))
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(fused_cpu, "_built", {})  # a new process: found in the cache, not rebuilt
    assert fused_cpu.library() is not None and built[0].stat().st_mtime_ns == stamp


def test_initial_weights_are_the_single_models(cpu):
    cfgs = configs(hidden=[8, 4])
    params = stacked_parameters(cfgs, 2, 3, cpu)
    for k, cfg in enumerate(cfgs):
        model = create(cfg, 2, 3, init_generator(cfg.seed), cpu)
        linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        for i, layer in enumerate(linears):
            assert torch.equal(params[2 * i][k], layer.weight)
            assert torch.equal(params[2 * i + 1][k, :, 0], layer.bias)


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "torch-ops"])
def test_a_diverging_model_stops_and_the_others_go_on(kernels, cpu):
    cfgs = [config.build({"device": "cpu", "iterations": 40, "seed": s, "lr": lr}) for s, lr in [(0, 0.5), (1, 1e6), (2, 0.2)]]
    wine = data_lib.load(cfgs[0], cpu)
    batch = train_batch(cfgs, wine, cpu, trainer="auto" if kernels else "torch")
    assert list(batch.diverged) == [False, True, False]
    assert batch.last_step[1] < 40 and batch.last_step[0] == batch.last_step[2] == 40
    assert_same_curves(cfgs, batch, wine, cpu, exact_at_divergence=not kernels)


def test_models_must_share_the_architecture(cpu):
    cfgs = [config.build({"hidden": [8]}), config.build({"hidden": [16]})]
    with pytest.raises(ValueError, match="hidden: models trained together must share it"):
        train_batch(cfgs, data_lib.load(cfgs[0], cpu), cpu)


def test_loss_is_cross_entropy_even_where_another_class_underflows():
    # the third logit is so large that the second's log-probability is -inf, the loss finite
    logits = torch.tensor([[[0.0, 1.0], [-3e38, 2.0], [3e38, 0.5]]])
    y = torch.tensor([0, 1])
    loss, accuracy, _ = loss_and_accuracy(logits, y)
    expected = torch.nn.functional.cross_entropy(logits[0].T, y)
    assert torch.isfinite(loss).all() and torch.equal(loss[0], expected)
    assert accuracy.tolist() == [0.5]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("hidden, features", [([32], ["alcohol", "color_intensity"]), ([10], "all"), ([16, 8], "all")])
def test_cuda_batch_matches_cpu_batch(hidden, features, cpu):
    """One hidden layer trains with one kernel a step on CUDA (harness/trainers/fused_triton.py), two with torch ops."""
    common = dict(hidden=hidden, features=features)
    cfgs = configs(**common) + [config.build({"iterations": 30, "seed": 6, "lr": 1e6, **common})]
    cfgs += [config.build({"iterations": 40, "seed": s, "lr": 0.5, **common}) for s in range(10, 45)]  # 3 GPU programs
    cuda = torch.device("cuda")
    gpu_data = data_lib.load(cfgs[0], cuda)
    assert (choose(cfgs, cuda, drawing=False).name == "triton") == (len(hidden) == 1)
    on_gpu = train_batch(cfgs, gpu_data, cuda)
    on_cpu = train_batch(cfgs, data_lib.load(cfgs[0], cpu), cpu)
    assert list(on_gpu.last_step) == list(on_cpu.last_step) and list(on_gpu.diverged) == list(on_cpu.diverged)
    assert list(np.flatnonzero(on_cpu.diverged)) == [DIVERGING]
    for k in range(len(cfgs)):
        measured = int(on_cpu.last_step[k]) + (0 if on_cpu.diverged[k] else 1)  # up to the divergence, not at it
        for name in METRICS:
            np.testing.assert_allclose(on_gpu.history[name][:measured, k], on_cpu.history[name][:measured, k],
                                       rtol=1e-4, atol=1e-5, err_msg=f"model {k}: {name}")
    assert not np.isfinite(on_gpu.history["train_loss"][on_gpu.last_step[DIVERGING], DIVERGING])
