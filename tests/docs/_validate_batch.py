"""Run several `automodel validate ...` command lines in this one process, so their imports are
paid once; read them as JSON on stdin, print their exit codes and output as JSON."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

from automodel.cli import main


def run(jobs: list[dict]) -> list[dict]:
    """Each job's `args` through the CLI's `main`, with its `env` set meanwhile."""
    outcomes = []
    for job in jobs:
        saved = dict(os.environ)
        os.environ.update(job["env"])
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(job["args"])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        os.environ.clear()
        os.environ.update(saved)
        outcomes.append({"code": code, "output": out.getvalue() + err.getvalue()})
    return outcomes


if __name__ == "__main__":
    json.dump(run(json.load(sys.stdin)), sys.stdout)
