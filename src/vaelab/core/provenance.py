"""What produced a number: package versions, the vaelab commit, the machine (shown in reports, kept in eval.json)."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

__version__ = "0.1.0"   # the package's version (vaelab.__version__), as in pyproject.toml


@functools.cache
def git_commit() -> str:
    """The commit of the vaelab source tree in use (with `+dirty` when it has uncommitted changes), looked up
    beside this file, so it is right whatever the working directory; "unknown" for an installed wheel."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, check=False,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", str(here)) else "")


def versions() -> dict[str, str]:
    """Versions and provenance shown in the report."""
    import numpy
    import sklearn
    import torch

    return {"vaelab": __version__, "git commit": git_commit(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": numpy.__version__, "scikit-learn": sklearn.__version__,
            "device": "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)",
            "machine": platform.machine()}
