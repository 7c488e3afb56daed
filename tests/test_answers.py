"""Tests for medbridge.harness_ext.answers (answer extraction and format checks)."""

from __future__ import annotations

import string
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from medbridge.harness_ext import answer_patterns, answers
from medbridge.harness_ext.answers import (
    EXTRACTOR_VERSION,
    extract_choice,
    has_strict_format,
    split_think_answer,
)

# ---------------------------------------------------------------------------------
# Option sets resembling the benchmarks
# ---------------------------------------------------------------------------------

BREAST = {"A": "Malignant breast lesion", "B": "Normal or benign breast tissue"}
CXR = {"A": "Pneumonia", "B": "Normal", "C": "Pleural effusion", "D": "Cardiomegaly"}
GRADE = {"A": "Grade 1", "B": "Grade 1 (mild)", "C": "Grade 2", "D": "Grade 3"}
EFFUSION = {"A": "Effusion", "B": "Pleural effusion", "C": "Mass"}
ORGAN = {"A": "lung-left", "B": "lung-right", "C": "liver", "D": "heart"}
DERM = {"A": "Actinic keratosis", "B": "Basal cell carcinoma", "C": "Nevus", "D": "Dermatofibroma"}
CHEST14 = dict(
    zip(
        "ABCDEFGHIJKLMN",
        [
            "Atelectasis",
            "Cardiomegaly",
            "Effusion",
            "Infiltration",
            "Mass",
            "Nodule",
            "Pneumonia",
            "Pneumothorax",
            "Consolidation",
            "Edema",
            "Emphysema",
            "Fibrosis",
            "Pleural thickening",
            "Hernia",
        ],
    )
)
SIXTEEN = {letter: f"Tissue class {i}" for i, letter in enumerate("ABCDEFGHIJKLMNOP", 1)}
SIXTEEN["P"] = "Adipose tissue"
LUNG = {"A": "Small cell carcinoma", "B": "Non-small cell carcinoma", "C": "Lymphoma"}
INFECT = {"A": "Hepatitis B", "B": "Hepatitis C", "C": "E. coli infection", "D": "Normal"}

T = "<think>The lesion has smooth margins and homogeneous echotexture.</think>"

