"""torchrun + DistributedDataParallel on CPU (gloo): `torchrun --nproc_per_node=2 -m gpt_fast.train ...` gives the
loss curve of one process with the same global batch, and its checkpoint resumes in one process.

Tolerance: relative 1e-5 on the per-step losses (the two runs sum the same gradients in another order)."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from training_helpers import TINY_MODEL, tiny_config, write_bin

from gpt_fast.training import read_metrics, train

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5


def run_process_group(command, timeout, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run whose timeout kills torchrun's workers too (they would outlive their launcher otherwise)."""
    with subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          **kwargs) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_and_resume_in_one(tmp_path):
    data = write_bin(tmp_path / "data.bin")
    (tmp_path / "config.json").write_text(json.dumps(TINY_MODEL))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "gpt_fast.train", str(data), "--out", str(tmp_path / "ddp"), "--config",
               str(tmp_path / "config.json"), "--seq-len", "8", "--batch-size", "2", "--grad-accum", "2",
               "--max-steps", "6", "--lr", "1e-2", "--warmup-steps", "2", "--save-every", "3",
               "--attn-implementation", "sdpa", "--no-progress"]
    done = run_process_group(command, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "ddp/metrics.jsonl") if "loss" in r}
    assert (tmp_path / "ddp/checkpoints/step-0000003/rng_state_1.pt").is_file()  # each process's generators

    single = train(tiny_config(data, tmp_path / "single", batch_size=4, grad_accum=2)).losses
    assert list(ddp) == list(single) == [1, 2, 3, 4, 5, 6]
    assert list(ddp.values()) == pytest.approx(list(single.values()), rel=TOLERANCE)

    resumed = train(tiny_config(data, tmp_path / "ddp", batch_size=4, grad_accum=2,
                                resume=str(tmp_path / "ddp/checkpoints/step-0000003"))).losses
    assert list(resumed) == [4, 5, 6]
    assert list(resumed.values()) == pytest.approx([ddp[s] for s in (4, 5, 6)], rel=TOLERANCE)
