import math

import numpy as np
import pytest
import torch

from harness.core import config, data as data_lib
from harness.core.model import build_mlp, create
from harness.core.runtime import init_generator, seed_everything
from harness.core.train import METRICS, Callbacks, steps_to_target, train


@pytest.fixture
def wine(cpu):
    return data_lib.load(config.build({}), cpu)


def test_same_config_and_seed_give_bitwise_identical_curves(tiny_cfg, wine, cpu):
    a, b = train(tiny_cfg, wine, cpu), train(tiny_cfg, wine, cpu)
    for name in METRICS:
        assert a.history[name] == b.history[name]  # exact float equality, step by step
    other = train(config.build({**vars(tiny_cfg), "seed": 1}), wine, cpu)
    assert other.history["train_loss"] != a.history["train_loss"]


def test_metrics_at_every_step_including_the_untrained_one(tiny_cfg, wine, cpu):
    result = train(tiny_cfg, wine, cpu)
    assert result.last_step == tiny_cfg.iterations
    assert all(len(result.history[m]) == tiny_cfg.iterations + 1 for m in METRICS)
    # training lowers the loss
    assert result.history["train_loss"][-1] < result.history["train_loss"][0]


def test_boundary_steps(cpu, wine):
    cfg = config.build({"iterations": 25, "plot_every": 10, "device": "cpu"})
    steps = []

    class Record(Callbacks):
        def on_boundary(self, step, model, metrics):
            steps.append(step)

    train(cfg, wine, cpu, Record())
    assert steps == [0, 10, 20, 25]


def test_iterations_to_target_is_the_first_step_reaching_it(wine, cpu):
    cfg = config.build({"iterations": 300, "device": "cpu"})
    result = train(cfg, wine, cpu)
    k = result.iterations_to_target
    assert k is not None
    assert result.history["train_accuracy"][k] >= cfg.target_accuracy
    assert all(a < cfg.target_accuracy for a in result.history["train_accuracy"][:k])
    never = train(config.build({"iterations": 5, "device": "cpu"}), wine, cpu)
    assert never.iterations_to_target is None
    # held: from that step on, hold_steps steps in a row at or above the target
    h = result.iterations_to_target_held
    assert h is not None and h >= k
    assert all(a >= cfg.target_accuracy for a in result.history["train_accuracy"][h:h + cfg.hold_steps])
    assert not any(all(a >= cfg.target_accuracy for a in result.history["train_accuracy"][s:s + cfg.hold_steps])
                   for s in range(h))


def test_steps_to_target_by_hand():
    nan = float("nan")

    def at(target=0.85, hold=3, **keys):
        return config.build({"target_accuracy": target, "hold_steps": hold, "iterations": 5, **keys})

    # two networks (columns): one dips after its first crossing, one stops measuring (NaN)
    accuracy = np.array([[0.5, 0.5], [0.9, 0.9], [0.5, 0.9], [0.9, 0.9], [0.9, nan], [0.9, nan]])
    first, held = steps_to_target(accuracy, at())
    assert first == [1, 1] and held == [3, 1]
    assert steps_to_target(accuracy, at(hold=4))[1] == [None, None]  # the run ends first
    assert steps_to_target(accuracy, at(hold=1))[1] == first
    assert steps_to_target(accuracy, at(target=0.95, hold=2))[0] == [None, None]
    assert steps_to_target(accuracy[:2], at())[1] == [None, None]  # fewer steps than the hold
    assert steps_to_target(accuracy[:0], at()) == ([None, None], [None, None])  # nothing measured
    # at the target exactly counts, in float32 as in float64: 144 of the 160 training points
    # (val_fraction 0.1) is 0.9, which float32 rounds below 0.9 as a float64
    exact = at(target=0.9, hold=1, val_fraction=0.1)
    for dtype in (np.float32, np.float64):
        assert steps_to_target(np.array([[143 / 160], [144 / 160]], dtype=dtype), exact) == ([1], [1])



