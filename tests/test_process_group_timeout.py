"""training_helpers.run_process_group: on timeout it kills the launcher and the workers the launcher started in
sessions of their own (as torchrun does), so a deadlocked multi-process test fails at its timeout, never hangs."""

import os
import subprocess
import sys
import time

import pytest
from training_helpers import run_process_group

LAUNCHER = """
import subprocess, sys
workers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
           for _ in range(2)]
print(" ".join(str(w.pid) for w in workers), file=open(sys.argv[1], "w"))
for w in workers:
    w.wait()
"""


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead, awaiting its (killed) parent's wait


def test_timeout_kills_workers_in_their_own_sessions(tmp_path):
    pids_file = tmp_path / "pids"
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_process_group([sys.executable, "-c", LAUNCHER, str(pids_file)], timeout=5)
    assert time.monotonic() - started < 60  # returned at the timeout, not when the workers end (600 s)
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 2 and all(pid != os.getpid() for pid in pids)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)