CASES = [
    # --- answer tag with a letter ---------------------------------------------------
    ("tag-letter", T + "<answer>B</answer>", BREAST, "B"),
    ("tag-letter-lower", T + "<answer>b</answer>", BREAST, "B"),
    ("tag-letter-lower-a", T + "<answer>a</answer>", BREAST, "A"),
    ("tag-whitespace", T + "\n\n<answer>\n  C \n</answer>\n", CXR, "C"),
    ("tag-case", "<THINK>x</THINK><Answer>D</ANSWER>", CXR, "D"),
    ("tag-inner-space", "<think>x</think>< answer >C</ answer >", CXR, "C"),
    ("tag-parens", T + "<answer>(B)</answer>", BREAST, "B"),
    ("tag-brackets", T + "<answer>[C]</answer>", CXR, "C"),
    ("tag-period", T + "<answer>B.</answer>", BREAST, "B"),
    ("tag-close-paren", T + "<answer>D)</answer>", CXR, "D"),
    ("tag-colon", T + "<answer>A:</answer>", CXR, "A"),
    ("tag-quotes", T + '<answer>"C"</answer>', CXR, "C"),
    ("tag-angle-letter", T + "<answer><C></answer>", CXR, "C"),
    ("tag-option-word", T + "<answer>Option B</answer>", CXR, "B"),
    ("tag-option-paren-lower", T + "<answer>option (b)</answer>", CXR, "B"),
    ("tag-answer-is", T + "<answer>The answer is C</answer>", CXR, "C"),
    ("tag-answer-colon", T + "<answer>Answer: A</answer>", CXR, "A"),
    ("tag-fullwidth", T + "<answer>\uff22</answer>", CXR, "B"),
    ("tag-zero-width", T + "<answer>\u200bC\u200b</answer>", CXR, "C"),
    ("tag-control-chars", T + "<answer>\x00\x07B\x1b</answer>", CXR, "B"),
    ("tag-special-token", T + "<answer>C</answer><|im_end|>", CXR, "C"),
    # --- letter + option text ----------------------------------------------------------
    ("letter-dot-text", T + "<answer>B. Normal or benign breast tissue</answer>", BREAST, "B"),
    ("letter-paren-text", T + "<answer>(B) Normal or benign breast tissue</answer>", BREAST, "B"),
    ("letter-colon-text", T + "<answer>C: Pleural effusion</answer>", CXR, "C"),
    ("letter-dash-text", T + "<answer>D - Cardiomegaly</answer>", CXR, "D"),
    ("letter-space-text", T + "<answer>B Normal or benign breast tissue</answer>", BREAST, "B"),
    ("letter-text-disagree", T + "<answer>B. Malignant breast lesion</answer>", BREAST, None),
    ("letter-text-disagree-paren", T + "<answer>(A) Normal or benign breast tissue</answer>", BREAST, None),
    ("answer-is-letter-text", T + "<answer>The answer is C (Pleural effusion).</answer>", CXR, "C"),
    ("answer-letter-text-disagree", "Answer: C. Pneumonia", CXR, None),
    ("letter-text-lowercase", T + "<answer>b. normal or benign breast tissue</answer>", BREAST, "B"),
    ("letter-repeated", T + "<answer>B. B</answer>", CXR, "B"),
    ("letter-then-other-letter", T + "<answer>B. C</answer>", CXR, None),
    ("letter-text-then-other-option", "<answer>A. Pneumonia or B. Normal</answer>", CXR, None),
    # --- option text only ---------------------------------------------------------------
    ("text-only", T + "<answer>Normal or benign breast tissue</answer>", BREAST, "B"),
    ("text-case-punct", T + "<answer>  normal OR benign, breast-tissue!! </answer>", BREAST, "B"),
    ("text-in-sentence", T + "<answer>The findings indicate pleural effusion.</answer>", CXR, "C"),
    ("text-two-options", T + "<answer>Pneumonia or pleural effusion</answer>", CXR, None),
    ("text-hyphen-option", T + "<answer>Lung left</answer>", ORGAN, "A"),
    ("text-hyphen-option-exact", T + "<answer>lung-right</answer>", ORGAN, "B"),
    ("substring-short", T + "<answer>Grade 1</answer>", GRADE, "A"),
    ("substring-long", T + "<answer>grade 1 (mild)</answer>", GRADE, "B"),
    ("substring-long-in-sentence", T + "<answer>This is grade 1 (mild) disease.</answer>", GRADE, "B"),
    ("substring-effusion-long", T + "<answer>Pleural Effusion</answer>", EFFUSION, "B"),
    ("substring-effusion-short", T + "<answer>effusion</answer>", EFFUSION, "A"),
    ("substring-letter-agrees", T + "<answer>B. Grade 1 (mild)</answer>", GRADE, "B"),
    ("substring-letter-short-agrees", T + "<answer>A. Grade 1</answer>", GRADE, "A"),
    ("option-text-with-letter-inside", T + "<answer>Hepatitis B</answer>", INFECT, "A"),
    ("option-text-with-letter-inside-2", T + "<answer>hepatitis c</answer>", INFECT, "B"),
    ("option-text-abbreviation", T + "<answer>E. coli infection</answer>", INFECT, "C"),
    ("text-negated-only", T + "<answer>No pneumonia.</answer>", CXR, None),
    ("text-negated-and-positive", T + "<answer>Not pneumonia; it is pleural effusion</answer>", CXR, "C"),
    ("text-rather-than", "Pleural effusion rather than pneumonia.", CXR, "C"),
    ("text-letter-conflict", T + "<answer>The diagnosis is pneumonia (C).</answer>", CXR, None),
    ("text-letter-agree", T + "<answer>The diagnosis is pleural effusion (C).</answer>", CXR, "C"),
    ("text-non-prefix-option", T + "<answer>non-small cell carcinoma</answer>", LUNG, "B"),
    ("b-cells-not-letter", "B cells are abundant, consistent with lymphoma.", LUNG, "C"),
    ("option-text-boxed", "\\boxed{Pleural effusion}", CXR, "C"),
    # --- markdown / LaTeX / HTML ---------------------------------------------------------
    ("md-bold", T + "<answer>**B**</answer>", BREAST, "B"),
    ("md-bold-answer", "**Answer:** C", CXR, "C"),
    ("md-backticks", T + "<answer>`D`</answer>", CXR, "D"),
    ("md-italic-underscore", T + "<answer>_A_</answer>", CXR, "A"),
    ("md-heading", T + "<answer>### Final answer\nB</answer>", CXR, "B"),
    ("latex-boxed", T + "<answer>$\\boxed{C}$</answer>", CXR, "C"),
    ("latex-boxed-text", "\\[\\boxed{\\text{D}}\\]", CXR, "D"),
    ("latex-text", T + "<answer>\\text{A}</answer>", CXR, "A"),
    ("html-bold", T + "<answer><b>C</b></answer>", CXR, "C"),
    # --- draft answers, fake answers, truncation ------------------------------------------
    (
        "draft-then-final",
        "<think>Maybe <answer>A</answer>? No, margins are smooth.</think><answer>B</answer>",
        BREAST,
        "B",
    ),
    (
        "fake-answer-in-think",
        "<think>Format: <answer>A</answer>. Looking at the image...</think>\n<answer>C</answer>",
        CXR,
        "C",
    ),
    # Two final answers that name different options are no single answer (issue 11).
    ("two-final-tags-disagree", T + "<answer>A</answer>\n<answer>D</answer>", CXR, None),
    ("draft-in-think-then-free-text", "<think>draft <answer>A</answer></think>The answer is C.", CXR, "C"),
    ("draft-in-think-only", "<think>so the answer is <answer>D</answer></think>", CXR, "D"),
    ("unclosed-answer", T + "<answer>B", BREAST, "B"),
    ("unclosed-answer-text", T + "<answer>C. Pleural eff", CXR, "C"),
    # A complete final answer and an unclosed one that disagree: no single answer (issue 11).
    ("unclosed-answer-after-complete", T + "<answer>A</answer><answer>C", CXR, None),
    ("unclosed-think-then-answer", "<think>reasoning without closing<answer>D</answer>", CXR, "D"),
    ("unclosed-think-truncated", "<think>The answer is B because", CXR, None),
    ("orphan-close-think", "The answer is A, wait.</think>\n<answer>C</answer>", CXR, "C"),
    ("orphan-close-think-free", "Reasoning: A or C?</think>\nThe answer is C", CXR, "C"),
    # --- empty / ambiguous answer tags never fall back to reasoning --------------------------
    ("empty-answer", "<think>The answer is B.</think><answer></answer>", CXR, None),
    ("blank-answer", "<think>The answer is B.</think><answer>  \n </answer>", CXR, None),
    ("ambiguous-tag-no-fallback", "<think>It is B.</think><answer>A or C</answer>", CXR, None),
    ("unreadable-tag-no-fallback", "<think>It is B.</think><answer>hard to say</answer>", CXR, None),
    # --- multiple answers -------------------------------------------------------------------
    ("a-or-b", T + "<answer>A or B</answer>", BREAST, None),
    ("a-comma-c", T + "<answer>A, C</answer>", CXR, None),
    ("a-and-b", T + "<answer>A and B</answer>", CXR, None),
    ("both-b-and-d", T + "<answer>Both B and D</answer>", CXR, None),
    ("slash", T + "<answer>B/C</answer>", CXR, None),
    ("answer-is-a-or-c", "The answer is A or C.", CXR, None),
    ("two-explicit-answers", "Answer: A\nOn reflection, final answer: B", CXR, None),
    ("parens-pair", T + "<answer>(A) or (C)</answer>", CXR, None),
    ("same-letter-twice", "Answer: B\nFinal answer: B", CXR, "B"),
    # --- no tags ------------------------------------------------------------------------------
    ("no-tags-answer-colon", "Answer: C", CXR, "C"),
    ("no-tags-paren", "(B)", CXR, "B"),
    ("no-tags-dot", "B.", CXR, "B"),
    ("no-tags-bare-a", "a", CXR, "A"),
    ("no-tags-bare-A", "A", CXR, "A"),
    ("no-tags-answer-is-paren", "answer is (C).", CXR, "C"),
    ("no-tags-final-answer", "Final answer: D", CXR, "D"),
    ("i-think-answer-is-b", "I think the answer is B", CXR, "B"),
    ("answer-because", "The answer is A because the opacity is lobar.", CXR, "A"),
    ("answer-not-x", "The correct answer is B, not A.", CXR, "B"),
    ("reasoning-then-answer", "Option A is unlikely given the margins.\nAnswer: B", CXR, "B"),
    ("choose", "I would choose D.", CXR, "D"),
    ("best-option", "The best option is C since fluid layers dependently.", CXR, "C"),
    ("option-affirmed", "Option C is correct.", CXR, "C"),
    ("option-mention-only", "Option A describes a lobar consolidation.", CXR, None),
    ("letter-is-answer", "B is the correct answer.", CXR, "B"),
    ("letter-is-answer-paren", "(C) would be the best option here.", CXR, "C"),
    ("letter-is-correct", T + "<answer>D is correct</answer>", CXR, "D"),
    ("either-letters-is-answer", "Either B or C is the answer.", CXR, None),
    ("not-the-answer-then-answer", "A is not the answer; C is the answer.", CXR, "C"),
    ("letter-paren-comment", T + "<answer>B (most likely)</answer>", CXR, "B"),
    ("letter-comma-reason", T + "<answer>B, because the heart size is normal</answer>", CXR, "B"),
    ("letter-newline-explanation", T + "<answer>C\n\nExplanation: blunted angle.</answer>", CXR, "C"),
    ("boxed-in-sentence", "Final Answer: The final answer is $\\boxed{C}$", CXR, "C"),
    ("answer-choice-is", "Answer: The correct choice is B", CXR, "B"),
    ("think-then-free-answer", T + "\nThe answer is B.", BREAST, "B"),
    ("think-then-option-text", T + "\nNormal or benign breast tissue", BREAST, "B"),
    # --- no choice at all -----------------------------------------------------------------------
    ("pure-reasoning", "<think>The answer is clearly B, normal tissue.</think>", BREAST, None),
    ("pure-reasoning-unclosed", "<think>Option A vs option B... I'd say B", BREAST, None),
    ("article-a", "a melanoma is likely", DERM, None),
    ("article-a-in-tag", T + "<answer>a melanoma is likely</answer>", DERM, None),
    ("pronoun-i", "I think", CHEST14, None),
    ("pronoun-i-sentence", "I believe this is abnormal.", CHEST14, None),
    ("free-text-no-option", "The image quality is poor.", CXR, None),
    ("answer-is-article", "The answer is a benign lesion.", CXR, None),
    ("answer-is-article-option", "The answer is a nevus.", DERM, "C"),
    ("empty-response", "", CXR, None),
    ("whitespace-response", " \n\t ", CXR, None),
    ("abbreviation-not-letter", "E. coli was cultured.", CXR, None),
    # --- letters outside the options ------------------------------------------------------------
    ("outside-bare", T + "<answer>E</answer>", CXR, None),
    ("outside-explicit", "Answer: F", CXR, None),
    ("outside-lowercase", T + "<answer>(z)</answer>", CXR, None),
    ("outside-with-text", T + "<answer>E. Pneumothorax</answer>", CXR, None),
    # --- many options --------------------------------------------------------------------------
    ("14-options-I", T + "<answer>I</answer>", CHEST14, "I"),
    ("14-options-I-text", T + "<answer>I. Consolidation</answer>", CHEST14, "I"),
    ("14-options-N", T + "<answer>Answer: N</answer>", CHEST14, "N"),
    ("14-options-text", T + "<answer>pleural thickening</answer>", CHEST14, "M"),
    ("14-options-O-outside", T + "<answer>O</answer>", CHEST14, None),
    ("14-options-i-think", T + "<answer>I think it is hernia</answer>", CHEST14, "N"),
    ("16-options-P", T + "<answer>P</answer>", SIXTEEN, "P"),
    ("16-options-O-paren", T + "<answer>(o)</answer>", SIXTEEN, "O"),
    ("16-options-text", T + "<answer>adipose tissue</answer>", SIXTEEN, "P"),
    ("16-options-substring-numbers", T + "<answer>Tissue class 1</answer>", SIXTEEN, "A"),
    ("16-options-substring-numbers-2", T + "<answer>tissue class 12</answer>", SIXTEEN, "L"),
]


