"""gpt_fast's GPT-1 tokenizer on a tiny vocabulary of the tests' own: BPE, padding, truncation, files, bad input.

Expected ids and tokens are worked out by hand from the merges below, never taken from the code under test.
Parity with transformers on the real GPT-1 files is in test_tokenizer_parity.py.
"""

import json
import pickle
import sys

import pytest
import torch

import gpt_fast.tokenization.tokenizer
from gpt_fast.tokenization.batch_encoding import BatchEncoding
from gpt_fast.tokenization.original_pretokenizer import standardize
from gpt_fast.tokenization.tokenizer import VERY_LARGE_INTEGER, OpenAIGPTTokenizer, OpenAIGPTTokenizerFast

VOCAB = {"<unk>": 0, "a": 1, "b": 2, "c": 3, "l": 4, "o": 5, "w": 6, "e": 7, "r": 8, "c</w>": 9, "w</w>": 10,
         "e</w>": 11, "lo": 12, "low</w>": 13, "er</w>": 14, "low": 15, "lower</w>": 16, "!</w>": 17, "a</w>": 18,
         "r</w>": 19}
MERGES = [("l", "o"), ("lo", "w</w>"), ("e", "r</w>"), ("lo", "w"), ("low", "er</w>")]
LOW, LOWER, BANG, PAD = 13, 16, 17, len(VOCAB)  # a pad token added with add_special_tokens gets the next id


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps(VOCAB), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES),
                                         encoding="utf-8")
    return tmp_path


@pytest.fixture
def tok(folder):
    return OpenAIGPTTokenizerFast.from_pretrained(folder)


@pytest.fixture
def padded(tok):
    assert tok.add_special_tokens({"pad_token": "<pad>"}) == 1
    return tok


# ---------------------------------------------------------------- BPE pipeline

def test_merges_applied_in_rank_order_with_word_ends(tok):
    # lower: l o w e r</w> -> lo w e r</w> -> lo w er</w> -> low er</w> -> lower</w>
    assert tok.tokenize("lower low") == ["lower</w>", "low</w>"]
    assert tok("lower low")["input_ids"] == [LOWER, LOW]


def test_no_merge_leaves_single_characters_and_end_marks_last(tok):
    assert tok.tokenize("abc") == ["a", "b", "c</w>"]
    assert tok.encode("abc") == [1, 2, 9]


def test_unknown_pieces_become_unk_one_each(tok):
    assert tok.encode("xyz a") == [0, 0, 0, 18]
    assert tok.unk_token == "<unk>" and tok.unk_token_id == 0


def test_lowercases_strips_accents_and_splits_punctuation(tok):
    assert tok.tokenize("LoWÉR!") == ["lower</w>", "!</w>"]
    assert tok.encode("  lower\t\n!  ") == [LOWER, BANG]


def test_unk_written_in_text_is_the_special_token(tok):
    assert tok.encode("low <unk> low") == [LOW, 0, LOW]
    assert tok.encode("<UNK>") == [0, 0, 0, 0, 0]  # not special: "<" "unk" ">" pieces, none in the vocabulary


def test_decode_spaces_between_words_none_after_last(tok):
    assert tok.decode([LOWER, LOW, BANG]) == "lower low !"
    assert tok.decode(torch.tensor([1, 2, 9])) == "abc"
    assert tok.decode(LOW) == "low"


def test_decode_special_tokens(tok):
    # As transformers: the special token is written as is with no space after it; skipping drops it.
    assert tok.decode([LOW, 0, LOW]) == "low <unk>low"
    assert tok.decode([LOW, 0, LOW], skip_special_tokens=True) == "low low"
    assert tok.batch_decode(torch.tensor([[LOW, 0], [LOWER, LOW]]), skip_special_tokens=True) == ["low", "lower low"]


def test_vocabulary_accessors(padded):
    assert padded.vocab_size == len(VOCAB) and len(padded) == len(VOCAB) + 1
    assert padded.get_vocab() == {**VOCAB, "<pad>": PAD}
    assert padded.convert_tokens_to_ids(["low</w>", "zzz", "<pad>"]) == [LOW, 0, PAD]
    assert padded.convert_ids_to_tokens([LOWER, PAD, 0], skip_special_tokens=True) == ["lower</w>"]
    assert padded.convert_ids_to_tokens(LOW) == "low</w>"
    assert padded.all_special_tokens == ["<unk>", "<pad>"] and padded.all_special_ids == [0, PAD]
    assert padded.bos_token is None and padded.eos_token is None and padded.eos_token_id is None


