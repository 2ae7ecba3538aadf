"""gpt_fast's GPT-1 tokenizer against transformers' OpenAIGPTTokenizer on the real GPT-1 vocabulary and merges.

Reads the files packaged with gpt_fast (gpt_fast/tokenization/data), so it runs in any clone; skips only when
transformers is absent.
"""

import pytest
import torch

from gpt_fast.tokenization.tokenizer import OpenAIGPTTokenizerFast
from gpt_fast.tokenization.tokenizer_files import PACKAGED_FOLDER

transformers = pytest.importorskip("transformers")
REAL = PACKAGED_FOLDER

TEXTS = [
    "Hello World!  This is   a test.",
    "",
    "   ",
    "\n\n\t \r\n",
    "MiXeD CaSe and ALL CAPS and lowercase",
    "naïve café résumé Ñandú Ångström façade coöperate",
    "emoji 😀👍🏽 and 👨‍👩‍👧 family",
    "日本語のテキスト 中文字符 한국어",
    "Ελληνικά и русский текст, العربية, हिन्दी",
    "tabs\tand\nnewlines\r\nmixed",
    "numbers 3.14159 1,000,000 42nd 2024-01-01 0x1F",
    "pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism",
    "repeated punctuation!!! ??? ... --- ,,, ;;; ''' \"\"\"",
    "don't won't it's we'll I'd y'all rock'n'roll",
    "x <unk> y <UNK> <pad> </w> w</w>",
    "url https://example.com/a?b=c&d=e#f and mail a.b@c.de",
    "<html><body class=\"x\">tags</body></html>",
    "zero\u200bwidth\u00a0nbsp\u2003emspace\ufeffbom",
    "ligature ﬁ ﬂ fullwidth ＡＢＣ１２３ roman Ⅻ superscript ² ½",
    "control \x00\x01\x07\x1b chars",
    "combining e\u0301 a\u0308 o\u0302",
    "“curly quotes” ‘single’ — em dash – en dash … ellipsis",
    "a" * 300,
    "word " * 200,
    "$100 €50 £20 ¥1000 #hashtag @mention 50% a+b=c a*b a/b a\\b",
    "  leading and trailing spaces  ",
]


@pytest.fixture(scope="module")
def both():
    return (OpenAIGPTTokenizerFast.from_pretrained(REAL),
            transformers.OpenAIGPTTokenizer.from_pretrained(str(REAL)))


@pytest.fixture(scope="module")
def both_padded():
    ours, theirs = (OpenAIGPTTokenizerFast.from_pretrained(REAL),
                    transformers.OpenAIGPTTokenizer.from_pretrained(str(REAL)))
    assert ours.add_special_tokens({"pad_token": "<pad>"}) == theirs.add_special_tokens({"pad_token": "<pad>"})
    return ours, theirs


@pytest.mark.parametrize("text", TEXTS)
def test_ids_tokens_and_decode_match(both, text):
    ours, theirs = both
    ids = theirs(text)["input_ids"]
    assert ours(text)["input_ids"] == ids
    assert ours.encode(text) == theirs.encode(text)
    assert ours.tokenize(text) == theirs.tokenize(text)
    for skip in (False, True):
        assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)


def test_random_text_matches(both):
    hypothesis = pytest.importorskip("hypothesis")
    strategies = hypothesis.strategies

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
    @hypothesis.given(strategies.text(max_size=40))
    def check(text):
        ids = theirs(text)["input_ids"]
        assert ours(text)["input_ids"] == ids
        assert ours.decode(ids) == theirs.decode(ids)

    ours, theirs = both
    check()


def test_decode_of_arbitrary_ids_matches(both):
    ours, theirs = both
    g = torch.Generator().manual_seed(0)
    for length in (1, 2, 7, 50):
        ids = torch.randint(0, len(theirs), (length,), generator=g).tolist()
        assert ours.decode(ids) == theirs.decode(ids)
    # the last entry is the newline word, and id 0 the unknown token (facts of the original release)
    assert ours.convert_ids_to_tokens([40477, 0]) == theirs.convert_ids_to_tokens([40477, 0]) == ["\n</w>", "<unk>"]


def test_vocabulary_matches(both):
    ours, theirs = both
    assert ours.get_vocab() == theirs.get_vocab()
    assert ours.vocab_size == theirs.vocab_size == 40478 and len(ours) == len(theirs)
    assert ours.unk_token == theirs.unk_token and ours.unk_token_id == theirs.unk_token_id == 0
    for name in ("pad_token", "bos_token", "eos_token"):
        assert getattr(ours, name) is None and getattr(theirs, name) is None


