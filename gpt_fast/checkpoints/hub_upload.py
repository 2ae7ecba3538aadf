"""Uploading to the Hugging Face Hub: `push_to_hub(repo_id)` of models, configs and tokenizers and their
`save_pretrained(..., push_to_hub=True)`, as transformers names and behaves them, through huggingface_hub
(`pip install gpt_fast[hub]`).

Kept thin: the files are what save_pretrained writes (a temporary folder for push_to_hub; the files that
save_pretrained(push_to_hub=True) wrote or changed in its folder), and huggingface_hub's HfApi creates the
repository (exist_ok), the branch for `revision`, and the commit. Only the local side can be tested here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

HUB_EXTRA = "`pip install gpt_fast[hub]` (or `pip install huggingface_hub`)"
# save_pretrained(push_to_hub=True)'s own keywords, as transformers names them
HUB_ARGUMENTS = ("repo_id", "commit_message", "commit_description", "private", "token", "revision", "create_pr")


class PushToHubMixin:
    """push_to_hub(repo_id, ...) for a class with save_pretrained(folder, **save_kwargs); hub_kind names the default
    commit message ("Upload model"); a model's model_tags go into the model card."""

    hub_kind = "model"

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, commit_description: str | None = None,
                    private: bool | None = None, token: bool | str | None = None, revision: str | None = None,
                    create_pr: bool = False, tags: list[str] | str | None = None, **save_kwargs):
        """transformers' push_to_hub: save_pretrained(folder, **save_kwargs) (a model's max_shard_size, variant)
        into a temporary folder, committed to repo_id (created if missing); returns the CommitInfo."""
        tags = [*(getattr(self, "model_tags", None) or []), *([tags] if isinstance(tags, str) else tags or [])]
        return push_to_hub(lambda folder: self.save_pretrained(folder, **save_kwargs), repo_id, self.hub_kind,
                           commit_message=commit_message, commit_description=commit_description, private=private,
                           token=token, revision=revision, create_pr=create_pr, tags=tags)


def push_to_hub(save, repo_id: str, kind: str, *, commit_message: str | None = None,
                commit_description: str | None = None, private: bool | None = None, token: bool | str | None = None,
                revision: str | None = None, create_pr: bool = False, tags: list[str] | None = None):
    """save(folder) writes the files; they are committed to repo_id. kind ("model", "config", "tokenizer") names the
    default commit message. tags: a model card (README.md) carrying them is written when save wrote none. Returns
    huggingface_hub's CommitInfo."""
    api = _api(token)
    _check_repo_id(repo_id)
    with tempfile.TemporaryDirectory() as folder:
        save(folder)
        if tags:
            write_model_card(Path(folder), tags)
        return upload(api, folder, repo_id, None, kind, commit_message, commit_description, private, revision,
                      create_pr)


def save_then_push(save, folder, push: bool, kind: str, hub_kwargs: dict):
    """save_pretrained's end: save() writes into folder; with push (push_to_hub=True) the files it wrote or changed
    are committed, as transformers does: to hub_kwargs' repo_id (default the folder's name) with its
    commit_message, commit_description, private, token, revision, create_pr. Returns save()'s result."""
    unknown = sorted(set(hub_kwargs) - set(HUB_ARGUMENTS))
    if unknown or (hub_kwargs and not push):
        raise TypeError(f"save_pretrained got unexpected arguments {unknown or sorted(hub_kwargs)}"
                        + ("" if unknown else " (they are for push_to_hub=True)"))
    if not push:
        return save()
    folder, get = Path(folder), hub_kwargs.get
    api, repo_id = _api(get("token")), get("repo_id") or folder.resolve().name  # errors before anything is written
    _check_repo_id(repo_id)
    before = file_times(folder)
    result = save()
    changed = [name for name, mtime in file_times(folder).items() if name not in before or mtime > before[name]]
    upload(api, folder, repo_id, changed, kind, get("commit_message"), get("commit_description"), get("private"),
           get("revision"), get("create_pr", False))
    return result


def file_times(folder) -> dict[str, float]:
    """{path relative to folder (posix): modification time} of the files under folder (empty if it is absent)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {path.relative_to(folder).as_posix(): path.stat().st_mtime for path in folder.rglob("*") if path.is_file()}


def write_model_card(folder: Path, tags: list[str]) -> None:
    card = folder / "README.md"
    if not card.exists():
        lines = "".join(f"- {tag}\n" for tag in dict.fromkeys(tags))
        card.write_text(f"---\nlibrary_name: transformers\ntags:\n{lines}---\n")


def _api(token):
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ImportError(f"push_to_hub needs huggingface_hub: {HUB_EXTRA}") from None
    return HfApi(token=token)


def _check_repo_id(repo_id) -> None:
    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"push_to_hub needs a repository id such as 'user/name', got {repo_id!r}")


def upload(api, folder, repo_id: str, only: list[str] | None, kind: str, commit_message, commit_description, private,
           revision, create_pr: bool):
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=os.fspath(folder), allow_patterns=only,
                             commit_message=commit_message or f"Upload {kind}", commit_description=commit_description,
                             revision=revision, create_pr=create_pr)