# ---------------------------------------------------------------- padding, truncation, tensors

def test_padding_without_pad_token_raises(tok):
    with pytest.raises(ValueError, match="no pad token"):
        tok(["low", "lower low"], padding=True)


def test_add_special_tokens_existing_token_keeps_its_id(tok):
    # Counted once as added (it becomes special, as in transformers), but no new id; then it counts nothing.
    assert tok.add_special_tokens({"pad_token": "!</w>"}) == 1
    assert tok.pad_token_id == BANG and len(tok) == len(VOCAB)
    assert tok.add_special_tokens({"pad_token": "!</w>"}) == 0 and tok.add_special_tokens({"unk_token": "<unk>"}) == 0
    assert tok.decode([LOW, BANG], skip_special_tokens=True) == "low"


def test_pad_token_setter_names_without_adding(tok):
    tok.pad_token = "<pad>"  # not in the vocabulary: like transformers, its id is the unk id
    assert tok.pad_token_id == 0 and len(tok) == len(VOCAB)
    tok.pad_token_id = BANG
    assert tok.pad_token == "!</w>"


def test_padding_right_and_left_with_mask(padded):
    out = padded(["low", "lower low !"], padding=True)
    assert out.input_ids == [[LOW, PAD, PAD], [LOWER, LOW, BANG]]
    assert out.attention_mask == [[1, 0, 0], [1, 1, 1]]
    padded.padding_side = "left"
    out = padded(["low", "lower low !"], padding="longest", return_tensors="pt")
    torch.testing.assert_close(out["input_ids"], torch.tensor([[PAD, PAD, LOW], [LOWER, LOW, BANG]]))
    torch.testing.assert_close(out["attention_mask"], torch.tensor([[0, 0, 1], [1, 1, 1]]))


def test_padding_max_length_and_multiple(padded):
    assert padded("low", padding="max_length", max_length=4).input_ids == [LOW, PAD, PAD, PAD]
    assert padded(["low", "low low"], padding=True, pad_to_multiple_of=3).input_ids == [
        [LOW, PAD, PAD], [LOW, LOW, PAD]]
    # max_length padding without truncation leaves a longer row as it is (transformers does the same)
    assert padded(["low low low"], padding="max_length", max_length=2, truncation=False).input_ids == [[LOW] * 3]


def test_truncation_both_sides(padded):
    assert padded("lower low !", truncation=True, max_length=2).input_ids == [LOWER, LOW]
    assert padded("lower low !", max_length=2).input_ids == [LOWER, LOW]  # max_length alone truncates
    padded.truncation_side = "left"
    assert padded(["lower low !", "a"], truncation=True, max_length=2, padding=True).input_ids == [
        [LOW, BANG], [18, PAD]]
    assert padded("lower", max_length=0).input_ids == []


def test_truncation_uses_model_max_length(folder):
    assert OpenAIGPTTokenizerFast.from_pretrained(folder).model_max_length == VERY_LARGE_INTEGER
    assert OpenAIGPTTokenizerFast.from_pretrained(folder)("a " * 9, truncation=True).input_ids == [18] * 9
    # as in transformers, the model's n_positions does not set it; tokenizer_config.json does
    (folder / "config.json").write_text(json.dumps({"n_positions": 3}))
    assert OpenAIGPTTokenizerFast.from_pretrained(folder).model_max_length == VERY_LARGE_INTEGER
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 3}))
    tok = OpenAIGPTTokenizerFast.from_pretrained(folder)
    assert tok.model_max_length == 3
    assert tok("a " * 9, truncation=True).input_ids == [18] * 3
    assert OpenAIGPTTokenizerFast.from_pretrained(folder, model_max_length=5)("a " * 9, truncation=True).input_ids == [
        18] * 5


def test_return_tensors_shapes_and_no_mask(padded):
    single = padded("lower low", return_tensors="pt")
    assert single.input_ids.shape == (1, 2) and single.input_ids.dtype == torch.long
    assert padded("lower low").input_ids == [LOWER, LOW]
    assert padded("lower", return_tensors="np").input_ids.tolist() == [[LOWER]]
    assert "attention_mask" not in padded(["low"], return_attention_mask=False)
    empty = padded("", return_tensors="pt")
    assert empty.input_ids.shape == (1, 0)
    assert padded([], padding=True).input_ids == []
    assert padded([], return_tensors="pt").input_ids.shape == (0, 0)
    assert padded.encode("lower low", return_tensors="pt").tolist() == [[LOWER, LOW]]