def test_a_non_finite_loss_stops_the_run(wine, cpu):
    cfg = config.build({"lr": 1e6, "iterations": 100, "device": "cpu"})
    result = train(cfg, wine, cpu)
    assert result.diverged
    assert result.last_step < cfg.iterations
    assert not math.isfinite(result.history["train_loss"][-1])
    assert all(math.isfinite(v) for v in result.history["train_loss"][:-1])


@pytest.mark.parametrize("init", ["default", "xavier_uniform", "kaiming_normal", "normal", "uniform", "orthogonal"])
def test_initial_weights_depend_only_on_the_seed(init, cpu):
    cfg = config.build({"init": init, "hidden": [8, 4]})
    first = [p.clone() for p in create(cfg, 2, 3, seed_everything(3), cpu).parameters()]
    torch.rand(100)  # unrelated use of the global generator changes nothing
    second = list(create(cfg, 2, 3, seed_everything(3), cpu).parameters())
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    third = list(create(cfg, 2, 3, seed_everything(4), cpu).parameters())
    assert not torch.equal(first[0], third[0])


def test_default_init_is_what_nn_linear_draws(cpu):
    with torch.random.fork_rng():  # nn.Linear draws from the global generator as it is built
        torch.manual_seed(5)
        reference = build_mlp(2, [8, 4])
    ours = create(config.build({"hidden": [8, 4]}), 2, 3, init_generator(5), cpu)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), reference.parameters()))


TORCH_INITS = {  # each scheme as torch.nn.init draws it (the biases: zeros)
    "xavier_uniform": lambda w, g: torch.nn.init.xavier_uniform_(w, generator=g),
    "xavier_normal": lambda w, g: torch.nn.init.xavier_normal_(w, generator=g),
    "kaiming_uniform": lambda w, g: torch.nn.init.kaiming_uniform_(w, nonlinearity="relu", generator=g),
    "kaiming_normal": lambda w, g: torch.nn.init.kaiming_normal_(w, nonlinearity="relu", generator=g),
    "normal": lambda w, g: torch.nn.init.normal_(w, std=0.3, generator=g),
    "uniform": lambda w, g: torch.nn.init.uniform_(w, -0.2, 0.5, generator=g),
    "orthogonal": lambda w, g: torch.nn.init.orthogonal_(w, generator=g),
    "constant": lambda w, g: torch.nn.init.constant_(w, 0.25),
    "zeros": lambda w, g: torch.nn.init.zeros_(w),
}


@pytest.mark.parametrize("init", sorted(TORCH_INITS))
def test_init_schemes_are_what_torch_nn_init_draws(init, cpu):
    reference, generator = build_mlp(2, [8, 4]), init_generator(5)
    with torch.no_grad():
        for layer in (m for m in reference if isinstance(m, torch.nn.Linear)):
            TORCH_INITS[init](layer.weight, generator)
            torch.nn.init.zeros_(layer.bias)
    ours = create(config.build({"init": init, "init_std": 0.3, "init_low": -0.2, "init_high": 0.5, "init_value": 0.25,
                                "hidden": [8, 4]}), 2, 3, init_generator(5), cpu)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-6 if init == "orthogonal" else 0)
               for a, b in zip(ours.parameters(), reference.parameters()))


def test_every_init_is_tested():
    assert set(TORCH_INITS) | {"default"} == set(config.INITS)


def test_default_init_matches_pytorch_distribution(cpu):
    cfg = config.build({"hidden": [256]})
    model = create(cfg, 2, 3, seed_everything(0), cpu)
    bound = 1 / math.sqrt(2)
    weight = model[0].weight
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    assert [m.out_features for m in model if isinstance(m, torch.nn.Linear)] == [256, 3]


def test_normal_init_uses_init_std(cpu):
    cfg = config.build({"init": "normal", "init_std": 0.02, "hidden": [512]})
    model = create(cfg, 13, 3, seed_everything(0), cpu)
    assert abs(model[0].weight.std().item() - 0.02) < 0.002
    assert torch.count_nonzero(model[0].bias) == 0


def test_mlp_shape():
    model = build_mlp(13, [16, 8])
    assert model(torch.zeros(5, 13)).shape == (5, 3)
