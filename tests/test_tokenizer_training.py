"""train_new_from_iterator (gpt_fast/tokenization/bpe_training.py) against transformers' on the same text: the same
vocabulary, merges and tokens. (The `tokenizers` trainer numbers the word-end characters of its initial alphabet in
an order that changes from run to run, in both libraries alike, so ids are compared through the tokens.) Also
decode() of several sequences and the `_tokenizer` alias."""

import json

import pytest
import torch

import gpt_fast

transformers = pytest.importorskip("transformers")

CORPUS = ["The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs!",
          "How vexingly quick daft zebras jump; the five boxing wizards jump quickly."] * 20
TEXTS = ["the quick brown fox", "zebras jumping quickly <pad>", "unseen wordz, daft!"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    ours = gpt_fast.OpenAIGPTTokenizerFast.from_pretrained("openai-gpt", padding_side="left")
    folder = tmp_path_factory.mktemp("gpt1")
    ours.save_pretrained(folder)
    return ours, transformers.AutoTokenizer.from_pretrained(folder)


def batches():
    for start in range(0, len(CORPUS), 7):
        yield CORPUS[start:start + 7]


def merges(tokenizer):
    return json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]


@pytest.mark.parametrize("options", [dict(), dict(new_special_tokens=["<pad>", "<sep>"]), dict(min_frequency=3),
                                     dict(length=len(CORPUS))])
def test_same_vocabulary_merges_and_tokens_as_transformers(pair, options):
    ours, theirs = pair
    new, expected = (t.train_new_from_iterator(batches(), 120, **options) for t in pair)
    assert isinstance(new, gpt_fast.OpenAIGPTTokenizerFast) and new is not ours
    assert set(new.get_vocab()) == set(expected.get_vocab()) and merges(new) == merges(expected)
    assert len(merges(new)) > 10  # it learnt merges
    for text in TEXTS:
        assert new.tokenize(text) == expected.tokenize(text), text
    specials = ["<unk>", *options.get("new_special_tokens", [])]
    assert [new.convert_tokens_to_ids(t) for t in specials] == list(range(len(specials)))  # first, in order
    assert [expected.convert_tokens_to_ids(t) for t in specials] == list(range(len(specials)))
    assert new.padding_side == "left" and new.unk_token == "<unk>"
    assert ("<sep>" in new.tokenize("zebras <sep>")) == ("new_special_tokens" in options)


def test_renamed_special_tokens(pair):
    new, expected = (t.train_new_from_iterator(CORPUS, 80, special_tokens_map={"<unk>": "[UNK]"}) for t in pair)
    assert new.unk_token == expected.unk_token == "[UNK]" and new.unk_token_id == expected.unk_token_id == 0
    assert new("[UNK] zq")["input_ids"] == expected("[UNK] zq")["input_ids"] == [0, new.convert_tokens_to_ids("z"), 0]
    # transformers also keeps the old "<unk>" as an added special token; gpt_fast renames it away
    assert set(expected.get_vocab()) - set(new.get_vocab()) == {"<unk>"}


def test_trained_tokenizer_saves_and_loads_in_transformers(pair, tmp_path):
    new = pair[0].train_new_from_iterator(CORPUS, 100)
    new.save_pretrained(tmp_path)
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert loaded(text)["input_ids"] == new(text)["input_ids"]
    assert gpt_fast.OpenAIGPTTokenizerFast.from_pretrained(tmp_path).get_vocab() == new.get_vocab()


def test_training_refusals(pair):
    with pytest.raises(ValueError, match="vocab_size"):
        pair[0].train_new_from_iterator(CORPUS, 1)
    original = gpt_fast.OpenAIGPTTokenizerFast.from_pretrained("openai-gpt", use_original_pretokenization=True)
    with pytest.raises(NotImplementedError, match="use_original_pretokenization"):
        original.train_new_from_iterator(CORPUS, 100)


def test_decode_of_several_sequences_gives_a_list(pair):
    ours, theirs = pair
    rows = [ours("hello world")["input_ids"], ours("the end .")["input_ids"][:2]]
    expected = theirs.decode(rows)
    assert isinstance(expected, list)
    assert ours.decode(rows) == expected == ours.batch_decode(rows)
    assert ours.decode(torch.tensor([rows[0], rows[0]])) == [expected[0]] * 2
    assert ours.decode([torch.tensor(rows[0])]) == [expected[0]]
    assert ours.decode(rows[0]) == expected[0] and ours.decode(torch.tensor(rows[0])) == expected[0]


def test_underscore_tokenizer_is_the_backend(pair):
    ours, theirs = pair
    assert ours._tokenizer is ours.backend_tokenizer
    assert ours._tokenizer.encode("hello world").ids == theirs._tokenizer.encode("hello world").ids
