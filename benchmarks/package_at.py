"""Another commit's tlbench package, for the benchmarks' `--against COMMIT`: imported from the
returned folder (put first on sys.path), with its conf/ where an installed package has it and
its Hydra sweeper plugin (hydra_plugins/) beside it."""

from __future__ import annotations

import subprocess
from pathlib import Path


def package_at(commit: str, folder: Path) -> Path:
    """`folder`, now holding tlbench/ (with tlbench/conf/) and hydra_plugins/ as they were at
    `commit`."""
    repo = Path(__file__).resolve().parents[1]
    folder.mkdir()
    archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "tlbench", "conf",
                              "hydra_plugins"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    (folder / "conf").rename(folder / "tlbench" / "conf")
    return folder
