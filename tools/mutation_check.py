"""Apply one deliberate bug (a mutant from tools/mutants.json) to a scratch copy of this repo, run tests there.

    python tools/mutation_check.py MUTANT tests/test_round.py tests/test_exact_law.py ...

The copy lives in a temporary folder (this checkout is never modified); the summary lists the failing tests,
and the full pytest log is written next to the copy. A mutant that no test catches exits 1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    mutants = json.loads((REPO / "tools" / "mutants.json").read_text())
    if not argv or argv[0] not in mutants:
        print(f"usage: mutation_check.py MUTANT TEST... ; mutants: {', '.join(mutants)}", file=sys.stderr)
        return 2
    name, tests = argv[0], argv[1:]
    scratch = Path(tempfile.mkdtemp(prefix=f"mutant_{name}_")) / "repo"
    shutil.copytree(REPO, scratch, symlinks=True,
                    ignore=shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", ".pytest_cache"))
    for edit in mutants[name]["edits"]:
        path = scratch / edit["file"]
        text = path.read_text()
        if text.count(edit["old"]) != 1:
            print(f"{name}: the code to mutate is not found once in {edit['file']}; update tools/mutants.json", file=sys.stderr)
            return 2
        path.write_text(text.replace(edit["old"], edit["new"]))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=scratch,
                         capture_output=True, text=True)
    log = scratch.parent / "pytest.log"
    log.write_text(run.stdout + run.stderr)
    failed = [line for line in run.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    print(f"{name}: {mutants[name]['bug']}")
    print("\n".join(failed) if failed else "NOT CAUGHT: every test passed")
    print(f"log: {log}")
    return 0 if failed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
