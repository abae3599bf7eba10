"""`make compare`'s default report folder: whatever the study or run is called, the report
lands in a folder directly under mlruns/reports/."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.analysis.report_files import default_folder, folder_name

BAD = ["..", ".", "/", "a/../../b", "", "a\0b", "a\\b", "../x", ".hidden", "a" * 5000, "x" * 101,
       "my study", "it's", "\udcff", "C:\\Windows", "~", "-", "a b", "a_b"]


@pytest.mark.parametrize("name", BAD)
def test_any_name_maps_to_one_folder_directly_under_reports(name, tmp_path):
    local = SimpleNamespace(local_db=tmp_path / "mlruns" / "mlflow.db")
    folder = default_folder(local, name)
    assert folder.parent == tmp_path / "mlruns" / "reports"
    assert folder.name == folder_name(name) and folder.name not in ("", ".", "..")
    assert not folder.name.startswith(".") and len(folder.name) <= 109
    assert (folder.parent / folder.name).resolve().parent == (tmp_path / "mlruns" / "reports").resolve()
    assert default_folder(SimpleNamespace(local_db=None), name).parent == Path("mlruns") / "reports"


def test_distinct_names_give_distinct_folders():
    names = BAD + ["a_b+" + folder_name("a b").split("+")[1], "x" * 100, "x" * 102]
    assert len({folder_name(n) for n in names}) == len(set(names))
    assert folder_name("a b") != folder_name("a_b") == "a_b"


@pytest.mark.parametrize("name", ["wine-sweep", "known-test_x0", "seed-scan.2"])
def test_a_plain_name_is_its_own_folder(name):
    assert folder_name(name) == name
    assert default_folder(SimpleNamespace(local_db=None), name) == Path("mlruns/reports") / name
