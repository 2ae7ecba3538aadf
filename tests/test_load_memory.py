"""from_pretrained reads a GPT-1-sized checkpoint without a second copy of the model in memory.

A fresh subprocess imports torch and gpt_fast, loads a tiny checkpoint once (warming up code paths), resets its
peak-RSS counter (or records it when the kernel does not allow a reset), loads the ~470 MB fp32 checkpoint in fp32
or bf16, and reports the peak. The growth must stay within
1.3x the bytes of the loaded model: a loader that materialised an fp32 copy before converting, or kept the file
contents around, would exceed it.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import hf_model

ALLOWED_RATIO = 1.3

PROBE = textwrap.dedent("""
    import json, sys
    import torch
    import gpt_fast
    from gpt_fast.cli.machine import reset_peak_rss, status_bytes as status

    torch.set_num_threads(1)
    # Warm-up on a tiny checkpoint: the first use of meta tensors and of the loader loads code (~150 MB of
    # libraries and modules, once per process) that must not count as the cost of loading weights.
    gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(sys.argv[3], dtype=getattr(torch, sys.argv[2]))
    try:
        reset_peak_rss()
        baseline = status("VmRSS")
    except OSError:
        baseline = status("VmHWM")
    model = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(sys.argv[1], dtype=getattr(torch, sys.argv[2]))
    peak = status("VmHWM")
    tensors = {t.data_ptr(): t for t in list(model.parameters()) + list(model.buffers())}.values()
    model_bytes = sum(t.numel() * t.element_size() for t in tensors)
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    print(json.dumps(dict(baseline=baseline, peak=peak, model_bytes=model_bytes, dtypes=dtypes)))
""")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_peak_memory_of_from_pretrained(gpt1_folder, dtype, tmp_path):
    hf_model("OpenAIGPTLMHeadModel").save_pretrained(tmp_path)  # the warm-up checkpoint
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", PROBE, str(gpt1_folder), dtype, str(tmp_path)], cwd=repo,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["dtypes"] == [f"torch.{dtype}"]
    params = 40478 * 768 + 512 * 768 + 12 * (768 * 2304 + 2304 + 768 * 768 + 768 + 4 * 768
                                             + 768 * 3072 + 3072 + 3072 * 768 + 768)
    element = 4 if dtype == "float32" else 2
    assert report["model_bytes"] >= params * element  # the model really is GPT-1 sized (plus position ids)
    growth = report["peak"] - report["baseline"]
    print(f"{dtype}: peak growth {growth / 2**20:.0f} MiB, model {report['model_bytes'] / 2**20:.0f} MiB")
    assert growth <= ALLOWED_RATIO * report["model_bytes"], (
        f"loading grew the peak RSS by {growth / 2**20:.0f} MiB for a model of "
        f"{report['model_bytes'] / 2**20:.0f} MiB (allowed {ALLOWED_RATIO}x)")