def test_batch_encoding_access_and_to(padded):
    out = padded(["low", "lower low"], padding=True, return_tensors="pt")
    assert isinstance(out, BatchEncoding) and out.input_ids is out["input_ids"]
    assert out.to("cpu") is out and out.input_ids.device.type == "cpu"
    assert sorted(dict(**out)) == ["attention_mask", "input_ids"]
    with pytest.raises(AttributeError, match="no key or attribute 'token_type_ids'"):
        _ = out.token_type_ids


def test_pickle_round_trip(padded):
    tok = pickle.loads(pickle.dumps(padded))
    assert tok(["lower", "low low"], padding=True).input_ids == [[LOWER, PAD], [LOW, LOW]]
    out = pickle.loads(pickle.dumps(padded(["low"], return_tensors="pt")))
    assert out.input_ids.tolist() == [[LOW]]


def test_alias_is_same_class():
    assert OpenAIGPTTokenizer is OpenAIGPTTokenizerFast


# ---------------------------------------------------------------- files

def test_constructors_from_files_and_memory(folder):
    from_files = OpenAIGPTTokenizerFast(folder / "vocab.json", folder / "merges.txt")
    from_memory = OpenAIGPTTokenizerFast(vocab=VOCAB, merges=MERGES)
    assert from_files.encode("lower low abc") == from_memory.encode("lower low abc") == [LOWER, LOW, 1, 2, 9]


def test_model_names_go_through_the_hub_resolver(folder, monkeypatch):
    asked = []

    def fake_resolve(name, allow_patterns=None, hub_options=None):
        asked.append((name, allow_patterns))
        return folder

    monkeypatch.setattr(gpt_fast.tokenization.tokenizer, "resolve_model_folder", fake_resolve)
    tok = OpenAIGPTTokenizerFast.from_pretrained("someone/gpt1-copy")  # the published names load the packaged files
    assert tok.encode("lower") == [LOWER] and tok.name_or_path == "someone/gpt1-copy"
    assert asked[0][0] == "someone/gpt1-copy" and "tokenizer.json" in asked[0][1]


def test_missing_files_error_names_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)no GPT-1 tokenizer files in .*tokenizer\.json.*vocab\.json.*"
                                                r"merges\.txt"):
        OpenAIGPTTokenizerFast.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        OpenAIGPTTokenizerFast(tmp_path / "nope.json", tmp_path / "merges.txt")


def left_padded(folder):
    """A tokenizer given padding_side="left" when loaded (which save_pretrained keeps, as transformers does)."""
    tok = OpenAIGPTTokenizerFast.from_pretrained(folder, padding_side="left")
    assert tok.add_special_tokens({"pad_token": "<pad>"}) == 1
    return tok


def test_save_pretrained_round_trip(folder, tmp_path):
    padded = left_padded(folder)
    written = padded.save_pretrained(tmp_path / "saved")
    assert {p.rsplit("/", 1)[-1] for p in written} == {
        "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"}
    texts = ["Lower low <pad> xyz", "abc!", ""]
    expected = [[LOWER, LOW, PAD, 0, 0, 0], [PAD, PAD, 1, 2, 9, BANG], [PAD] * 6]  # "xyz": three unknown pieces
    reloaded = OpenAIGPTTokenizerFast.from_pretrained(tmp_path / "saved")
    assert reloaded(texts, padding=True).input_ids == expected
    assert reloaded.pad_token == "<pad>" and reloaded.padding_side == "left" and len(reloaded) == len(VOCAB) + 1
    # the plain vocab.json + merges.txt alone give the same base ids
    (tmp_path / "saved" / "tokenizer.json").unlink()
    assert OpenAIGPTTokenizerFast.from_pretrained(tmp_path / "saved").encode("lower low abc") == [LOWER, LOW, 1, 2, 9]


