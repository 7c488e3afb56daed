"""The patterns and limits the answer extractor (``answers.py``) reads responses with.

Every regex runs in linear time (bounded quantifiers, character classes that cannot cross their own
delimiters), because responses are untrusted and can be hundreds of KB of garbage; the limits below
bound the work per response. Kept apart from the rules so each file reads as one job.
"""

from __future__ import annotations

import re

# Any think/answer tag, tolerant of case and a little whitespace ("< /Answer >").
# Whitespace runs are bounded so a '<' followed by a huge blank run costs O(1).
TAG_RE = re.compile(
    r"<\s{0,16}(/?)\s{0,16}(think|answer)\s{0,16}>",
    re.IGNORECASE,
)

# Invisible / control characters that would otherwise split tokens or hide letters.
ZERO_WIDTH_RE = re.compile("[\u200b-\u200f\u2060\ufeff\u00ad]")
CTRL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
# Chat-template special tokens such as <|im_end|>.
SPECIAL_TOKEN_RE = re.compile(r"<\|[^<>|]{0,64}\|>")
# HTML-ish tags. A one-letter tag name only counts for real formatting tags (b/i/u/s/p)
# so that an answer written as "<C>" keeps its letter. [^<>]* cannot cross another
# '<', which keeps the scan linear.
HTML_TAG_RE = re.compile(
    r"<(?:/[A-Za-z][^<>]*|[A-Za-z][A-Za-z0-9]+(?:\s[^<>]*)?/?|[bBiIuUsSpP](?:\s[^<>]*)?)>"
)
# \boxed{X} is an explicit final-answer marker in math-style outputs; it is rewritten
# to "answer: X" so the explicit-answer rule sees it. [^{}]* keeps it linear; nested
# wrappers are peeled by repeating the substitution a bounded number of times.
LATEX_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s{0,8}\{([^{}]*)\}")
LATEX_WRAP_RE = re.compile(
    r"\\(?:text|textbf|textit|texttt|mathrm|mathbf|mathit|mathsf|emph|underline)\s{0,8}\{([^{}]*)\}"
)
LATEX_DELIM_RE = re.compile(r"\\[()\[\]]|\$")
MD_CHARS_RE = re.compile(r"[*`~]+")
# Underscores used as markdown emphasis (_B_), but not inside words (lung_left).
MD_UNDERSCORE_RE = re.compile(r"(?<![A-Za-z0-9])_+|_+(?![A-Za-z0-9])")
HEADING_RE = re.compile(r"(?m)^[ \t]*#+[ \t]*")

# Normalisation used to compare option texts: everything that is not a letter/digit
# becomes one space, so case, punctuation and spacing never matter.
NON_WORD_RE = re.compile(r"[\W_]+")

# One letter, optionally bracketed, used in several patterns. A bare letter must not
# be followed by something that makes it part of a word ("Both", "X-ray", "I'm").
LETTER = r"(?:[(\[]\s{0,4}([A-Za-z])\s{0,4}[)\]]|([A-Za-z])(?![A-Za-z0-9'\u2019\-]))"

# Explicit answer statements: "answer: B", "The final answer is (C).", "answer -> D",
# "answer is option B", "Answer: Both B and D" (continuation handled separately).
# Connectors repeat possessively, so a failed match never backtracks through them.
ANSWER_MARK_RE = re.compile(
    r"\banswers?\b"
    r"(?:\s*+(?:(?:is|are|was|would\s+be|should\s+be|will\s+be|must\s+be|shall\s+be|"
    r"likely|probably|therefore|thus|then|clearly|option|choice|letter|both|either)\b"
    r"|[:=>\-\u2013\u2014]))*+"
    r"\s*+" + LETTER,
    re.IGNORECASE,
)
# The letter first: "B is the correct answer", "(C) would be the best option".
# Bare letters must be uppercase so "a is ..." / "i is ..." never count.
LETTER_IS_ANSWER_RE = re.compile(
    r"(?<![A-Za-z0-9])(?:[(\[]\s{0,4}([A-Za-z])\s{0,4}[)\]]|([A-Z]))\s*+"
    r"(?i:(?:is|would\s+be|seems\s+to\s+be|appears\s+to\s+be)\s+(?:the\s+)?"
    r"(?:(?:most\s+likely|correct|right|best|final)\s+)?(?:answer|option|choice)\b"
    r"|is\s+(?:correct|right)\b)"
)
# "A or " just before a letter-first statement ("A or B is the answer").
LIST_TAIL_RE = re.compile(
    r"(?<![A-Za-z0-9])(?:[(\[]\s{0,4}([A-Za-z])\s{0,4}[)\]]|([A-Z]))"
    r"\s*(?i:,|/|&|\band/or\b|\bor\b|\band\b)\s*$"
)
# Option statements: "Option B", "option (b)", "I choose B", "the best option is C".
# Group 1 marks the strong forms (a choice is being made). A plain "Option A" is often
# just a mention in an explanation ("Option A describes ..."), so it only counts when
# nothing but punctuation, that option's own text or an affirmation follows it.
OPTION_MARK_RE = re.compile(
    r"\b(?:((?:correct|best|right|final|most\s+(?:likely|appropriate|probable))\s+"
    r"(?:options?|choices?)|choose|select|pick|go\s+with)|options?|choices?)\b"
    r"\s*+(?:(?:is|no\.?|number|:|#)\s*+)?+" + LETTER,
    re.IGNORECASE,
)
AFFIRM_RE = re.compile(
    r"[\s,:\-]*(?:is|seems|appears|would\s+be)?\s*(?:to\s+be\s+)?(?:the\s+)?"
    r"(?:correct|right|best|most\s+likely|answer)\b",
    re.IGNORECASE,
)
ONLY_PUNCT_RE = re.compile(r"[\s.:;!)\]]*")
# "... B or C", "B, C", "B and/or (D)" right after an explicit letter.
CONT_RE = re.compile(
    r"\s*+(?:,|/|&|\+|\band/or\b|\bor\b|\band\b|\bvs\b\.?)\s*+(?:(?:options?|choices?)\s*+)?+"
    + LETTER,
    re.IGNORECASE,
)
# After a bare 'a' / 'i' / 'I': a following lowercase word means it is English
# ("a melanoma", "I think"), not an option letter.
FOLLOW_WORD_RE = re.compile(r"[ \t]+[a-z]")