@pytest.mark.parametrize(
    ("response", "options", "expected"),
    [pytest.param(r, o, e, id=name) for name, r, o, e in CASES],
)
def test_extract_choice_table(response, options, expected):
    assert extract_choice(response, options) == expected


def test_table_is_large_and_ids_unique():
    assert len(CASES) >= 60
    assert len({name for name, *_ in CASES}) == len(CASES)


def test_version_is_string():
    assert isinstance(EXTRACTOR_VERSION, str) and EXTRACTOR_VERSION == "2"


@pytest.mark.parametrize("bad", [None, 3, b"<answer>A</answer>", ["A"], object()])
def test_non_string_response(bad):
    assert extract_choice(bad, CXR) is None
    assert split_think_answer(bad) == (None, None)
    assert has_strict_format(bad) is False


@pytest.mark.parametrize("bad_options", [None, {}, ["A", "B"], {"a": "x"}, {"AB": "x", 1: "y"}])
def test_bad_options(bad_options):
    assert extract_choice("<answer>A</answer>", bad_options) is None


def test_non_string_option_values_still_accept_letters():
    assert extract_choice("<answer>B</answer>", {"A": None, "B": 3}) == "B"


# ---------------------------------------------------------------------------------
# split_think_answer / has_strict_format examples
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<think> reasoning </think><answer> B </answer>", ("reasoning", "B")),
        ("<think>a</think><think>b</think><answer>C</answer>", ("b", "C")),
        ("<think>x <answer>A</answer></think><answer>D</answer>", ("x <answer>A</answer>", "D")),
        ("<answer>A</answer> and <answer>C</answer>", (None, "C")),
        ("<think>only thinking", ("only thinking", None)),
        ("<think></think><answer></answer>", ("", "")),
        ("<think>x</think><answer>B", ("x", "B")),
        ("no tags at all", (None, None)),
        ("reasoning</think><answer>A</answer>", ("reasoning", "A")),
    ],
)
def test_split_think_answer(response, expected):
    assert split_think_answer(response) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<think>r</think><answer>B</answer>", True),
        ("  \n<think>r</think>\n\n<answer>B. Normal</answer>\n", True),
        ("<think></think><answer>B</answer>", True),
        ("<think>r</think><answer></answer>", False),
        ("<think>r</think><answer>  </answer>", False),
        ("<answer>B</answer>", False),
        ("<think>r</think>", False),
        ("<think>r</think>B", False),
        ("x<think>r</think><answer>B</answer>", False),
        ("<think>r</think>x<answer>B</answer>", False),
        ("<think>r</think><answer>B</answer>x", False),
        ("<think>r<think>s</think><answer>B</answer>", False),
        ("<think>r</think><answer>A</answer><answer>B</answer>", False),
        ("<think>r <answer>A</answer></think><answer>B</answer>", False),
        ("<answer>B</answer><think>r</think>", False),
        ("<THINK>r</THINK><ANSWER>B</ANSWER>", False),
        ("<think>r</think><answer>B", False),
        ("< think>r</think><answer>B</answer>", False),
        ("", False),
    ],
)
def test_has_strict_format(response, expected):
    assert has_strict_format(response) is expected


