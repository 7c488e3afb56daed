"""Read a multiple-choice answer out of a model response.

Models are prompted to reply as ``<think>reasoning</think><answer>X</answer>`` where
``X`` is an option letter. Real outputs drift from that: draft answer tags inside the
reasoning, truncated generations, markdown/LaTeX wrappers, the option text instead of
its letter, hedges such as "A or C". Scores (Acc@1, Pass@K) and the RL format reward
both depend on reading these the same way every time, so every rule here prefers
returning ``None`` over guessing: a wrong letter counted as a choice is worse for the
analysis than an unreadable answer counted as wrong.

Everything is stdlib-only, and every regex is written so that it runs in linear time
(bounded or possessive quantifiers, character classes that cannot cross their own
delimiters), because responses are untrusted and can be hundreds of KB of garbage.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Mapping

from medbridge.harness_ext.answer_patterns import (
    AFFIRM_RE,
    ATTACH_MAX,
    CLEAN_MAX,
    CONT_RE,
    CTRL_RE,
    ENUM_MARK_RE,
    FOLLOW_WORD_RE,
    HEADING_RE,
    HTML_TAG_RE,
    LATEX_BOXED_RE,
    LATEX_DELIM_RE,
    LATEX_WRAP_RE,
    LEAD_RE,
    LEAD_SPACE_RE,
    LETTER_IS_ANSWER_RE,
    LIST_MAX,
    LIST_PREFIX_RE,
    LIST_SPLIT_RE,
    LIST_TAIL_RE,
    LONE_RE,
    MARKER_TIERS,
    MAX_EXPLICIT,
    MAX_FINAL_SPANS,
    MAX_OCCURRENCES,
    MD_CHARS_RE,
    MD_UNDERSCORE_RE,
    NEGATION_RE,
    NON_WORD_RE,
    NOTHING,
    ONLY_PUNCT_RE,
    OPTION_MARK_RE,
    PAIR_RE,
    QUOTES,
    SPECIAL_TOKEN_RE,
    TAG_RE,
    TAIL_CHARS,
    ZERO_WIDTH_RE,
)

__all__ = [
    "EXTRACTOR_VERSION",
    "extract_choice",
    "final_answer_span",
    "has_strict_format",
    "split_think_answer",
]

# Recorded next to every score; bump whenever a rule below changes what is extracted.
EXTRACTOR_VERSION = "2"  # 2: disagreeing final <answer> tags give None; only the tail is read

# ---------------------------------------------------------------------------------
# Tag structure
# ---------------------------------------------------------------------------------


def _structure(text: str) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int]]]:
    """Locate think regions and answer spans.

    Regions are (start, end, content_start, content_end), sorted and disjoint; spans
    are (open_tag_start, content_start, content_end) in order of appearance.
    """
    n = len(text)
    regions: list[tuple[int, int, int, int]] = []
    spans: list[tuple[int, int, int]] = []
    think_open: tuple[int, int] | None = None
    first_answer_in_open_think: int | None = None
    boundary = 0  # end of the previous think region
    answer_open: tuple[int, int] | None = None
    for m in TAG_RE.finditer(text):
        is_close = bool(m.group(1))
        start, end = m.span()
        if m.group(2).lower() == "think":
            if not is_close:
                # A nested <think> inside reasoning is just reasoning text.
                if think_open is None:
                    think_open = (start, end)
                    first_answer_in_open_think = None
            else:
                if think_open is not None:
                    regions.append((think_open[0], end, think_open[1], start))
                    think_open = None
                else:
                    # Orphan </think>: chat templates often put <think> in the prompt,
                    # so everything before it (since the last region) is reasoning.
                    regions.append((boundary, end, boundary, start))
                boundary = end
        else:
            if not is_close:
                # A later <answer> re-opens: the innermost/latest opening wins.
                answer_open = (start, end)
                if think_open is not None and first_answer_in_open_think is None:
                    first_answer_in_open_think = start
            elif answer_open is not None:
                spans.append((answer_open[0], answer_open[1], start))
                answer_open = None
    if think_open is not None:
        # Never closed: the reasoning runs until the model starts answering (a model
        # that forgets </think> still answers), or to the end (truncated reasoning).
        stop = first_answer_in_open_think if first_answer_in_open_think is not None else n
        regions.append((think_open[0], stop, think_open[1], stop))
    if answer_open is not None:
        # Truncated generation: an unclosed final <answer> runs to the end of the text.
        spans.append((answer_open[0], answer_open[1], n))
    return regions, spans


def _in_regions(pos: int, regions: list[tuple[int, int, int, int]], starts: list[int]) -> bool:
    i = bisect.bisect_right(starts, pos) - 1
    return i >= 0 and regions[i][0] <= pos < regions[i][1]


def _outside_regions(text: str, regions: list[tuple[int, int, int, int]]) -> str:
    parts = []
    pos = 0
    for start, end, _, _ in regions:
        parts.append(text[pos:start])
        pos = end
    parts.append(text[pos:])
    return "\n".join(parts)


def _pick_span(
    spans: list[tuple[int, int, int]], regions: list[tuple[int, int, int, int]]
) -> tuple[tuple[int, int, int] | None, bool]:
    """The answer span to read and whether it is only a draft inside reasoning."""
    if not spans:
        return None, False
    starts = [r[0] for r in regions]
    outside = [s for s in spans if not _in_regions(s[0], regions, starts)]
    if outside:
        return outside[-1], False
    return spans[-1], True


# ---------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------


def _clean(s: str) -> str:
    """Remove formatting that wraps an answer without changing it."""
    s = unicodedata.normalize("NFKC", s)  # full-width letters, ligatures, odd spaces
    if len(s) > CLEAN_MAX:  # an expanded tail is noise; keep its end, where an answer would be
        s = s[-CLEAN_MAX:]
    s = ZERO_WIDTH_RE.sub("", s)
    s = CTRL_RE.sub(" ", s)
    s = SPECIAL_TOKEN_RE.sub(" ", s)
    s = TAG_RE.sub(" ", s)
    s = HTML_TAG_RE.sub(" ", s)
    for _ in range(4):  # peel \boxed{\text{B}} from the inside out
        new = LATEX_WRAP_RE.sub(r"\1", s)
        new = LATEX_BOXED_RE.sub(r" answer: \1 ", new)
        if new == s:
            break
        s = new
    s = LATEX_DELIM_RE.sub(" ", s)
    s = MD_CHARS_RE.sub("", s)
    s = MD_UNDERSCORE_RE.sub("", s)
    s = HEADING_RE.sub("", s)
    return s


def _norm(s: str) -> str:
    """Case/punctuation/whitespace-insensitive form used to compare option texts."""
    return NON_WORD_RE.sub(" ", unicodedata.normalize("NFKC", s).casefold()).strip()


def _prepare(options: object) -> tuple[frozenset[str], tuple[tuple[str, str], ...]] | None:
    """Valid keys (single uppercase letters) and (key, normalised text) pairs."""
    if not isinstance(options, Mapping):
        return None
    keys = set()
    texts = []
    for key, value in options.items():
        if isinstance(key, str) and len(key) == 1 and "A" <= key <= "Z":
            keys.add(key)
            if isinstance(value, str):
                t = _norm(value)
                if t:
                    texts.append((key, t))
    if not keys:
        return None
    return frozenset(keys), tuple(texts)


def _letter(m: re.Match, bracket_group: int, bare_group: int, text: str) -> str | None:
    """The letter a LETTER match captured, or None when it is an English word."""
    ch = m.group(bracket_group)
    if ch:
        return ch.upper()
    ch = m.group(bare_group)
    if not ch:
        return None
    # 'a' and 'i'/'I' followed by a lowercase word are the article / the pronoun.
    # Uppercase 'A' is kept: "Answer: A because ..." is far more common than an
    # article right after an answer marker.
    if ch in "aiI" and FOLLOW_WORD_RE.match(text, m.end(bare_group)):
        return None
    return ch.upper()


def _prefix_option(s: str, texts: tuple[tuple[str, str], ...]) -> set[str]:
    """Keys of the longest option text that ``s`` starts with (as whole words)."""
    n = _norm(s)
    best: set[str] = set()
    best_len = 0
    if not n:
        return best
    for key, t in texts:
        if n == t or n.startswith(t + " "):
            if len(t) > best_len:
                best, best_len = {key}, len(t)
            elif len(t) == best_len:
                best.add(key)
    return best


def _support_ok(letter: str, s: str, keys: frozenset[str], texts) -> bool:
    """Whether text written right after a chosen letter agrees with it.

    It disagrees when it starts with another option's text ("B. <text of C>") or
    enumerates another option ("B. ... (C) ...").
    """
    for m in ENUM_MARK_RE.finditer(s):
        other = (m.group(1) or m.group(2)).upper()
        if other != letter and other in keys:
            return False
    found = _prefix_option(s, texts)
    return not found or letter in found


def _explicit(text: str, markers: tuple[re.Pattern, ...], keys: frozenset[str], texts):
    """Letters stated by explicit markers; a letter, None (conflict) or NOTHING."""
    letters: set[str] = set()
    count = 0
    for marker in markers:
        letter_first = marker is LETTER_IS_ANSWER_RE
        # The letter is the first two groups of a letter-first pattern and the last
        # two of every other marker (see LETTER).
        groups = (1, 2) if letter_first else (marker.groups - 1, marker.groups)
        for m in marker.finditer(text):
            first = _letter(m, groups[0], groups[1], text)
            if first is None:
                continue
            count += 1
            if count > MAX_EXPLICIT:  # hundreds of answer statements: noise
                return None
            group = {first}
            pos = m.end()
            if letter_first:
                tail = LIST_TAIL_RE.search(text, max(0, m.start() - 24), m.start())
                if tail:  # "A or B is the answer" names two letters
                    group.add((tail.group(1) or tail.group(2)).upper())
            else:
                for _ in range(32):  # "A, B, C or D" lists are short
                    c = CONT_RE.match(text, pos)
                    if not c:
                        break
                    nxt = _letter(c, 1, 2, text)
                    if nxt is None:
                        break
                    group.add(nxt)
                    pos = c.end()
            line_end = text.find("\n", pos)
            if line_end == -1:
                line_end = len(text)
            support = text[pos : min(line_end, pos + ATTACH_MAX)]
            # Plain "Option X" is a vote only if it reads as a statement of the choice.
            if (
                marker is OPTION_MARK_RE
                and not m.group(1)
                and len(group) == 1
                and not (
                    ONLY_PUNCT_RE.fullmatch(support)
                    or AFFIRM_RE.match(support)
                    or first in _prefix_option(support, texts)
                )
            ):
                continue
            letters |= group
            if len(letters) > 1:
                return None
            if not _support_ok(first, support, keys, texts):
                return None
    if not letters:
        return NOTHING
    (letter,) = letters
    return letter if letter in keys else None


def _pairs_conflict(text: str, keys: frozenset[str], allowed: str | None = None) -> bool:
    """True when two different option letters are joined ("A or B") anywhere."""
    for m in PAIR_RE.finditer(text):
        a = m.group(1) or m.group(2)
        b = m.group(3) or m.group(4)
        if m.group(4) == "I" and FOLLOW_WORD_RE.match(text, m.end(4)):
            continue  # "... A and I think ..."
        a, b = a.upper(), b.upper()
        if a in keys and b in keys and (a != b or (allowed is not None and a != allowed)):
            return True
    return False


def _option_text_choice(text: str, texts):
    """Choice by option text contained in ``text``; letter, None or NOTHING."""
    if not texts:
        return NOTHING
    hay = " " + _norm(text) + " "
    occurrences: dict[str, list[tuple[int, int]]] = {}
    total = 0
    for t in {t for _, t in texts}:  # identical texts are searched once
        needle = " " + t + " "
        found = []
        i = hay.find(needle)
        while i != -1:
            found.append((i, i + len(needle)))
            total += 1
            if total > MAX_OCCURRENCES:
                return None  # a wall of option texts is not an answer
            i = hay.find(needle, i + 1)
        if found:
            occurrences[t] = found  # ascending, as find() scans left to right
    if not occurrences:
        return NOTHING
    # An occurrence of "grade 1" inside an occurrence of "grade 1 mild" is part of the
    # longer option, not a mention of the shorter one.
    starts = {t: [s for s, _ in occ] for t, occ in occurrences.items()}
    chosen_texts = set()
    negated = False
    for t, occ in occurrences.items():
        longer = [u for u in occurrences if len(u) > len(t) and (" " + t + " ") in (" " + u + " ")]
        for s, e in occ:
            covered = False
            for u in longer:
                # Occurrences of u all have the same length, so the last one starting
                # at or before s is the only one that can cover [s, e).
                j = bisect.bisect_right(starts[u], s) - 1
                if j >= 0 and occurrences[u][j][1] >= e:
                    covered = True
                    break
            if covered:
                continue
            # "no pneumonia", "rather than effusion": a mention, not a choice.
            if NEGATION_RE.search(hay, max(0, s - 24), s + 1):
                negated = True
                continue
            chosen_texts.add(t)
            break
    chosen = {key for key, t in texts if t in chosen_texts}
    if len(chosen) == 1:
        return next(iter(chosen))
    return None if chosen or negated else NOTHING


def _lone_letter(s: str) -> str | None:
    m = LONE_RE.fullmatch(s.strip().strip(QUOTES))
    return m.group(1).upper() if m else None


def _parse_piece(raw: str, keys: frozenset[str], texts):
    """Read one piece of text (answer span or non-reasoning remainder).

    Returns a key, None (a decisive no: ambiguous, invalid letter, conflict) or
    NOTHING (no candidate at all).
    """
    text = _clean(raw)
    core = text.strip().strip(QUOTES).strip()
    if not core:
        return NOTHING

    # 1. The whole piece is one letter ("B", "(b)", "C."); any case, since nothing
    #    else is there to make it a word.
    lone = _lone_letter(core)
    if lone is not None:
        return lone if lone in keys else None

    # 2. The whole piece is exactly one option's text.
    n = _norm(core)
    exact = {key for key, t in texts if t == n}
    if exact:
        return next(iter(exact)) if len(exact) == 1 else None

    # 3. Explicit answer statements, then weaker "option X" statements.
    for markers in MARKER_TIERS:
        res = _explicit(text, markers, keys, texts)
        if res is not NOTHING:
            return res

    # 4. The whole piece is a list of letters: "A or C", "Both B and D", "B, B".
    if len(core) <= LIST_MAX:
        parts = [p for p in LIST_SPLIT_RE.split(LIST_PREFIX_RE.sub("", core)) if p.strip()]
        if len(parts) >= 2:
            letters = [_lone_letter(p) for p in parts]
            if all(letters):
                distinct = set(letters)
                if len(distinct) == 1 and letters[0] in keys:
                    return letters[0]
                return None

    # 5. A leading letter followed by its own text: "B. Normal tissue", "(B) text".
    m = LEAD_RE.match(core)
    if m and (
        m.group(1)
        or not m.group(3)[:1].islower()
        or (core[m.end(2)] != "." and m.group(2) not in "aiI")
        or _prefix_option(m.group(3), texts)
    ):
        # A bare letter + '.' + lowercase prose is usually an abbreviation ("E. coli",
        # "A. fumigatus"), and a/i/I + lowercase prose is English; those need their
        # option text to follow to count as a letter.
        letter = (m.group(1) or m.group(2)).upper()
        return _with_rest(letter, m.group(3), keys, texts)
    m = LEAD_SPACE_RE.match(core)
    if m and _prefix_option(m.group(2), texts):
        return _with_rest(m.group(1), m.group(2), keys, texts)

    # 6. Hedges between letters anywhere make any text-based reading a guess.
    if _pairs_conflict(text, keys):
        return None

    # 7. Option text mentioned in the piece, unless another option's letter is
    #    enumerated next to it ("pneumonia (C)" with C = effusion).
    res = _option_text_choice(text, texts)
    if isinstance(res, str):
        for m in ENUM_MARK_RE.finditer(text):
            other = (m.group(1) or m.group(2)).upper()
            if other != res and other in keys:
                return None
    return res


def _with_rest(letter: str, rest: str, keys: frozenset[str], texts):
    """Validate what follows a leading letter; letter or None."""
    if letter not in keys:
        return None
    rest = rest.strip()
    if not rest:
        return letter
    other = _lone_letter(rest)
    if other is not None:  # "B. B" is B; "B. C" is two answers
        return letter if other == letter else None
    for markers in MARKER_TIERS:
        res = _explicit(rest, markers, keys, texts)
        if res is not NOTHING:
            return letter if res == letter else None
    if _pairs_conflict(rest, keys, allowed=letter):
        return None
    return letter if _support_ok(letter, rest, keys, texts) else None


# ---------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------


def _extract(response: str, options: Mapping[str, str]) -> str | None:
    prepared = _prepare(options)
    if prepared is None or not isinstance(response, str):
        return None
    keys, texts = prepared
    if len(response) > TAIL_CHARS:
        # A head cut off mid-reasoning leaves a bare </think>, which closes reasoning that started
        # at the beginning of the (cut) text: drafts in it stay reasoning.
        response = response[-TAIL_CHARS:]
    regions, spans = _structure(response)
    span, is_draft = _pick_span(spans, regions)
    if span is not None and not is_draft:
        # An answer tag outside the reasoning is final: read only inside it and never
        # fall back to the reasoning, even when it is empty or ambiguous. Several final
        # tags that name different options are no single answer.
        starts = [r[0] for r in regions]
        finals = [s for s in spans if not _in_regions(s[0], regions, starts)][-MAX_FINAL_SPANS:]
        results = [_parse_piece(response[s[1] : s[2]], keys, texts) for s in finals]
        if len({r for r in results if isinstance(r, str)}) > 1:
            return None
        res = results[-1]
        return None if res is NOTHING else res
    remainder = _outside_regions(response, regions)
    if remainder.strip():
        res = _parse_piece(remainder, keys, texts)
        if res is not NOTHING or span is None:
            return None if res is NOTHING else res
    if span is not None:
        # The only answer tag is inside the reasoning and nothing after it answers:
        # the tag is still the model's stated answer.
        res = _parse_piece(response[span[1] : span[2]], keys, texts)
        return None if res is NOTHING else res
    return None  # only reasoning: never mine it for letters


def extract_choice(response: str, options: dict[str, str]) -> str | None:
    """Return the single option letter chosen in ``response``, or None.

    The result is always a key of ``options``. Rules, in priority order:
    the last ``<answer>`` span outside the reasoning (or an unclosed final one),
    read on its own; else the text outside ``<think>`` blocks; never the reasoning
    itself. Hedged, conflicting or unreadable answers give None. Never raises.
    """
    try:
        return _extract(response, options)
    except Exception:  # untrusted text: a parser bug must score as "no answer", not crash a run
        return None


def split_think_answer(response: str) -> tuple[str | None, str | None]:
    """(content of the last think block, content of the answer span that is read).

    Contents are whitespace-stripped; an element is None when that part is absent
    (an empty block gives ""). A bare ``</think>`` closes reasoning that started at
    the beginning of the text; an unclosed ``<think>`` runs to the next ``<answer>``
    or the end. The answer span is the last one outside the reasoning, else the last
    one at all; an unclosed final ``<answer>`` runs to the end. Never raises.
    """
    try:
        if not isinstance(response, str):
            return None, None
        regions, spans = _structure(response)
        think = None
        if regions:
            _, _, cs, ce = regions[-1]
            think = response[cs:ce].strip()
        span, _ = _pick_span(spans, regions)
        answer = response[span[1] : span[2]].strip() if span is not None else None
        return think, answer
    except Exception:  # same contract as extract_choice
        return None, None


def has_strict_format(response: str) -> bool:
    """True iff ``response`` is exactly ``<think>...</think><answer>...</answer>``.

    Only whitespace may surround the two blocks, each tag appears exactly once
    (written exactly like that: lowercase, no inner spaces; any other think/answer
    tag variant counts as an extra tag) and the answer is not blank. The think
    content may be empty. Never raises.
    """
    try:
        if not isinstance(response, str):
            return False
        tags = list(TAG_RE.finditer(response))
        expected = ("<think>", "</think>", "<answer>", "</answer>")
        if len(tags) != 4 or tuple(m.group(0) for m in tags) != expected:
            return False
        t_open, t_close, a_open, a_close = tags
        if response[: t_open.start()].strip():
            return False
        if response[t_close.end() : a_open.start()].strip():
            return False
        if response[a_close.end() :].strip():
            return False
        return bool(response[a_open.end() : a_close.start()].strip())
    except Exception:  # same contract as extract_choice
        return False


def final_answer_span(response: str, options: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """Character span [start, end) of the answer this extractor reads, whitespace trimmed (GRPO-CARE's
    consistency scores exactly these characters): the last answer tag outside the reasoning, an unclosed
    final tag running to the end; a draft inside ``<think>`` only when nothing outside the reasoning answers
    (judged with ``options``; without them, only when nothing is written after the reasoning); else None."""
    if not isinstance(response, str):
        return None
    regions, spans = _structure(response)
    span, is_draft = _pick_span(spans, regions)
    if span is None:
        return None
    if is_draft:
        remainder = _outside_regions(response, regions)
        if remainder.strip():
            prepared = _prepare(options) if options else None
            if prepared is None or _parse_piece(remainder, *prepared) is not NOTHING:
                return None  # the extractor reads the text after the reasoning, not this draft
    start, end = span[1], span[2]
    body = response[start:end]
    start, end = start + len(body) - len(body.lstrip()), end - (len(body) - len(body.rstrip()))
    return (start, end) if end > start else None
