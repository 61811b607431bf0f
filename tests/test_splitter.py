"""Tests for engine.splitter: lossless, eager, chunk-invariant sentence splitting."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.splitter import SentenceSplitter, split_text

NO_FAST: dict[str, Any] = {"first_fragment_min_words": None}


def _stripped(segments: list[str]) -> list[str]:
    return [s.strip() for s in segments]


def _feed(pieces: list[str], **kwargs: Any) -> list[str]:
    splitter = SentenceSplitter(**kwargs)
    segments = [seg for piece in pieces for seg in splitter.add(piece)]
    return segments + splitter.finish()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello there. How are you? Fine!", ["Hello there.", "How are you?", "Fine!"]),
        ("Really?! Yes... No.", ["Really?!", "Yes...", "No."]),
        ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
        ("(It works.) Next one.", ["(It works.)", "Next one."]),
        ("**Note.** This is bold.", ["**Note.**", "This is bold."]),
        # abbreviations and titles
        ("Dr. Smith met Mr. Jones. They talked.", ["Dr. Smith met Mr. Jones.", "They talked."]),
        (
            "Mrs. Lee and Ms. Park and Prof. Kim came.",
            ["Mrs. Lee and Ms. Park and Prof. Kim came."],
        ),
        ("We live on Elm St. Near the park.", ["We live on Elm St. Near the park."]),
        ("Ali vs. Frazier, i.e. the fight. Wow.", ["Ali vs. Frazier, i.e. the fight.", "Wow."]),
        ("Use tools, e.g. the hammer. Done.", ["Use tools, e.g. the hammer.", "Done."]),
        ("Acme Inc. And Foo Ltd. Merged.", ["Acme Inc. And Foo Ltd. Merged."]),
        ("It was approx. Ten feet. Big.", ["It was approx. Ten feet.", "Big."]),
        ("On Jan. First and Dec. Fifth. Ok.", ["On Jan. First and Dec. Fifth.", "Ok."]),
        ("Apples, pears, etc. And more.", ["Apples, pears, etc. And more."]),
        ("DR. WHO is here. Yes.", ["DR. WHO is here.", "Yes."]),
        ("J. R. R. Tolkien wrote it. Yes.", ["J. R. R. Tolkien wrote it.", "Yes."]),
        ("The U.S.A. Team won. Yay.", ["The U.S.A. Team won.", "Yay."]),
        ("The U.K. And the U.S. Agree.", ["The U.K. And the U.S. Agree."]),
        ("At 9 a.m. Or 5 p.m. Daily.", ["At 9 a.m. Or 5 p.m. Daily."]),
        ("So did I. Then we left.", ["So did I.", "Then we left."]),
        ("I live in the U.S.", ["I live in the U.S."]),
        ("See No. 5 and Fig. 3 now. No. Never.", ["See No. 5 and Fig. 3 now.", "No.", "Never."]),
        ("Call ext. 42 today. Ext. Done.", ["Call ext. 42 today.", "Ext.", "Done."]),
        # numbers, addresses, URLs
        ("It costs $3.50 today. Good.", ["It costs $3.50 today.", "Good."]),
        ("Fever of 98.6 and 1,000.5 units. Ok.", ["Fever of 98.6 and 1,000.5 units.", "Ok."]),
        ("Meet at 9:30. Bring food.", ["Meet at 9:30.", "Bring food."]),
        ("Ping 192.168.1.1 with v2.1.3 now. Done.", ["Ping 192.168.1.1 with v2.1.3 now.", "Done."]),
        (
            "Open http://x.y/z.html now. Then www.example.com. Go.",
            ["Open http://x.y/z.html now.", "Then www.example.com.", "Go."],
        ),
        ("Mail a.b@c.d.com today. Bye.", ["Mail a.b@c.d.com today.", "Bye."]),
        # ellipses
        ("Wait... what? No.", ["Wait... what?", "No."]),
        ("Wait... What? No.", ["Wait...", "What?", "No."]),
        ("Well… maybe. Sure.", ["Well… maybe.", "Sure."]),
        ("I went home. then I slept.", ["I went home. then I slept."]),
        # numbered lists
        ("1. First item 2. Second item", ["1. First item 2. Second item"]),
        ("Step 1. Do this. Step 2. Do that.", ["Step 1. Do this.", "Step 2. Do that."]),
        ("Step 1. Do X. Now.", ["Step 1. Do X. Now."]),  # X. reads as an initial
        ("1. Apples.\n2. Pears.\n3. Plums", ["1. Apples.", "2. Pears.", "3. Plums"]),
        ("I counted to 10. Then I stopped.", ["I counted to 10.", "Then I stopped."]),
        # paragraphs
        ("Title\n\nBody text here. More.", ["Title", "Body text here.", "More."]),
        ("One line\nand the next. Two.", ["One line\nand the next.", "Two."]),
        ("Dr.\n\nSmith", ["Dr.", "Smith"]),
        # CJK
        ("你好。今天天气很好！我们走吧？", ["你好。", "今天天气很好！", "我们走吧？"]),
        ("「你好。」他说。好；走！", ["「你好。」", "他说。", "好；", "走！"]),
        ("他说：“我们走吧！”然后走了。", ["他说：“我们走吧！”", "然后走了。"]),
        ("等等……什么？", ["等等……什么？"]),
        ("これはペンです．あれは本です。", ["これはペンです．", "あれは本です。"]),
        ("Hello。World", ["Hello。", "World"]),
    ],
)
def test_tricky_cases(text: str, expected: list[str]) -> None:
    assert _stripped(split_text(text, **NO_FAST)) == expected
    assert _feed(list(text), **NO_FAST) == split_text(text, **NO_FAST)


def test_segments_carry_their_trailing_whitespace() -> None:
    assert split_text("  Hello there.  \n How?\n") == ["  Hello there.  \n ", "How?\n"]


def test_whitespace_only_utterance_is_one_segment() -> None:
    splitter = SentenceSplitter()
    assert splitter.add(" \n ") == []
    assert splitter.finish() == [" \n "]
    assert splitter.finish() == []
    assert split_text("") == []


def test_release_is_eager() -> None:
    splitter = SentenceSplitter()
    assert splitter.add("Hello there.") == []
    assert splitter.add(" ") == []  # "Dr. Smith" vs "there. how": the next word decides
    assert splitter.add("How") == ["Hello there. "]
    assert splitter.pending == "How"
    assert splitter.add(" are you? I") == ["How are you? "]
    assert splitter.add("你好。") == []  # a closer like 」 may still follow
    assert splitter.add("我") == ["I你好。"]
    assert splitter.finish() == ["我"]
    assert splitter.pending == ""


def test_fast_first_fragment() -> None:
    text = "Well, I think that we should go to the park today, because it is sunny. Yes, we should."
    assert _stripped(split_text(text)) == [
        "Well, I think that we should go to the park today,",
        "because it is sunny.",
        "Yes, we should.",
    ]
    off = [
        "Well, I think that we should go to the park today, because it is sunny.",
        "Yes, we should.",
    ]
    assert _stripped(split_text(text, first_fragment_min_words=None)) == off
    assert _stripped(split_text(text, first_fragment_min_chars=0)) == off


def test_fast_first_fragment_marks() -> None:
    kw: dict[str, Any] = {"first_fragment_min_words": 3, "first_fragment_min_chars": 10}
    assert _stripped(split_text("We have 1,000,000 reasons; we go.", **kw)) == [
        "We have 1,000,000 reasons;",
        "we go.",
    ]
    assert _stripped(split_text("At exactly 9:30 am - we left - fast.", **kw)) == [
        "At exactly 9:30 am -",
        "we left - fast.",
    ]
    assert _stripped(split_text("A well-known long-time friend: Bob.", **kw)) == [
        "A well-known long-time friend:",
        "Bob.",
    ]
    # Only the first segment of an utterance; each finish() starts a new one.
    splitter = SentenceSplitter(**kw)
    text = "Short one. Then, after that, we all went home."
    segments = splitter.add(text) + splitter.finish()
    assert _stripped(segments) == ["Short one.", "Then, after that, we all went home."]
    assert _stripped(splitter.add(text[11:]) + splitter.finish()) == [
        "Then, after that,",
        "we all went home.",
    ]


def test_max_segment_chars_cuts_at_whitespace() -> None:
    text = "alpha beta gamma delta epsilon zeta eta theta"
    segments = split_text(text, max_segment_chars=12)
    assert "".join(segments) == text
    assert _stripped(segments) == ["alpha beta", "gamma delta", "epsilon zeta", "eta theta"]
    assert split_text("x" * 25, max_segment_chars=10) == ["x" * 10, "x" * 10, "x" * 5]
    assert split_text("Hi. Hello", max_segment_chars=3) == ["Hi. ", "Hel", "lo"]
    with pytest.raises(ValueError):
        SentenceSplitter(max_segment_chars=0)


def test_llm_paragraph_token_by_token() -> None:
    paragraph = (
        "Sure! Here's a quick overview. Dr. Rivera's team at Acme Inc. measured 3.75 kg "
        "at 9:30 a.m. on Jan. 5, i.e. before the storm... and then they left. "
        "Visit https://example.com/report.html or e-mail team@acme.co.uk for details.\n\n"
        "Key steps:\n1. Collect the data.\n2. Clean it.\n3. Publish the results!\n\n"
        'Why does this matter? Because, as Prof. J. K. Lee put it, "data is only '
        "as good as its cleaning.\" That's all."
    )
    tokens = re.findall(r"\s*\S{1,4}|\s+", paragraph)
    assert "".join(tokens) == paragraph
    segments = _feed(tokens)
    assert segments == split_text(paragraph)
    assert _stripped(segments) == [
        "Sure!",
        "Here's a quick overview.",
        "Dr. Rivera's team at Acme Inc. measured 3.75 kg at 9:30 a.m. on Jan. 5, "
        "i.e. before the storm... and then they left.",
        "Visit https://example.com/report.html or e-mail team@acme.co.uk for details.",
        "Key steps:\n1. Collect the data.",
        "2. Clean it.",
        "3. Publish the results!",
        "Why does this matter?",
        'Because, as Prof. J. K. Lee put it, "data is only as good as its cleaning."',
        "That's all.",
    ]


def test_long_input_one_char_at_a_time_is_linear() -> None:
    unit = "Hello there, my friend; this costs $3.50 at 9:30 a.m. today! Really? Dr. Who. "
    text = (unit * (100_000 // len(unit) + 1))[:100_000]
    splitter = SentenceSplitter()
    start = time.perf_counter()
    count = sum(len(splitter.add(char)) for char in text) + len(splitter.finish())
    assert time.perf_counter() - start < 5.0
    assert count > 1000


# --- properties ---------------------------------------------------------------------------

TRICKY = [
    *str.split("Dr. Mr. Mrs. e.g. i.e. U.S. U.S.A. a.m. etc. No. Fig. J. I. 1. 12. Step"),
    *str.split("$3.50 98.6 1,000.5 9:30 192.168.1.1 v2.1.3 http://x.y/z.html www.example.com"),
    *str.split('a.b@c.d.com ... … ?! ! ? . , ; : - — " ” ) 」 。 ！ ？ ； ． ** 你好 天气'),
    *str.split("Hello world the What well-known"),
    *[" ", "  ", "\n", "\n\n", "\t", " - ", " — "],
]
texts = st.lists(
    st.one_of(st.sampled_from(TRICKY), st.text(max_size=4)),
    max_size=40,
).map("".join)
options = st.fixed_dictionaries(
    {
        "first_fragment_min_words": st.sampled_from([None, 0, 1, 3, 6]),
        "first_fragment_min_chars": st.sampled_from([None, 5, 30]),
        "max_segment_chars": st.sampled_from([1, 3, 10, 40, 400]),
    }
)


@settings(max_examples=300, deadline=None)
@given(text=texts, kwargs=options)
def test_lossless_nonempty_and_bounded(text: str, kwargs: dict[str, Any]) -> None:
    segments = split_text(text, **kwargs)
    assert "".join(segments) == text
    assert all(segments)
    for i, segment in enumerate(segments):
        assert len(segment.strip()) <= kwargs["max_segment_chars"]
        if i > 0:
            assert not segment[0].isspace()
    if text.strip():
        assert all(s.strip() for s in segments)


@settings(max_examples=300, deadline=None)
@given(text=texts, kwargs=options, data=st.data())
def test_chunk_invariance(text: str, kwargs: dict[str, Any], data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    splitter = SentenceSplitter(**kwargs)
    released = [seg for piece in pieces for seg in splitter.add(piece)]
    rest = splitter.finish()
    assert len(rest) <= 1
    assert released + rest == split_text(text, **kwargs)


def _assert_eager(text: str, kwargs: dict[str, Any]) -> None:
    """Feed ``text`` one char at a time; a segment must be out once the char
    after it is in. A forced cut (at ``max_segment_chars``) may also wait to
    see the char at the limit, since only that shows no boundary came first."""
    expected = split_text(text, **kwargs)
    due: list[int] = []
    start = 0
    for segment in expected[:-1]:
        core = start + len(segment) - len(segment.lstrip())
        start += len(segment)
        forced_by = core + kwargs["max_segment_chars"]
        due.append(start if len(text) <= forced_by else max(start, forced_by))
    splitter = SentenceSplitter(**kwargs)
    released: list[str] = []
    for index, char in enumerate(text):
        released += splitter.add(char)
        assert len(released) >= sum(1 for when in due if when <= index), text[: index + 1]
        assert splitter.pending == text[sum(map(len, released)) : index + 1]
    assert released + splitter.finish() == expected


@settings(max_examples=200, deadline=None)
@given(text=texts, kwargs=options)
def test_one_char_at_a_time_is_eager_and_invariant(text: str, kwargs: dict[str, Any]) -> None:
    _assert_eager(text, kwargs)
    _assert_eager(text, {**kwargs, "max_segment_chars": len(text) + 1})


@pytest.mark.parametrize(
    ("pending", "released", "kept"),
    [
        ("Your total is $1", ["Your total is "], "$1"),
        ("and the temp", ["and the "], "temp"),
        ("temp", [], "temp"),  # one word, still being written
        ("It is 72 degrees.", ["It is 72 degrees."], ""),
        ("Wait for it ", ["Wait for it "], ""),
        ("Call Dr.", ["Call Dr."], ""),
        ("", [], ""),
    ],
)
def test_flush_words_keeps_a_word_that_may_still_grow(
    pending: str, released: list[str], kept: str
) -> None:
    splitter = SentenceSplitter()
    assert splitter.add(pending) == []
    assert splitter.flush_words() == released
    assert splitter.pending == kept


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.text(max_size=30), max_size=8))
def test_flush_words_loses_nothing(pieces: list[str]) -> None:
    splitter = SentenceSplitter()
    out: list[str] = []
    for piece in pieces:
        out += splitter.add(piece)
        out += splitter.flush_words()
    out += splitter.finish()
    assert "".join(out) == "".join(pieces)


def test_speak_soon_lets_a_later_segment_end_at_a_clause() -> None:
    splitter = SentenceSplitter()
    assert splitter.add("Sure! I can certainly help you with that order") == ["Sure! "]
    assert splitter.add(", and more") == []  # not the first segment: waits for its end
    splitter.speak_soon()
    assert splitter.add(" ") == ["I can certainly help you with that order, "]
    assert splitter.finish() == ["and more "]
