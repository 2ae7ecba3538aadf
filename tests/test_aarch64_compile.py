"""The CPU sources compile for aarch64 (and for x86-64 with GPT_FAST_PORTABLE_ONLY): runs .ci/aarch64-compile.

Needs Debian's cross compiler (apt-get install g++-aarch64-linux-gnu); skips without it. Runs the script's front-end
mode (MODE=syntax: parsing and template instantiation, no code generation) to stay near a minute; .ci runs the
full compile.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "aarch64-compile"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="no aarch64 cross compiler (apt-get install g++-aarch64-linux-gnu)")
@pytest.mark.skipif(sys.platform != "linux", reason="the check script is for Linux")
def test_sources_compile_for_aarch64_and_portable_only():
    env = dict(os.environ, PYTHON=sys.executable, MODE="syntax")
    result = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    assert "all sources compile" in result.stdout
