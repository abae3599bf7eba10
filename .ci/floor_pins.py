"""Print `name==floor` for each package named, from its `>=` bound in pyproject.toml's dependencies
(`make test-floor` installs these)."""

import re
import sys
import tomllib
from pathlib import Path

dependencies = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
for name in sys.argv[1:]:
    floor = next(re.search(r">=\s*([\w.]+)", d).group(1) for d in dependencies if re.match(rf"{name}\s*[<>=]", d))
    print(f"{name}=={floor}")
