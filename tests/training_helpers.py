"""What the training tests share: a tiny model config, a .bin corpus with structure to learn, a config maker, and
torchrun launched so that a timeout kills its workers too."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from gpt_fast.training import TrainingConfig

ROOT = Path(__file__).resolve().parents[1]

TINY_MODEL = dict(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, initializer_range=0.1,
                  resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0)  # no dropout unless a test asks


def write_bin(path, tokens: int = 600, seed: int = 0):
    """uint16 ids: a repeating pattern with some noise, so the loss falls within a few steps."""
    rng = np.random.default_rng(seed)
    ids = (np.arange(tokens) * 7 % 50).astype(np.uint16)
    noise = rng.random(tokens) < 0.2
    ids[noise] = rng.integers(0, 50, noise.sum())
    ids.tofile(path)
    return path


def tiny_config(data, out, **overrides) -> TrainingConfig:
    settings = dict(train_data=[str(data)], output_dir=str(out), model_config=dict(TINY_MODEL), seq_len=8,
                    batch_size=4, max_steps=6, learning_rate=1e-2, warmup_steps=2, progress=False,
                    attn_implementation="sdpa")
    return TrainingConfig(**{**settings, **overrides})


def run_process_group(command, timeout, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run whose timeout kills torchrun's workers too. The launcher runs in a session of its own, but
    torchrun starts each worker in yet another session (start_new_session in torch.distributed.elastic), so killing
    the launcher's group alone leaves them running and holding the output pipes: its descendants are listed first
    (from /proc, while they are still its children), then the group and they are killed."""
    with subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          **kwargs) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            left = _descendants(process.pid)
            os.killpg(process.pid, signal.SIGKILL)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_train(data, config_json, out, *extra, processes: int = 2, timeout: int = 300):
    """`torchrun --nproc_per_node=processes -m gpt_fast.train` with tiny_config's settings (2 rows per process, 2
    micro-batches: a global batch of 4 x 2 rows), one thread per process; extra arguments appended. Returns the
    finished process (the caller checks its return code)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
               f"--master_port={free_port()}", "-m", "gpt_fast.train", str(data), "--out", str(out), "--config",
               str(config_json), "--seq-len", "8", "--batch-size", str(4 // processes), "--grad-accum", "2",
               "--max-steps", "6", "--lr", "1e-2", "--warmup-steps", "2", "--attn-implementation", "sdpa",
               "--no-progress", *extra]
    return run_process_group(command, timeout=timeout, cwd=Path(out).parent, env=env)
