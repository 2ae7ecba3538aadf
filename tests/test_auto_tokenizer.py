"""gpt_fast.AutoTokenizer resolves a GPT-1 folder to OpenAIGPTTokenizerFast, and refuses other model types."""

import json
import shutil
from pathlib import Path

import pytest

import gpt_fast

SHARED = Path(__file__).resolve().parents[2] / "shared" / "openai-gpt"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/openai-gpt is absent")


def test_resolves_openai_gpt_folder_with_transformers_ids():
    transformers = pytest.importorskip("transformers")
    tokenizer = gpt_fast.AutoTokenizer.from_pretrained(SHARED)
    assert isinstance(tokenizer, gpt_fast.OpenAIGPTTokenizerFast)
    text = "The quick brown fox, 1984!"
    assert tokenizer(text)["input_ids"] == transformers.AutoTokenizer.from_pretrained(SHARED)(text)["input_ids"]


def test_other_model_type_is_a_clear_error(tmp_path):
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(SHARED / name, tmp_path / name)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="'gpt2' model; gpt_fast supports only 'openai-gpt'"):
        gpt_fast.AutoTokenizer.from_pretrained(tmp_path)