def test_saved_files_load_in_transformers(folder, tmp_path):
    transformers = pytest.importorskip("transformers")
    padded = left_padded(folder)
    padded.save_pretrained(tmp_path)
    texts = ["Lower low <pad> xyz", "abc!", ""]
    for theirs in (transformers.AutoTokenizer.from_pretrained(tmp_path),
                   transformers.OpenAIGPTTokenizer.from_pretrained(tmp_path)):
        assert theirs(texts, padding=True)["input_ids"] == [
            [LOWER, LOW, PAD, 0, 0, 0], [PAD, PAD, 1, 2, 9, BANG], [PAD] * 6]
        assert theirs.decode([LOW, PAD, LOWER]) == "low <pad>lower"


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(padding="sideways"), ValueError, "padding must be"),
    (dict(padding=1), ValueError, "padding must be"),
    (dict(truncation="yes"), ValueError, "truncation must be"),
    (dict(return_tensors="tf"), ValueError, "return_tensors must be"),
    (dict(max_length=-1), ValueError, "max_length must be None or an int >= 0"),
    (dict(max_length=2.5), ValueError, "max_length must be"),
    (dict(pad_to_multiple_of=0, padding=True), ValueError, "pad_to_multiple_of must be"),
    (dict(padding_side="top", padding=True), ValueError, "padding_side must be 'left' or 'right'"),
])
def test_bad_call_arguments(padded, kwargs, error, message):
    with pytest.raises(error, match=message):
        padded(["low"], **kwargs)


@pytest.mark.parametrize("text, message", [
    (3, "got int"), (None, "got NoneType"), (["low", 3], "item 1 is a int"), (b"low", "got bytes")])
def test_non_string_text(tok, text, message):
    with pytest.raises(TypeError, match=message):
        tok(text)


def test_encode_takes_one_string(tok):
    with pytest.raises(TypeError, match="text must be a str, got list"):
        tok.encode(["low"])


def test_options_are_keyword_only(tok):
    assert tok("low", "lower")["input_ids"] == [LOW, LOWER]  # the second positional argument is text_pair
    assert tok("low", None, "lower")["labels"] == [LOWER]  # the third text_target, the fourth its pair
    with pytest.raises(TypeError, match="got bool"):
        tok("low", "lower", True)
    with pytest.raises(TypeError, match="positional"):
        tok("low", "lower", "low", None, True)


def test_ragged_tensor_asks_for_padding(tok):
    with pytest.raises(ValueError, match="different lengths: pass padding=True"):
        tok(["low", "low low"], return_tensors="pt")


@pytest.mark.parametrize("ids, error", [([1, -2], ValueError), ([[1, 2], [3, -1]], ValueError), ("low", TypeError),
                                        ([[1, 2], "low"], TypeError)])
def test_bad_decode_input(tok, ids, error):
    with pytest.raises(error, match="token_ids must"):
        tok.decode(ids)


def test_bad_special_tokens(tok):
    with pytest.raises(ValueError, match="unknown special token name 'padding'"):
        tok.add_special_tokens({"padding": "<pad>"})
    with pytest.raises(TypeError, match="pad_token must be a str or None"):
        tok.pad_token = 5
    with pytest.raises(ValueError, match="pad_token_id=999 is not an id"):
        tok.pad_token_id = 999
    with pytest.raises(ValueError, match="padding_side must be"):
        tok.padding_side = "middle"


# ---------------------------------------------------------------- original GPT-1 pre-tokenisation

@pytest.mark.parametrize("text, expected", [
    ("a\u2014b\u2013c\u2015d", "a - b - c - d"),
    ("wait\u2026 it\u00b4s", "wait... it's"),
    ("hi!!! (yes)", "hi !!! ( yes )"),
    ("a~~b--c", "a ~~ b -- c"),
    ("  one \t two\n\n three  ", "one two \n three"),
    ("x/y\\z*[1]{2}|_", "x / y \\ z * [ 1 ] { 2 } | _"),
    ("ok.", "ok."),
])
def test_standardize(text, expected):
    assert standardize(text) == expected


def test_original_mode_needs_ftfy_and_spacy(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # makes `import spacy` fail
    with pytest.raises(ImportError, match="pip install ftfy spacy"):
        OpenAIGPTTokenizerFast.from_pretrained(folder, use_original_pretokenization=True)


def test_original_mode_splits_with_spacy_and_keeps_flag(folder, tmp_path):
    pytest.importorskip("ftfy")
    pytest.importorskip("spacy")
    tok = OpenAIGPTTokenizerFast.from_pretrained(folder, use_original_pretokenization=True)
    # "LOWER—low" -> standardised "LOWER - low"; "-" is not in the tiny vocabulary
    assert tok.tokenize("LOWER—low!!") == ["lower</w>", "<unk>", "low</w>", "!</w>", "!</w>"]
    assert tok.encode("LOWER—low") == [LOWER, 0, LOW]
    tok.save_pretrained(tmp_path / "saved")
    assert OpenAIGPTTokenizerFast.from_pretrained(tmp_path / "saved").use_original_pretokenization