# A whole piece that is just one letter: "B", "b", "(B)", "[B].", "B)", "B:", "<C>".
LONE_RE = re.compile(r"[(\[{<]?\s{0,4}([A-Za-z])\s{0,4}[)\]}>]?\s{0,4}[.:;,!]?")
# Leading letter with a separator, then anything: "B. text", "(B) text", "B: text",
# "B - text", "B\ntext", "B, because ...", "B (most likely)". Separators must be
# followed by whitespace so "i.e." and "e.g." are not letters.
LEAD_RE = re.compile(
    r"(?:[(\[]\s{0,4}([A-Za-z])\s{0,4}[)\]]\s*+[.:\-\u2013\u2014]?"
    r"|([A-Za-z])(?:[.:)\],;](?=\s|$)|[ \t]*(?=\n)|[ \t]+[\-\u2013\u2014](?=\s)|[ \t]+(?=\()))"
    r"\s*+(.*)",
    re.DOTALL,
)
# Leading uppercase letter + space + capitalised text: "B Normal breast tissue".
# Only accepted when the text after it is an option text (checked in code).
LEAD_SPACE_RE = re.compile(r"([A-Z])[ \t]+(?=[A-Z0-9])(.*)", re.DOTALL)
# Separators for a whole-piece list of letters: "A or C", "A, C", "Both B and D".
LIST_PREFIX_RE = re.compile(r"^(?:both|either|options?|choices?)\s+", re.IGNORECASE)
LIST_SPLIT_RE = re.compile(
    r"\s*(?:,|/|&|;|\+|\band/or\b|\bor\b|\band\b|\bvs\b\.?)\s*", re.IGNORECASE
)
# Two letters joined anywhere in a text ("A or B. Normal tissue"): a hedge.
# Bare letters must be uppercase here (lowercase ones are ordinary words); only the
# connectors are case-insensitive.
PAIR_RE = re.compile(
    r"(?<![A-Za-z0-9])(?:[(\[]\s{0,4}([A-Za-z])\s{0,4}[)\]]|([A-Z])(?![A-Za-z0-9'\u2019\-]))"
    r"\s*+(?i:,|/|&|\band/or\b|\bor\b|\band\b|\bvs\b\.?)\s*+"
    r"(?:[(\[]\s{0,4}([A-Za-z])\s{0,4}[)\]]|([A-Z])(?![A-Za-z0-9'\u2019\-]))"
)
# Another option being enumerated inside supporting text: "(C)", "C. something".
ENUM_MARK_RE = re.compile(
    r"(?<![A-Za-z0-9])(?:[(\[]\s{0,4}([A-Za-z])\s{0,4}[)\]]|([A-Z])[.):](?=[ \t]+\S))"
)

# A negation right before an option text (matched on _norm()ed text, which is
# lowercase words separated by single spaces).
NEGATION_RE = re.compile(
    r"\b(?:no|not|non|nor|neither|without|absent|absence of|negative for|free of|"
    r"exclude[sd]?|excluding|ruled out|rule out|rather than|instead of|other than|than|"
    r"unlikely|less likely) $"
)

# Explicit statements in decreasing strength; the first tier with a letter decides.
MARKER_TIERS = ((ANSWER_MARK_RE, LETTER_IS_ANSWER_RE), (OPTION_MARK_RE,))

QUOTES = "\"'\u201c\u201d\u2018\u2019\u00ab\u00bb\u300c\u300d "
# Beyond these sizes a text is noise, not an answer; capping keeps work bounded.
ATTACH_MAX = 400
LIST_MAX = 200
MAX_EXPLICIT = 256
MAX_OCCURRENCES = 5000
# Only the response's tail is read: the final answer closes a reasoning trace, and bounding the
# input bounds the time (600 KB of U+FDFA once took seconds). 8,000 characters hold the answer tag
# and the closing sentences of any trace; the cleaned text is capped again because NFKC can expand
# one character into eighteen.
TAIL_CHARS = 8000
CLEAN_MAX = 8000
# Final answer tags compared for disagreement (the last ones outside the reasoning).
MAX_FINAL_SPANS = 8

# Returned by the piece parser when it found no candidate at all (as opposed to an
# ambiguous/invalid one, which is a final None).
NOTHING = object()
