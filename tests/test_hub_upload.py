"""push_to_hub and save_pretrained(push_to_hub=True) of the model, config and tokenizer
(gpt_fast/checkpoints/hub_upload.py) against a stand-in for huggingface_hub's HfApi that keeps each commit's files
in a local "repository" folder: what arrives there loads back with gpt_fast and gives the same logits and ids. The
network side cannot be exercised here."""

from __future__ import annotations

import shutil
import sys
from fnmatch import fnmatch
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel, OpenAIGPTTokenizerFast


class FakeHub:
    """Records the calls HfApi would get; upload_folder copies the allowed files into repos/<repo_id>/<revision>."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def api(self, token=None):
        hub = self

        class Api:
            def create_repo(self, repo_id, private=None, exist_ok=False):
                hub.calls.append(("create_repo", repo_id, {"private": private, "exist_ok": exist_ok, "token": token}))
                return SimpleNamespace(repo_id=repo_id)

            def create_branch(self, repo_id, branch, exist_ok=False):
                hub.calls.append(("create_branch", repo_id, {"branch": branch}))

            def upload_folder(self, repo_id, folder_path, allow_patterns=None, revision=None, **kwargs):
                target = hub.root / repo_id / (revision or "main")
                files = [p for p in Path(folder_path).rglob("*") if p.is_file()]
                for path in files:
                    name = path.relative_to(folder_path).as_posix()
                    if allow_patterns is None or any(fnmatch(name, pattern) for pattern in allow_patterns):
                        (target / name).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(path, target / name)
                hub.calls.append(("upload_folder", repo_id, {"revision": revision, **kwargs}))
                return f"commit to {repo_id}"

        return Api()

    def repo(self, repo_id: str, revision: str = "main") -> Path:
        return self.root / repo_id / revision


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeHub(tmp_path / "repos")
    monkeypatch.setattr(huggingface_hub, "HfApi", fake.api)
    return fake


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = OpenAIGPTConfig(vocab_size=60, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    return OpenAIGPTLMHeadModel(config).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_model_push_to_hub_loads_back_with_its_tags_in_the_card(hub, model):
    model.add_model_tags(["trl", "sft"])
    try:
        result = model.push_to_hub("me/tiny", commit_message="first", private=True, token="secret", tags="mine")
    finally:
        model.model_tags = None
    assert result == "commit to me/tiny"
    folder = hub.repo("me/tiny")
    assert {p.name for p in folder.iterdir()} == {"config.json", "generation_config.json", "model.safetensors",
                                                  "README.md"}
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and all(f"- {tag}\n" in card for tag in ("trl", "sft", "mine"))
    ids = torch.randint(0, 60, (2, 7))
    torch.testing.assert_close(logits(OpenAIGPTLMHeadModel.from_pretrained(folder), ids), logits(model, ids),
                               rtol=0, atol=0)
    (create, _, options), (upload, _, commit) = hub.calls
    assert create == "create_repo" and options == {"private": True, "exist_ok": True, "token": "secret"}
    assert upload == "upload_folder" and commit["commit_message"] == "first" and commit["create_pr"] is False


def test_push_to_hub_to_a_revision_creates_the_branch_and_shards(hub, model):
    model.push_to_hub("me/tiny", revision="dev", max_shard_size="10KB")
    assert ("create_branch", "me/tiny", {"branch": "dev"}) in hub.calls
    folder = hub.repo("me/tiny", "dev")
    assert (folder / "model.safetensors.index.json").exists() and not (folder / "README.md").exists()
    ids = torch.randint(0, 60, (1, 5))
    torch.testing.assert_close(logits(OpenAIGPTLMHeadModel.from_pretrained(folder), ids), logits(model, ids),
                               rtol=0, atol=0)


def test_save_pretrained_push_to_hub_commits_only_what_it_wrote(hub, model, tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("a file the save did not write")
    model.save_pretrained(folder, push_to_hub=True, commit_message="save")
    repo = hub.repo("my-model")  # the folder's name, as transformers defaults it
    assert {p.name for p in repo.iterdir()} == {"config.json", "generation_config.json", "model.safetensors"}
    assert hub.calls[-1][2]["commit_message"] == "save"
    model.config.save_pretrained(tmp_path / "config-only", push_to_hub=True, repo_id="me/config")
    assert OpenAIGPTConfig.from_pretrained(hub.repo("me/config")).to_dict() == model.config.to_dict()
    assert hub.calls[-1][2]["commit_message"] == "Upload config"


def test_tokenizer_push_to_hub(hub, tmp_path):
    tokenizer = OpenAIGPTTokenizerFast.from_pretrained("openai-gpt")
    tokenizer.push_to_hub("me/tok")
    assert hub.calls[-1][2]["commit_message"] == "Upload tokenizer"
    text = "Hello there, general Kenobi!"
    assert OpenAIGPTTokenizerFast.from_pretrained(hub.repo("me/tok"))(text)["input_ids"] == tokenizer(text)["input_ids"]
    tokenizer.save_pretrained(tmp_path / "tok", push_to_hub=True, repo_id="me/tok2", legacy_format=False)
    assert {p.name for p in hub.repo("me/tok2").iterdir()} == {p.name for p in (tmp_path / "tok").iterdir()}


def test_without_huggingface_hub_it_is_a_clear_error(model, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub now raises ImportError
    with pytest.raises(ImportError, match=r"gpt_fast\[hub\]"):
        model.push_to_hub("me/tiny")
    with pytest.raises(ImportError, match=r"gpt_fast\[hub\]"):
        model.save_pretrained(tmp_path / "m", push_to_hub=True)
    assert not (tmp_path / "m").exists()  # refused before writing
    with pytest.raises(ValueError, match="repository id"):
        monkeypatch.undo()
        model.config.push_to_hub("")
