"""Print a short hash of what the virtual environment is built from: constraints.txt, pyproject's dependency
lists (not the whole pyproject, so a lint or pytest setting does not trigger a 6 GB rebuild) and the installer."""

import hashlib
import json
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
pyproject = (root / "pyproject.toml").read_text()
try:
    import tomllib

    project = tomllib.loads(pyproject)["project"]
    deps = json.dumps([project.get("dependencies"), project.get("optional-dependencies")], sort_keys=True)
except ModuleNotFoundError:  # Python 3.10 has no tomllib: fall back to the whole file
    deps = pyproject
# The installer script is part of what the venv is built from: a change in how it installs (e.g. byte-code
# compilation) rebuilds the venv instead of leaving one built the old way.
installer = (root / "scripts" / "setup_env.sh").read_text()
digest = hashlib.sha256(
    ((root / "constraints.txt").read_text() + deps + installer + sys.version).encode()
).hexdigest()
print(digest[:16])
