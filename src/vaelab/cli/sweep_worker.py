"""One sweep run's steps in one process: `python -m vaelab.cli.sweep_worker '[["train", ...], ["evaluate", ...]]'`.

sweep_run starts this once per run (so a crash still ends one run only) instead of one `python -m vaelab` process
per step: torch and the data load once, not once for training and again for evaluation. Each step is
`vaelab.cli.main.main(STEP)` in this process's main thread (so `vaelab train` still checkpoints on SIGTERM), preceded
by the log's header line `# DATE TIME vaelab STEP...` on stdout, which sweep_run reads to name the step that
failed. The first step that does not succeed ends the process with its exit code; later steps do not run.
"""

from __future__ import annotations

import gc
import json
import sys
import time

from vaelab.cli.main import main
from vaelab.core.errors import VaelabError

HEADER = "# {time} vaelab {args}"        # sweep_run.STEP_HEADER reads these lines back


def parse_steps(text: str) -> list[list[str]]:
    """The JSON list of argument lists, checked (VaelabError if it is not one)."""
    try:
        steps = json.loads(text)
    except json.JSONDecodeError as err:
        raise VaelabError(f"sweep_worker: STEPS is not JSON ({err}): give a list of argument lists") from None
    if not (isinstance(steps, list) and steps and all(
            isinstance(s, list) and s and all(isinstance(a, str) for a in s) for s in steps)):
        raise VaelabError('sweep_worker: STEPS must be a non-empty JSON list of argument lists, e.g. '
                          '[["train", "CONFIG", "--out", "RUN"]]')
    return steps


def run_steps(steps: list[list[str]]) -> int:
    """Run each step as `vaelab STEP`, in order, each after its header line; the first non-zero exit code ends it."""
    for step in steps:
        print(HEADER.format(time=time.strftime("%Y-%m-%d %H:%M:%S"), args=" ".join(step)), flush=True)
        try:
            code = main(step)
        except SystemExit as exit:      # argparse refused the step's arguments
            code = exit.code if isinstance(exit.code, int) else 2
        sys.stdout.flush()
        sys.stderr.flush()
        if code:
            return code
        gc.collect()                    # the step's model and data go before the next step loads its own
    return 0


def worker_main(argv: list[str] | None = None) -> int:
    """The process's entry: one argument, the JSON steps."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if len(argv) != 1:
            raise VaelabError("sweep_worker takes one argument, the JSON list of steps: "
                              'python -m vaelab.cli.sweep_worker \'[["train", "CONFIG", "--out", "RUN"]]\'')
        steps = parse_steps(argv[0])
    except VaelabError as err:
        print(f"vaelab: error: {err}", file=sys.stderr)
        return 2
    return run_steps(steps)


if __name__ == "__main__":
    sys.exit(worker_main())
