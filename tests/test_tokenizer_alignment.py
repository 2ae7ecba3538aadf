"""The tokenizer's alignment features against transformers' OpenAIGPTTokenizerFast on the same packaged GPT-1 files:
return_offsets_mapping, return_overflowing_tokens with stride (overflow_to_sample_mapping), is_split_into_words,
text_target / text_pair_target, BatchEncoding's char / word / token mappings (what question-answering and
token-classification preprocessing use), and their bad inputs."""

import pytest
import torch
from test_tokenizer_surface import assert_same

from gpt_fast.tokenization.tokenizer import OpenAIGPTTokenizerFast
from gpt_fast.tokenization.tokenizer_files import PACKAGED_FOLDER

transformers = pytest.importorskip("transformers")
TEXTS = ["Hello world, this is fine!", "a", "Don't stop-me now: 3.14 naïve café <unk> x"]
QUESTIONS = ["who is fine?", "what?", "where now, and why not here?"]
WORDS = [["Hello", "world,", "naïve"], ["a"], ["stop-me", "3.14", "<unk>", "ok!"]]


@pytest.fixture(scope="module")
def pair():
    ours = OpenAIGPTTokenizerFast.from_pretrained(PACKAGED_FOLDER)
    theirs = transformers.OpenAIGPTTokenizerFast.from_pretrained(str(PACKAGED_FOLDER))
    ours.pad_token = theirs.pad_token = "<unk>"
    return ours, theirs


CALLS = [
    (dict(text=TEXTS[2]), dict(return_offsets_mapping=True)),
    (dict(text=TEXTS), dict(return_offsets_mapping=True, padding=True, return_tensors="pt")),
    (dict(text=TEXTS, text_pair=QUESTIONS), dict(return_offsets_mapping=True, padding="max_length", max_length=32,
                                                 padding_side="left", return_tensors="np")),
    (dict(text=TEXTS[2]), dict(max_length=5, truncation=True, stride=2, return_overflowing_tokens=True)),
    (dict(text=TEXTS), dict(max_length=4, truncation=True, stride=1, return_overflowing_tokens=True, padding=True,
                            return_offsets_mapping=True, return_tensors="pt")),
    (dict(text=QUESTIONS, text_pair=TEXTS), dict(max_length=12, truncation="only_second", stride=3,
                                                 return_overflowing_tokens=True, return_offsets_mapping=True,
                                                 padding="max_length", return_token_type_ids=True)),
    (dict(text=TEXTS[0]), dict(max_length=3, truncation=True, return_overflowing_tokens=True)),
    (dict(text=WORDS[0]), dict(is_split_into_words=True, return_offsets_mapping=True)),
    (dict(text=WORDS), dict(is_split_into_words=True, padding=True, return_tensors="pt")),
    (dict(text=WORDS, text_pair=WORDS[::-1]), dict(is_split_into_words=True, truncation=True, max_length=6)),
    (dict(text=TEXTS, text_target=QUESTIONS), dict(padding=True)),
    (dict(text=TEXTS[0], text_pair="a pair", text_target=QUESTIONS[0], text_pair_target="its pair"), dict()),
    (dict(text_target=QUESTIONS), dict(padding=True, return_tensors="pt")),
]


@pytest.mark.parametrize("texts, options", CALLS, ids=range(len(CALLS)))
def test_features_match_transformers(pair, texts, options):
    ours, theirs = pair
    assert_same(ours(**texts, **options), theirs(**texts, **options))


@pytest.mark.parametrize("texts, options", [
    (dict(text=TEXTS), dict()),
    (dict(text=TEXTS, text_pair=QUESTIONS), dict()),
    (dict(text=WORDS), dict(is_split_into_words=True)),
    (dict(text=TEXTS), dict(max_length=4, truncation=True, stride=1, return_overflowing_tokens=True)),
], ids=["texts", "pairs", "words", "overflow"])
def test_mappings_match_transformers(pair, texts, options):
    ours, theirs = pair
    mine, expected = ours(**texts, **options), theirs(**texts, **options)
    for row in range(len(expected["input_ids"])):
        tokens = len(expected["input_ids"][row])
        for t in range(tokens):
            assert mine.token_to_chars(row, t) == expected.token_to_chars(row, t)
            assert mine.token_to_word(row, t) == expected.token_to_word(row, t)
            assert mine.token_to_sequence(row, t) == expected.token_to_sequence(row, t)
        for sequence in (0, 1) if "text_pair" in texts else (0,):
            for c in range(40):
                assert mine.char_to_token(row, c, sequence) == expected.char_to_token(row, c, sequence), (row, c)
                assert mine.char_to_word(row, c, sequence) == expected.char_to_word(row, c, sequence), (row, c)
            words = {w for w, s in zip(expected.word_ids(row), expected.sequence_ids(row)) if s == sequence}
            for w in words - {None}:  # (transformers' word_to_chars fails on a word that is not there)
                assert mine.word_to_tokens(row, w, sequence) == expected.word_to_tokens(row, w, sequence)
                assert mine.word_to_chars(row, w, sequence) == expected.word_to_chars(row, w, sequence)
            assert mine.word_to_tokens(row, 99, sequence) is None
    assert mine.char_to_token(3) == expected.char_to_token(3)  # one argument: an index in row 0
    assert mine.token_to_chars(0) == expected.token_to_chars(0)
    assert type(mine.token_to_chars(0)).__name__ == "CharSpan"


def test_offsets_cut_the_texts_tokens_out(pair):
    ours, _ = pair
    text = TEXTS[2]
    encoded = ours(text, return_offsets_mapping=True)
    pieces = [text[start:end].lower() for start, end in encoded["offset_mapping"]]
    tokens = [token.replace("</w>", "") for token in encoded.tokens()]
    assert [p for p, t in zip(pieces, tokens) if t != "<unk>"][:6] == [t for t in tokens if t != "<unk>"][:6]
    rows = ours(TEXTS, return_offsets_mapping=True, padding=True, return_tensors="pt")["offset_mapping"]
    assert rows.shape == (3, rows.shape[1], 2) and rows.dtype == torch.long


@pytest.mark.parametrize("call, error, match", [
    (lambda t: t(TEXTS[0], stride=-1), ValueError, "stride"),
    (lambda t: t(TEXTS[0], max_length=3, truncation=True, stride=3, return_overflowing_tokens=True), ValueError,
     "less than max_length"),
    (lambda t: t(QUESTIONS[2], TEXTS[0], max_length=9, truncation="only_second", stride=2,
                 return_overflowing_tokens=True), ValueError, "stride 2"),  # the second text's share <= stride
    (lambda t: t(TEXTS[0], is_split_into_words=True), TypeError, "list of words"),
    (lambda t: t([["a", 1]], is_split_into_words=True), TypeError, "list of words"),
    (lambda t: t(), TypeError, "give text_target"),
    (lambda t: t(TEXTS[0], return_overflowing=True), TypeError, "return_overflowing"),
])
def test_bad_inputs_raise(pair, call, error, match):
    ours, _ = pair
    with pytest.raises(error, match=match):
        call(ours)


def test_original_pretokenization_refuses_offsets_and_words():
    tokenizer = OpenAIGPTTokenizerFast.from_pretrained(PACKAGED_FOLDER, use_original_pretokenization=True)
    with pytest.raises(ValueError, match="return_offsets_mapping"):
        tokenizer(TEXTS[0], return_offsets_mapping=True)
    with pytest.raises(ValueError, match="is_split_into_words"):
        tokenizer(WORDS[0], is_split_into_words=True)
