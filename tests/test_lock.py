"""requirements.lock, which `make` installs .venv from: a pin for every dependency, inside
pyproject.toml's ranges, and the interpreter running the tests installed at those pins."""

import re
import tomllib
from importlib.metadata import version

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
REQUIREMENTS = [Requirement(r) for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["dev"]]
# torch is not in the lock: the Makefile installs it first, from TORCH_SPEC, unless the venv has one
NOT_LOCKED = re.compile(r"torch|nvidia-.*|triton|wine-init")


def lock():
    """{canonical name: pinned version} from requirements.lock; each line must be `name==version`."""
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"requirements.lock: {line!r} is not name==version"
        name = canonicalize_name(req.name)
        assert name not in pins, f"requirements.lock pins {name} twice"
        assert not NOT_LOCKED.fullmatch(name), f"requirements.lock pins {name}, which the lock leaves out"
        pins[name] = specs[0].version
    return pins


def test_lock_pins_every_dependency_within_its_range():
    pins = lock()
    for req in REQUIREMENTS:
        name = canonicalize_name(req.name)
        if name == "torch":  # installed from the Makefile's TORCH_SPEC, which must be in range
            spec = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
            assert req.specifier.contains(spec, prereleases=True), f"TORCH_SPEC torch=={spec} is outside {req}"
            continue
        assert name in pins, f"requirements.lock has no pin for {req} (run `make lock`)"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject.toml's {req} (run `make lock`)")


@pytest.mark.parametrize("name", ["mlflow", "optuna"])
def test_installed_versions_are_the_locked_ones(name):
    pinned = lock().get(name)
    assert pinned, f"requirements.lock has no pin for {name}"
    installed = version(name)
    floor = next(s.version for r in REQUIREMENTS if canonicalize_name(r.name) == name
                 for s in r.specifier if s.operator == ">=")
    if Version(installed) != Version(pinned) and Version(installed) == Version(floor):
        pytest.skip(f"{name} {installed} is pyproject.toml's floor, not the lock's {pinned}: "
                    "a venv of `make test-floor`, not one `make` installed from requirements.lock")
    assert installed == pinned, (
        f"{name} {installed} is installed, requirements.lock pins {pinned}: reinstall with `make install` "
        "(touch requirements.lock first if the stamp is newer)")