# ---------------------------------------------------------------------------------
# Adversarial inputs: no catastrophic backtracking, nothing raises
# ---------------------------------------------------------------------------------

N = 200_000
ADVERSARIAL = {
    "lt-spaces": "<" + " " * N,
    "lt-slash-spaces": "<" + " " * (N // 2) + "/" + " " * (N // 2),
    "answer-open": "<answer>" * (N // 8),
    "think-open": "<think>" * (N // 7),
    "mixed-tags": "<think></answer><answer></think>" * (N // 32),
    "answer-words": "answer " * (N // 7),
    "answer-colons": "answer: " * (N // 8) + "B",
    "answer-repeated-letter": "answer: B " * (N // 10),
    "answer-spaces": "answer" + " " * N + "x",
    "answer-connectors": "answer is is is : : - - " * (N // 24),
    "or-chain": "A or " * (N // 5),
    "comma-chain": "A, " * (N // 3),
    "option-words": "option " * (N // 7),
    "parens": "(" * N,
    "brackets-letter": "[B" * (N // 2),
    "boxed-open": "\\boxed{" * (N // 7),
    "boxed-nested": "\\boxed{\\text{" * (N // 13) + "B" + "}}" * (N // 13),
    "braces": "{" * N,
    "html-open": "<a" + "x" * N,
    "html-many": "<a " * (N // 3),
    "special-token": "<|" * (N // 2),
    "stars": "*" * N,
    "underscores": "_" * N,
    "letter-dots": "B. " * (N // 3),
    "nfkc-expanding": "\ufdfa" * (N // 10),
    "answer-span-huge": "<answer>" + "B " * (N // 2) + "</answer>",
    "answer-span-option-texts": "<answer>" + "grade 1 mild " * (N // 13) + "</answer>",
    "newlines": "\n" * N,
    "control": "\x00\x01\x02" * (N // 3),
    "pair-spaces": "A" + " " * N + "or",
    "lead-spaces": "B" + " " * N + "-",
    "think-unclosed-long": "<think>" + "x" * N,
    "letter-is-answer": "B is the answer " * (N // 16),
    "list-tail": " or B is the answer" * (N // 19),
    "pairs-paren": "(A) or (B) " * (N // 11),
    "negations": "no grade 1 mild " * (N // 16),
    "enum-marks": "A. x " * (N // 5),
    "option-dots": "option B. " * (N // 10),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_inputs_are_fast(name):
    text = ADVERSARIAL[name]
    options = {**GRADE, "E": "a", "F": "b c"}
    # CPU time, not wall time: a backtracking pattern burns CPU, a loaded machine only stretches the wall clock.
    start = time.process_time()
    result = answers._extract(text, options)
    split_think_answer(text)
    has_strict_format(text)
    elapsed = time.process_time() - start
    assert result is None or result in options
    assert elapsed < 1.0, f"{name} took {elapsed:.3f}s"


# ---------------------------------------------------------------------------------
# Property-based tests (about 11,000 generated cases in total)
# ---------------------------------------------------------------------------------

KEYS = "ABCDEFGHIJKLMNOP"
# Fragments that exercise the parser: tags, markers, letters, separators, markup.
FRAGMENTS = [
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "< Answer >",
    "</ANSWER>",
    "answer",
    "Answer:",
    " is ",
    "final answer",
    "option",
    "choice",
    " or ",
    " and ",
    ", ",
    "/",
    "both",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "\\boxed{",
    "\\text{",
    "$",
    "*",
    "**",
    "`",
    "_",
    "#",
    ".",
    ":",
    "-",
    "\n",
    " ",
    "\t",
    "I think",
    "a ",
    "A",
    "B",
    "C",
    "D",
    "E",
    "I",
    "P",
    "Z",
    "a",
    "b",
    "i",
    "grade 1",
    "mild",
    "Normal",
    "tissue",
    "\u200b",
    "\x00",
    "\uff22",
    "<|im_end|>",
    "<b>",
    "e.g.",
    "E. coli",
    "\ufdfa",
]
NOISE_FRAGMENTS = [f for f in FRAGMENTS if not answer_patterns.TAG_RE.search(f)] + [
    "The lesion is",
    " likely ",
    "not ",
    "I'd go with",
    "margins",
    "benign",
    "<",
    ">",
]
WORDS = [
    "normal",
    "benign",
    "malignant",
    "tissue",
    "lesion",
    "breast",
    "grade",
    "mild",
    "severe",
    "nodule",
    "mass",
    "effusion",
    "pleural",
    "cardiomegaly",
    "pneumonia",
    "edema",
    "left",
    "right",
    "lung",
    "liver",
    "kidney",
    "adipose",
    "stroma",
    "mucosa",
    "debris",
    "lymphocytes",
    "tumor",
    "epithelium",
    "muscle",
    "retinopathy",
    "proliferative",
    "moderate",
    "atelectasis",
    "hernia",
    "nevus",
    "melanoma",
]

noise_text = st.one_of(
    st.text(max_size=120).filter(lambda s: not answer_patterns.TAG_RE.search(s)),
    st.lists(st.sampled_from(NOISE_FRAGMENTS + WORDS), max_size=30)
    .map("".join)
    .filter(lambda s: not answer_patterns.TAG_RE.search(s)),
)


def _phrase_pool() -> list[str]:
    # Deterministic pool of distinct option texts built from medical words, including
    # texts that are word-prefixes/substrings of others ("grade", "grade mild").
    import random

    rng = random.Random(1234)
    pool = list(WORDS)
    seen = set(pool)
    while len(pool) < 400:
        phrase = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4)))
        if phrase not in seen:
            seen.add(phrase)
            pool.append(phrase)
    return pool


PHRASES = _phrase_pool()


@st.composite
def option_dicts(draw, min_size=2):
    # One draw for the size and one for the texts keeps generation cheap.
    n = draw(st.integers(min_value=min_size, max_value=16))
    start = draw(st.integers(min_value=0, max_value=len(PHRASES) - 1))
    step = draw(st.sampled_from([1, 7, 13, 31, 97]))
    texts = [PHRASES[(start + i * step) % len(PHRASES)] for i in range(n)]
    return dict(zip(KEYS[:n], texts))


arbitrary_options = st.one_of(
    option_dicts(min_size=1),
    st.dictionaries(
        st.one_of(st.sampled_from(list(KEYS)), st.text(max_size=3)),
        st.one_of(st.text(max_size=30), st.sampled_from(FRAGMENTS)),
        max_size=16,
    ),
)
arbitrary_text = st.one_of(
    st.text(max_size=400),
    st.text(alphabet=st.characters(), max_size=200),
    st.lists(st.sampled_from(FRAGMENTS + WORDS), max_size=60).map("".join),
)


@pytest.mark.slow  # a property over thousands of examples
@settings(max_examples=3000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(text=arbitrary_text, options=arbitrary_options)
def test_property_never_raises(text, options):
    # The private parser is called directly so that the public safety net
    # (try/except) cannot hide a bug.
    result = answers._extract(text, options)
    assert result is None or (result in options and result in string.ascii_uppercase)
    assert extract_choice(text, options) == result
    think, answer = split_think_answer(text)
    assert think is None or isinstance(think, str)
    assert answer is None or isinstance(answer, str)
    assert isinstance(has_strict_format(text), bool)


def test_random_fragment_soup_is_fast():
    import random

    rng = random.Random(20240601)
    pieces = FRAGMENTS + WORDS + ["Pleural effusion", "(C)", "C.", "no ", "than ", "B is the answer "]
    for _ in range(5):
        text = "".join(rng.choice(pieces) for _ in range(40_000))[:N]
        for options in (CXR, GRADE, CHEST14):
            start = time.process_time()
            result = answers._extract(text, options)
            split_think_answer(text)
            has_strict_format(text)
            assert time.process_time() - start < 1.0  # CPU seconds
            assert result is None or result in options


def _letter_format(draw, letter: str) -> str:
    fmt = draw(st.sampled_from(["{}", "({})", "{}.", " {} ", "\n{}\n", "[{}]", "**{}**", "Answer: {}"]))
    case = draw(st.sampled_from([str.upper, str.lower]))
    return fmt.format(case(letter))


@pytest.mark.slow  # a property over thousands of examples
@settings(max_examples=2500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), options=option_dicts(), think=noise_text, tail=st.sampled_from(["", "\n", "  "]))
def test_property_tagged_letter_is_read(data, options, think, tail):
    letter = data.draw(st.sampled_from(sorted(options)))
    # Put option texts and other letters into the reasoning to make sure it is ignored.
    extra = data.draw(st.lists(st.sampled_from(sorted(options)), max_size=3))
    think = think + " " + " ".join(f"{k}. {options[k]}" for k in extra)
    response = f"<think>{think}</think>{tail}<answer>{_letter_format(data.draw, letter)}</answer>{tail}"
    assert extract_choice(response, options) == letter


@pytest.mark.slow  # a property over thousands of examples
@settings(max_examples=2000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), options=option_dicts(), think=noise_text)
def test_property_tagged_option_text_is_read(data, options, think):
    letter = data.draw(st.sampled_from(sorted(options)))
    text = options[letter]
    flips = data.draw(st.integers(min_value=0, max_value=2 ** len(text) - 1))
    text = "".join(c.upper() if flips >> i & 1 else c for i, c in enumerate(text))
    text = text + data.draw(st.sampled_from(["", ".", " ", "!"]))
    response = f"<think>{think}</think><answer>{text}</answer>"
    assert extract_choice(response, options) == letter


@pytest.mark.slow  # a property over thousands of examples
@settings(max_examples=1500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), options=option_dicts(), think=noise_text)
def test_property_two_letters_is_none(data, options, think):
    first, second = data.draw(st.lists(st.sampled_from(sorted(options)), min_size=2, max_size=2, unique=True))
    sep = data.draw(st.sampled_from([" or ", ", ", " and ", " / ", "/", " & "]))
    a = data.draw(st.sampled_from(["{}", "({})"])).format(data.draw(st.sampled_from([first, first.lower()])))
    b = data.draw(st.sampled_from(["{}", "({})"])).format(data.draw(st.sampled_from([second, second.lower()])))
    prefix = data.draw(st.sampled_from(["", "Answer: ", "Both ", "Either "]))
    response = f"<think>{think}</think><answer>{prefix}{a}{sep}{b}</answer>"
    assert extract_choice(response, options) is None


tag_free_text = st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=40)


@pytest.mark.slow  # a property over thousands of examples
@settings(max_examples=2000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.data(),
    think=tag_free_text,
    answer=tag_free_text.filter(lambda s: s.strip() != ""),
    ws=st.lists(st.sampled_from(["", " ", "\n", "\t", "\r\n"]), min_size=3, max_size=3),
    mutation=st.sampled_from(
        [
            None,
            "prefix",
            "between",
            "suffix",
            "empty-answer",
            "drop-think-close",
            "drop-answer-close",
            "extra-think",
            "extra-answer",
            "swap",
            "upper",
            "nested",
            "spaced-tag",
        ]
    ),
)
def test_property_strict_format(data, think, answer, ws, mutation):
    junk = data.draw(st.text(min_size=1, max_size=10).filter(lambda s: s.strip() != ""))
    t_open, t_close, a_open, a_close = "<think>", "</think>", "<answer>", "</answer>"
    parts = [ws[0], t_open, think, t_close, ws[1], a_open, answer, a_close, ws[2]]
    if mutation == "prefix":
        parts.insert(0, junk)
    elif mutation == "between":
        parts.insert(5, junk)
    elif mutation == "suffix":
        parts.append(junk)
    elif mutation == "empty-answer":
        parts[6] = data.draw(st.sampled_from(["", " ", "\n"]))
    elif mutation == "drop-think-close":
        parts[3] = ""
    elif mutation == "drop-answer-close":
        parts[7] = ""
    elif mutation == "extra-think":
        parts.insert(2, "<think>")
    elif mutation == "extra-answer":
        parts.append("<answer>x</answer>")
    elif mutation == "swap":
        parts = [ws[0], a_open, answer, a_close, ws[1], t_open, think, t_close, ws[2]]
    elif mutation == "upper":
        parts[5] = "<ANSWER>"
    elif mutation == "nested":
        parts[2] = think + "<answer>A</answer>"
    elif mutation == "spaced-tag":
        parts[1] = "< think>"
    response = "".join(parts)
    assert has_strict_format(response) is (mutation is None)
    if mutation is None:
        t, a = split_think_answer(response)
        assert t == think.strip() and a == answer.strip()


# ---------------------------------------------------------------------------------
# Several final answers; bounded reading of huge responses
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response, expected",
    [
        (T + "<answer>A</answer> <answer>B</answer>", None),  # two final answers that disagree
        (T + "<answer>B</answer>\n<answer>Malignant</answer>", None),  # a letter vs another option's text
        (T + "<answer>A</answer> <answer>Malignant</answer>", "A"),  # the same option twice
        (T + "<answer>B</answer><answer>B</answer>", "B"),
        ("<think><answer>A</answer> no, wait</think><answer>B</answer>", "B"),  # a draft in the reasoning is no rival
    ],
)
def test_several_final_answers_must_agree(response, expected):
    options = {"A": "Malignant", "B": "Normal or benign"}
    assert extract_choice(response, options) == expected


@pytest.mark.parametrize(
    "name, response, expected",
    [
        ("adversarial-600kb-nfkc", "\ufdfa" * 600_000, None),
        ("adversarial-600kb-nfkc-then-answer", "\ufdfa" * 600_000 + "<answer>B</answer>", "B"),
        ("adversarial-600kb-in-answer", "<answer>" + "\ufdfa" * 600_000 + "B</answer>", None),
        ("adversarial-600kb-letters", "A or B " * 90_000, None),
        (
            "adversarial-huge-trace-then-answer",
            "<think>" + "The margins look smooth. " * 40_000 + "</think><answer>B</answer>",
            "B",
        ),
        # The head (with <think>) is cut off: the bare </think> still closes the reasoning, so the draft
        # inside it is not read as the answer.
        ("adversarial-cut-think-draft", "<think>" + "x " * 40_000 + "<answer>A</answer></think> The answer is B.", "B"),
    ],
)
def test_adversarial_huge_responses_are_read_in_milliseconds(name, response, expected):
    options = {"A": "Malignant", "B": "Normal or benign"}
    start = time.process_time()  # CPU time: machine load does not count against the extractor
    result = extract_choice(response, options)
    elapsed = time.process_time() - start
    assert result == expected
    assert elapsed < 0.25, f"{name} took {elapsed:.3f} CPU s"
