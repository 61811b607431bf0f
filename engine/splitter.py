"""Split streamed text into speakable segments, eagerly and chunk-invariantly.

Contract of :class:`SentenceSplitter` (``split_text`` is one ``add`` + ``finish``):

* Lossless: the concatenation of every segment returned by ``add`` and
  ``finish`` equals the concatenation of every input, whitespace included.
  Whitespace after a segment's end is attached to that segment, so every
  segment but an utterance's first starts with a non-space character.
  No segment is empty; a segment is whitespace-only only when the whole
  utterance is.
* Chunk-invariant: the segments depend only on the text, never on how it was
  cut into ``add`` calls.
* Eager: ``add`` returns a segment as soon as the text seen determines it,
  which at most needs the rest of the whitespace after the terminator and
  the next non-space character (plus any run of terminators and closers).
* Bounded: a segment's text from its first non-space character to its end
  (trailing whitespace excluded) is at most ``max_segment_chars`` long.

Boundaries, earliest first: a run of ``. ! ? …`` (closing quotes, brackets
and ``*`` ``_`` stay with it) followed by whitespace; a run containing a CJK
terminator ``。！？；．｡``, no whitespace needed; a blank line. A lone period or
an ellipsis followed by a lowercase word does not end a sentence, nor does a
period after an abbreviation, an initial, a dotted acronym or a list number.
The first segment of an utterance may end early at a clause mark (see
``SentenceSplitter``). Rationale and trade-offs: ``docs/splitter.md``.
"""

from __future__ import annotations

import re
from itertools import islice
from typing import Final, Literal

_TERMINATORS: Final = frozenset(".!?…。！？；．｡")
_CJK_TERMINATORS: Final = frozenset("。！？；．｡")
_CLOSERS: Final = frozenset("\"')]}»›”’」』）》】〕〉〗〙〛*_")
_DASHES: Final = frozenset("-–—")
_SENTENCE_MARK_RE: Final = re.compile(r"[.!?…。！？；．｡\n]")
_FRAGMENT_MARK_RE: Final = re.compile(r"[.!?…。！？；．｡\n,;:\-–—]")
_NON_SPACE_RE: Final = re.compile(r"\S")
_WORD_RE: Final = re.compile(r"\S+")
_EDGE_PUNCT_RE: Final = re.compile(r"^[\W_]+|[\W_]+$")
_DOTTED_ACRONYM_RE: Final = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")
_LOOKBACK: Final = 40  # longest token inspected before a period, in characters


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Lowercased, without the final period. Dotted forms (e.g., U.S.) match
# _DOTTED_ACRONYM_RE instead.
_ABBREVIATIONS: Final = _words(
    "mr mrs ms dr prof st jr sr vs etc inc ltd co corp approx est dept univ mt ave gen gov sen"
    " rep sgt capt lt col rev hon cf viz al ca ph.d jan feb mar apr jun jul aug sep sept oct"
    " nov dec"
)
# Abbreviations only when a number follows ("No. 5", "Fig. 3"); "No. Never." splits.
_NUMBER_ABBREVIATIONS: Final = _words(
    "no nos fig figs vol vols pp eq ch sec art ext tel apt rm ste"
)
# "Step 1. Mix." - a number after one of these words is a label, not a sentence end.
_LIST_WORDS: Final = _words(
    "step chapter part item section lesson phase stage question option rule"
)

_Verdict = tuple[Literal["end", "skip", "wait"], int]


