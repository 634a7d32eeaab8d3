"""Run one command and write its peak resident memory and CPU time to a JSON file.

    python -m megatron_tibetan.run_measured USAGE.json COMMAND [ARG ...]

Why a process of its own: Linux counts in a child's peak RSS (``ru_maxrss``) the memory its parent had when
it forked it, so a command started directly by a large process (a test session holding models, say) reports
that process's size. Started from this small interpreter, the command's figure is its own (and that of the
largest descendant it waited for, such as ``torchrun``'s workers). The exit status is the command's, and
SIGTERM and SIGINT are passed on to it. Imports nothing from the project, so it stays small.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m megatron_tibetan.run_measured USAGE.json COMMAND [ARG ...]", file=sys.stderr)
        return 2
    usage_path, command = argv[0], argv[1:]
    child = subprocess.Popen(command)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda received, _frame: child.send_signal(received))
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = code = os.waitstatus_to_exitcode(status)
    with open(usage_path, "w") as f:
        json.dump({"peak_rss_mib": round(usage.ru_maxrss / 1024), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3)}, f)
    if code < 0:  # killed by a signal: end the same way, so the caller sees it
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