def test_padding_without_pad_token_raises_in_both(both):
    for tok in both:
        with pytest.raises(ValueError, match="pad"):
            tok(TEXTS[:3], padding=True)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("kwargs", [
    dict(padding=True),
    dict(padding="longest", return_tensors="pt"),
    dict(padding="max_length", max_length=40, truncation=True),
    dict(padding=True, truncation=True, max_length=5, return_tensors="pt"),
    dict(truncation=True, max_length=3),
    dict(max_length=4),
    dict(padding=True, pad_to_multiple_of=8, return_tensors="pt"),
    dict(padding=True, return_attention_mask=False),
])
def test_batch_matches(both_padded, side, kwargs):
    ours, theirs = both_padded
    ours.padding_side = theirs.padding_side = side
    try:
        expected, actual = theirs(TEXTS, **kwargs), ours(TEXTS, **kwargs)
    finally:
        ours.padding_side = theirs.padding_side = "right"
    assert sorted(actual.keys()) == sorted(expected.keys())
    for key in expected:
        if kwargs.get("return_tensors") == "pt":
            torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)
        else:
            assert actual[key] == expected[key]


def test_truncation_side_left_matches(both_padded):
    ours, theirs = both_padded
    ours.truncation_side = theirs.truncation_side = "left"
    try:
        kwargs = dict(truncation=True, max_length=6, padding=True)
        assert ours(TEXTS, **kwargs)["input_ids"] == theirs(TEXTS, **kwargs)["input_ids"]
    finally:
        ours.truncation_side = theirs.truncation_side = "right"


def test_single_text_tensors_match(both_padded):
    ours, theirs = both_padded
    for kwargs in (dict(return_tensors="pt"), dict(padding="max_length", max_length=20, return_tensors="pt"),
                   dict(padding="max_length", max_length=20)):
        expected, actual = theirs(TEXTS[0], **kwargs), ours(TEXTS[0], **kwargs)
        for key in expected:
            if "return_tensors" in kwargs:
                assert actual[key].shape == expected[key].shape == (1, 20 if "padding" in kwargs else 8)
                torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)
            else:
                assert actual[key] == expected[key]


def test_batch_decode_matches_with_pad(both_padded):
    ours, theirs = both_padded
    ids = theirs(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == theirs.batch_decode(ids, skip_special_tokens=skip)


def test_saved_real_tokenizer_reloads_in_both(both_padded, tmp_path):
    ours, theirs = both_padded
    ours.save_pretrained(tmp_path)
    reloaded = [OpenAIGPTTokenizerFast.from_pretrained(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path)]
    expected = theirs(TEXTS, padding=True)["input_ids"]
    for tok in reloaded:
        assert tok(TEXTS, padding=True)["input_ids"] == expected


def test_model_max_length_is_unlimited_as_in_transformers(both):
    # no tokenizer_config.json: both say "no limit", so truncation=True without max_length does not cut
    ours, theirs = both
    assert ours.model_max_length == theirs.model_max_length > 10**20
    assert len(ours("word " * 600, truncation=True)["input_ids"]) == 600


def test_original_pretokenization_on_real_vocabulary():
    pytest.importorskip("ftfy")
    pytest.importorskip("spacy")
    tok = OpenAIGPTTokenizerFast.from_pretrained(REAL, use_original_pretokenization=True)
    bert = OpenAIGPTTokenizerFast.from_pretrained(REAL)
    # newline is a word of its own ("\n</w>" = 40477); the em dash becomes "-"; accents stay; "don't" -> do n't
    assert tok.tokenize("Hello—world\n\nDon't") == ["hello</w>", "-</w>", "world</w>", "\n</w>", "do</w>", "n't</w>"]
    assert tok.encode("a\nb")[1] == 40477 and 40477 not in bert.encode("a\nb")
    assert bert.tokenize("café") == ["cafe</w>"] and tok.tokenize("café") != ["cafe</w>"]
    assert tok.decode(tok.encode("The cat sat.")) == "the cat sat ."


def test_folder_saved_by_transformers_loads(both_padded, tmp_path):
    # Compared with transformers reloading the same folder: transformers does not save a padding_side that was
    # set after loading, so the tokenizer it saved from may pad on another side than the folder says.
    _, theirs = both_padded
    theirs.save_pretrained(tmp_path)
    reloaded, theirs_reloaded = (OpenAIGPTTokenizerFast.from_pretrained(tmp_path),
                                 transformers.OpenAIGPTTokenizer.from_pretrained(str(tmp_path)))
    assert reloaded.pad_token == "<pad>" and len(reloaded) == len(theirs)
    assert reloaded.padding_side == theirs_reloaded.padding_side
    assert reloaded(TEXTS, padding=True)["input_ids"] == theirs_reloaded(TEXTS, padding=True)["input_ids"]
