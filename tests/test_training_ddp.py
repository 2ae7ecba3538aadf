"""torchrun + DistributedDataParallel on CPU (gloo): `torchrun --nproc_per_node=2 -m gpt_fast.train ...` gives the
loss curve of one process with the same global batch, and its checkpoint resumes in one process.

Tolerance: relative 1e-5 on the per-step losses (the two runs sum the same gradients in another order)."""

import json

import pytest
from training_helpers import TINY_MODEL, tiny_config, torchrun_train, write_bin

from gpt_fast.training import read_metrics, train

TOLERANCE = 1e-5


@pytest.mark.slow
def test_two_processes_match_one_and_resume_in_one(tmp_path):
    data = write_bin(tmp_path / "data.bin")
    (tmp_path / "config.json").write_text(json.dumps(TINY_MODEL))
    done = torchrun_train(data, tmp_path / "config.json", tmp_path / "ddp", "--save-every", "3")
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
