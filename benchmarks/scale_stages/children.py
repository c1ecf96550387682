"""
Work measured in a child process: its output and its peak resident memory (`ru_maxrss` from `wait4`, in GiB).

A fresh interpreter measures the work alone, start-up included; a child forked from a process that has already
imported torch and transformers starts at once, and its peak includes the memory it inherits (the imported libraries,
some 0.4 GiB). The full-size runs use fresh interpreters; `--quick` forks. Fork only from a process that has run no
torch operation: a child forked after OpenMP threads started may hang in its first parallel operation.
"""

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

SOURCES = Path(__file__).resolve().parents[2] / "src"


def in_interpreter(command: list[str]) -> tuple[str, float]:
    """Runs `command` with the repository's sources importable; its stdout and peak RSS in GiB."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=os.environ | {"PYTHONPATH": str(SOURCES)})
    _, status, usage = os.wait4(process.pid, 0)
    output = process.stdout.read().decode()
    process.stdout.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(map(str, command[1:4]))} ... failed:\n{output}")
    return output, usage.ru_maxrss / 2**20  # KiB on Linux


def in_fork(function, *arguments) -> tuple[object, float]:
    """`function(*arguments)` in a forked child; its result (anything JSON holds) and peak RSS in GiB."""
    sys.stdout.flush()  # or the child would print what this process has buffered once more
    sys.stderr.flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code = 1
        try:  # the child never returns into the caller's code
            try:
                reply, code = json.dumps({"result": function(*arguments)}), 0
            except BaseException:  # the parent reports it, a command line's SystemExit included
                reply = json.dumps({"error": traceback.format_exc()})
            with os.fdopen(write, "w") as pipe:
                pipe.write(reply)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        reply = pipe.read()
    _, status, usage = os.wait4(pid, 0)
    reply = json.loads(reply) if reply else {"error": f"the child ended with status {status} before replying"}
    if "error" in reply:
        raise SystemExit(f"{getattr(function, '__name__', function)} failed in a forked child:\n{reply['error']}")
    return reply["result"], usage.ru_maxrss / 2**20