class SentenceSplitter:
    """Incremental splitter for one utterance at a time; no I/O, no clock.

    Fast first fragment: while no segment of the current utterance has been
    released, a clause mark (``,`` ``;`` ``:`` followed by whitespace, or a
    dash ``-`` ``–`` ``—`` with whitespace on both sides) ends the segment if
    the text before the mark, from the first non-space character, has at
    least ``first_fragment_min_words`` words and ``first_fragment_min_chars``
    characters. ``None`` or ``0`` for either threshold turns this off.

    ``max_segment_chars`` (>= 1): with no boundary in reach, a segment is cut
    at the last whitespace within the limit, or mid-word at the limit if there
    is none. Memory held is bounded by it, plus whitespace runs, which are
    held whole until the next non-space character.
    """

    def __init__(
        self,
        *,
        first_fragment_min_words: int | None = 6,
        first_fragment_min_chars: int | None = 30,
        max_segment_chars: int = 400,
    ) -> None:
        if max_segment_chars < 1:
            raise ValueError(f"max_segment_chars must be at least 1, got {max_segment_chars}")
        self._min_words = first_fragment_min_words or 0
        self._min_chars = first_fragment_min_chars or 0
        self._fast_first = self._min_words > 0 and self._min_chars > 0
        self._max = max_segment_chars
        self._buf = ""  # pending text; starts where the next segment starts
        self._first = True  # the pending segment is the utterance's first
        self._soon = False  # speak_soon() asked for it: half thresholds
        self._reset_segment()

    @property
    def pending(self) -> str:
        """Text received but not yet released in a segment."""
        return self._buf

    def add(self, text: str) -> list[str]:
        """Append ``text`` and return the segments it completes, in order (maybe none)."""
        self._buf += text
        return self._drain(final=False)

    def finish(self) -> list[str]:
        """End the utterance: return the pending text as 0 or 1 segment.

        Afterwards the splitter is fresh: the next ``add`` starts a new
        utterance, whose first segment may again be a fast first fragment.
        """
        segments = self._drain(final=True)
        self._first, self._soon = True, False
        return segments

    def speak_soon(self) -> None:
        """Let the pending segment end early at a clause, as an utterance's first may.

        For a caller whose listener has run out of audio mid-utterance (a
        slow token stream after a short sentence): the next clause mark that
        meets half the fast-fragment thresholds (3 words and 15 characters by
        default) ends the segment: the listener already hears silence, so a
        short clause beats a long wait ("Sure! | Your balance is $1,299.99, |"). Output stays
        chunk-invariant for a fixed sequence of ``add`` and ``speak_soon``.
        """
        if not self._first or not self._soon:
            self._first = True
            self._soon = True
            self._reset_segment()

    def flush_words(self) -> list[str]:
        """Idle flush: release the pending text, except a word that may still grow.

        When the pending text ends in a letter or digit, its last word stays
        pending (``$1`` may become ``$19.99``, ``temp`` ``temperature``: a
        token stream that stalled mid-word); the text before it is released
        as by :meth:`finish`. Text that ends in whitespace or punctuation is
        released whole. Nothing is lost: the kept word leads the next segment.
        Like :meth:`finish`, the next segment may again be a fast first fragment.
        """
        buf = self._buf
        if not buf or not buf[-1].isalnum():
            return self.finish()
        space = next((i for i in range(len(buf) - 1, -1, -1) if buf[i].isspace()), None)
        if space is None:
            return []  # one word, still being written
        self._buf, tail = buf[: space + 1], buf[space + 1 :]
        self._reset_segment()
        segments = self.finish()
        self._buf = tail
        self._reset_segment()
        return segments

    def _reset_segment(self) -> None:
        self._scan = 0  # every mark before this index is known not to end the segment
        self._core: int | None = None  # index of the segment's first non-space char
        self._words_ok = False  # the fast-fragment word threshold is already met

    def _drain(self, final: bool) -> list[str]:
        segments: list[str] = []
        while self._buf:
            cut = self._find_cut(final)
            if cut is None:
                break
            segments.append(self._buf[:cut])
            self._buf = self._buf[cut:]
            self._first = self._soon = False
            self._reset_segment()
        return segments

    def _find_cut(self, final: bool) -> int | None:
        """Where the pending segment ends (after its trailing whitespace), or
        None if more text is needed. With ``final`` the text ends at the
        buffer's end and a cut is always found."""
        buf, n = self._buf, len(self._buf)
        if self._core is None:
            first = _NON_SPACE_RE.search(buf, self._scan)
            if first is None:
                self._scan = n
                return n if final else None
            self._core = self._scan = first.start()
        core = self._core
        limit = core + self._max  # the segment's text must end by here
        fast = self._first and self._fast_first
        marks = _FRAGMENT_MARK_RE if fast else _SENTENCE_MARK_RE
        while (mark := marks.search(buf, self._scan, min(n, limit))) is not None:
            kind, pos = self._classify(mark.start(), final, limit)
            if kind == "wait":
                return None
            if kind == "skip":
                self._scan = pos
                continue
            if pos > limit:
                break
            return self._end_of_space(pos, final)
        else:
            self._scan = max(self._scan, min(n, limit))
            if n <= limit:
                return n if final else None
        return self._forced_cut(core, limit, final)

    def _forced_cut(self, core: int, limit: int, final: bool) -> int | None:
        """Cut at the last whitespace run starting in ``(core, limit]``, else at ``limit``."""
        buf = self._buf
        space = limit
        while space > core and not buf[space].isspace():
            space -= 1
        if space == core:
            return limit
        while buf[space - 1].isspace():
            space -= 1
        return self._end_of_space(space, final)

    def _end_of_space(self, end: int, final: bool) -> int | None:
        """Index of the first non-space char at or after ``end``: trailing
        whitespace belongs to the segment that ends at ``end``."""
        after = _NON_SPACE_RE.search(self._buf, end)
        if after is not None:
            return after.start()
        return len(self._buf) if final else None

    def _classify(self, p: int, final: bool, limit: int) -> _Verdict:
        """Decide the mark at ``p``: ("end", index after the segment's text),
        ("skip", where to resume scanning) or ("wait", 0) for more text."""
        char = self._buf[p]
        if char == "\n":
            return self._classify_newline(p, final)
        if char in _TERMINATORS:
            return self._classify_terminator(p, final, limit)
        return self._classify_clause(p, final)

    def _classify_newline(self, p: int, final: bool) -> _Verdict:
        buf = self._buf
        after = _NON_SPACE_RE.search(buf, p + 1)
        run_end = after.start() if after is not None else len(buf)
        if "\n" in buf[p + 1 : run_end]:  # a blank line: paragraph break
            start = p
            while buf[start - 1].isspace():  # stops after the core's first char
                start -= 1
            return "end", start
        if after is None:
            return ("skip", run_end) if final else ("wait", 0)
        return "skip", run_end

    def _classify_terminator(self, p: int, final: bool, limit: int) -> _Verdict:
        buf, n = self._buf, len(self._buf)
        run_end = p
        while run_end < n and buf[run_end] in _TERMINATORS:
            run_end += 1
        end = run_end
        while end < n and buf[end] in _CLOSERS:
            end += 1
        if end > limit:  # more text can only make it longer
            return "end", end
        if end == n and not final:
            return "wait", 0
        run = buf[p:run_end]
        if end == n or any(c in _CJK_TERMINATORS for c in run):
            return "end", end
        if not buf[end].isspace():  # 3.50, example.com, a.b@c.d
            return "skip", end
        after = _NON_SPACE_RE.search(buf, end)
        if after is None:
            return ("end", end) if final else ("wait", 0)
        following = buf[after.start()]
        if "!" in run or "?" in run:
            return "end", end
        if following.islower():
            return "skip", end
        if len(run) > 1 or "…" in run:
            return "end", end
        return ("skip", end) if self._is_abbreviation(p, following) else ("end", end)

    def _classify_clause(self, p: int, final: bool) -> _Verdict:
        buf, core = self._buf, self._core
        assert core is not None
        if buf[p] in _DASHES and (p == core or not buf[p - 1].isspace()):
            return "skip", p + 1  # a hyphen inside a word
        min_words, min_chars = self._thresholds()
        if p - core < min_chars:
            return "skip", p + 1
        if p + 1 == len(buf):
            return ("skip", p + 1) if final else ("wait", 0)
        if not buf[p + 1].isspace():  # 1,000 and 9:30
            return "skip", p + 1
        if not self._words_ok:
            words = sum(1 for _ in islice(_WORD_RE.finditer(buf, core, p), min_words))
            if words < min_words:
                return "skip", p + 1
            self._words_ok = True
        return "end", p + 1

    def _thresholds(self) -> tuple[int, int]:
        """(words, characters) a fast fragment needs before its clause mark."""
        if self._soon:
            return max(1, self._min_words // 2), max(1, self._min_chars // 2)
        return self._min_words, self._min_chars

    def _is_abbreviation(self, p: int, following: str) -> bool:
        """Whether the single period at ``p`` closes a token that is not a sentence end."""
        buf = self._buf
        start, floor = p, max(0, p - _LOOKBACK)
        while start > floor and not buf[start - 1].isspace():
            start -= 1
        if start > 0 and not buf[start - 1].isspace():
            return False  # a token this long (a URL, a path) is no abbreviation
        word = _EDGE_PUNCT_RE.sub("", buf[start:p])
        lower = word.lower()
        if lower in _ABBREVIATIONS or _DOTTED_ACRONYM_RE.fullmatch(word):
            return True
        if len(word) == 1 and word.isalpha() and word.isupper() and word != "I":
            return True  # an initial: J. R. R. Tolkien
        if lower in _NUMBER_ABBREVIATIONS:
            return following.isdigit()
        return word.isdigit() and len(word) <= 3 and self._is_list_number(start)

    def _is_list_number(self, start: int) -> bool:
        """Whether the number token at ``start`` opens the segment or a line, or
        follows a list word ("Step 1.")."""
        buf, core = self._buf, self._core
        assert core is not None
        floor = max(core, start - _LOOKBACK)
        space = start
        while space > floor and buf[space - 1].isspace():
            space -= 1
        if start == core or "\n" in buf[space:start]:
            return True
        word_start = space
        while word_start > floor and not buf[word_start - 1].isspace():
            word_start -= 1
        return _EDGE_PUNCT_RE.sub("", buf[word_start:space]).lower() in _LIST_WORDS


def split_text(
    text: str,
    *,
    first_fragment_min_words: int | None = 6,
    first_fragment_min_chars: int | None = 30,
    max_segment_chars: int = 400,
) -> list[str]:
    """Segments of ``text`` as one utterance: one ``add`` then ``finish``."""
    splitter = SentenceSplitter(
        first_fragment_min_words=first_fragment_min_words,
        first_fragment_min_chars=first_fragment_min_chars,
        max_segment_chars=max_segment_chars,
    )
    return splitter.add(text) + splitter.finish()
