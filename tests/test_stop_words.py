"""Linear stop-word detection: the incremental text equals the full decode, the completing token is
found, and the number of decoded tokens per check stays bounded."""

from __future__ import annotations

import pytest
from helpers import CORPUS, make_tokenizer

from layerskip.decoding.stop_words import StopWords


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(300)


def test_incremental_text_equals_full_decode_and_decodes_a_bounded_window(tokenizer) -> None:
    ids = tokenizer("".join(CORPUS[:5]))["input_ids"]
    widths: list[int] = []

    def decode(tokens: list[int]) -> str:
        widths.append(len(tokens))
        return tokenizer.decode(tokens, skip_special_tokens=True)

    watcher = StopWords(["<never>"], decode)
    for token in ids:  # one token per round: the quadratic worst case of decoding everything
        assert watcher.push([token]) is None
    assert watcher.text == tokenizer.decode(ids, skip_special_tokens=True)
    # byte-level tokens of multi-byte characters (é, 中文) hold the window open for a few tokens at most
    assert len(ids) > 100 and max(widths) <= 8 and sum(widths) < 6 * len(ids)


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_the_completing_token_is_found(tokenizer, chunk: int) -> None:
    text = CORPUS[1]
    ids = tokenizer(text)["input_ids"]
    decode = lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True)  # noqa: E731
    watcher = StopWords(["return n", "zzz"], decode)
    kept = None
    for start in range(0, len(ids), chunk):
        keep = watcher.push(ids[start : start + chunk])
        if keep is not None:
            kept = start + keep
            break
    assert kept is not None
    assert "return n" in decode(ids[:kept]) and "return n" not in decode(ids[: kept - 1])
    assert watcher.tokens == ids[:kept]


def test_an_empty_stop_word_never_matches(tokenizer) -> None:
    watcher = StopWords([""], lambda tokens: tokenizer.decode(tokens))
    assert watcher.push(tokenizer("def add(a, b):")["input_ids"]) is None
