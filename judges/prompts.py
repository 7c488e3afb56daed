"""Versioned judge prompt templates: each one builds the chat messages and strictly parses the reply.

Every template puts the untrusted parts (question, options, and above all the model's response)
into *data blocks*: a tag line, one JSON literal, a closing tag line. The JSON encoding escapes
quotes, newlines and every ``<``, ``>`` and ``&`` (as ``\\u003c`` ...), so nothing a model writes
can close its block, open a new one or start a line of its own inside the prompt. The
instructions come after the blocks, and the reply format is one exact line that the parsers
below accept and nothing else (a reply that is not a valid verdict is "invalid", never correct).

A ``PromptTemplate`` is everything the client needs for one kind of question: ``build(inputs)``
gives the messages, ``parse(reply, inputs)`` gives ``(status, value)``; any reply that is not
exactly the expected line (a number, a list, None, prose, a label outside the vocabulary) is
``("invalid", None)``. Adding a judge prompt = one template here (plus, if it has a new
vocabulary, that vocabulary next to it). Bump a template's version whenever its text changes:
the verdict cache is keyed on it.

The texts themselves (and the project's one modality vocabulary, ``MODALITIES``: the paper's
categories plus "none") are the product's judge prompts in ``judges/prompts.yaml``; this module
reads them once, as data, and owns the code around them (data blocks, message building, strict
parsers); it imports no code from judges/, so the code dependency runs one way (judges -> harness_ext).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

__all__ = [
    "FREE_TEXT",
    "MCQ_CHOICE",
    "MODALITIES",
    "MODALITY",
    "PromptTemplate",
    "TEMPLATES",
    "data_block",
    "free_text_messages",
    "mcq_choice_messages",
    "modality_messages",
    "parse_free_text_verdict",
    "parse_mcq_verdict",
    "parse_modality",
    "read_data_block",
    "reply_text",
]


_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}
_BLOCK_TAG_RE = re.compile(r"[a-z_]{1,40}")


def _encode(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True)  # also escapes U+2028/9 and every non-ASCII char
    for raw, escaped in _ESCAPES.items():
        text = text.replace(raw, escaped)
    return text


def data_block(tag: str, value: Any) -> str:
    """``<tag>`` / one JSON literal / ``</tag>``; the literal can never contain ``<``, ``>`` or a newline."""
    if not _BLOCK_TAG_RE.fullmatch(tag):
        raise ValueError(f"bad data block tag {tag!r}")
    return f"<{tag}>\n{_encode(value)}\n</{tag}>"


def read_data_block(prompt: str, tag: str) -> Any:
    """Decode the one data block ``tag`` of a prompt built here (used by test judges and audits)."""
    found = re.findall(rf"(?m)^<{tag}>\n(.*)\n</{tag}>$", prompt)
    if len(found) != 1:
        raise ValueError(f"prompt has {len(found)} <{tag}> data blocks, expected exactly 1")
    return json.loads(found[0])


PROMPTS_FILE = "prompts.yaml"  # in the medbridge.judges package (judges/ in the checkout)


def _load_texts() -> dict[str, Any]:
    text = resources.files("medbridge.judges").joinpath(PROMPTS_FILE).read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    for name in ("mcq_choice", "free_text", "modality"):
        entry = doc["templates"][name]
        entry["system"] = entry["system"].format(data_rule=doc["data_rule"])
    return doc


_TEXTS = _load_texts()
_MCQ_SYSTEM = _TEXTS["templates"]["mcq_choice"]["system"]
_MCQ_TASK = _TEXTS["templates"]["mcq_choice"]["task"]


@dataclass(frozen=True)
class PromptTemplate:
    """One kind of judge question: how to ask it and how to read the answer.

    ``build(inputs) -> messages``; ``parse(reply, inputs) -> (status, value)`` where status is one
    of ``statuses`` or "invalid". ``inputs`` is a JSON-able mapping: it is also what the verdict
    cache hashes, so it must hold everything that can change the verdict.
    """

    name: str
    version: str
    build: Callable[[Mapping[str, Any]], list[dict[str, Any]]]
    parse: Callable[[Any, Mapping[str, Any]], tuple[str, str | None]]
    statuses: tuple[str, ...]
    max_tokens: int = 16

    @property
    def key(self) -> str:
        """What the verdict cache records as the prompt version."""
        return f"{self.name}/v{self.version}"


def reply_text(reply: Any) -> str | None:
    """The reply if it is usable text; None for any other shape (number, list, dict, None, a
    string with lone surrogates that cannot be stored or compared as UTF-8)."""
    if not isinstance(reply, str):
        return None
    try:
        reply.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return reply


def mcq_choice_messages(question: str, options: Mapping[str, str], response: str) -> list[dict[str, str]]:
    """Chat messages asking the judge which option ``response`` finally chose (template MCQ_CHOICE)."""
    if not options:
        raise ValueError("an MCQ judge prompt needs at least one option")
    user = "\n".join(
        [
            data_block("question", str(question)),
            data_block("options", {str(k): str(v) for k, v in options.items()}),
            data_block("model_response", str(response)),
            "",
            _MCQ_TASK.format(letters=", ".join(options)),
        ]
    )
    return [{"role": "system", "content": _MCQ_SYSTEM}, {"role": "user", "content": user}]


# One line, exact keyword, nothing around it but whitespace (a trailing full stop is tolerated).
_MCQ_VERDICT_RE = re.compile(r"\s*VERDICT:[ \t]*([A-Z]|NONE)[ \t]*\.?\s*")


def parse_mcq_verdict(reply: Any, options: Mapping[str, str]) -> tuple[str, str | None]:
    """Strictly read a judge reply: ("letter", X) | ("none", None) | ("invalid", None).

    A letter that is not one of the options, two verdicts, any extra prose or a lowercase
    keyword are all invalid: a judge that does not follow the format is not trusted to be right.
    """
    text = reply_text(reply)
    m = _MCQ_VERDICT_RE.fullmatch(text) if text is not None else None
    if m is None:
        return "invalid", None
    token = m.group(1)
    if token == "NONE":
        return "none", None
    return ("letter", token) if token in options else ("invalid", None)


_FREE_SYSTEM = _TEXTS["templates"]["free_text"]["system"]
_FREE_TASK = _TEXTS["templates"]["free_text"]["task"]
_FREE_VERDICT_RE = re.compile(r"\s*VERDICT:[ \t]*(CORRECT|INCORRECT)[ \t]*\.?\s*")


def free_text_messages(question: str, reference: str, response: str) -> list[dict[str, str]]:
    """Chat messages comparing a free-text answer with a reference (template FREE_TEXT)."""
    user = "\n".join(
        [
            data_block("question", str(question)),
            data_block("reference_answer", str(reference)),
            data_block("model_response", str(response)),
            "",
            _FREE_TASK,
        ]
    )
    return [{"role": "system", "content": _FREE_SYSTEM}, {"role": "user", "content": user}]


def parse_free_text_verdict(reply: Any) -> str:
    """"correct" | "incorrect" | "invalid" (strict, like parse_mcq_verdict)."""
    text = reply_text(reply)
    m = _FREE_VERDICT_RE.fullmatch(text) if text is not None else None
    return m.group(1).lower() if m else "invalid"


# The project's only modality vocabulary (judges/prompts.yaml says where it comes from).
MODALITIES: tuple[str, ...] = tuple(_TEXTS["modalities"])

_MODALITY_SYSTEM = _TEXTS["templates"]["modality"]["system"]
_MODALITY_TASK = _TEXTS["templates"]["modality"]["task"]
_MODALITY_RE = re.compile(r"\s*MODALITY:[ \t]*([A-Za-z][A-Za-z\-]*)[ \t]*\.?\s*")


def modality_messages(question: str, image_url: str | None = None) -> list[dict[str, Any]]:
    """Chat messages classifying a question's imaging modality (template MODALITY).

    ``image_url`` (e.g. a ``data:image/png;base64,...`` URL) is sent as an OpenAI image part, for a
    vision-language judge such as Qwen2.5-VL-32B-Instruct.
    """
    user = "\n".join([data_block("question", str(question)), "", _MODALITY_TASK.format(names=", ".join(MODALITIES))])
    content: Any = user
    if image_url:
        content = [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": user}]
    return [{"role": "system", "content": _MODALITY_SYSTEM}, {"role": "user", "content": content}]


def parse_modality(reply: Any) -> str:
    """One of MODALITIES (the keyword is exact; the label's case is not), or "invalid"."""
    text = reply_text(reply)
    m = _MODALITY_RE.fullmatch(text) if text is not None else None
    label = m.group(1).lower() if m else None
    return label if label in MODALITIES else "invalid"


def _free_text_template_parse(reply: Any, inputs: Mapping[str, Any]) -> tuple[str, str | None]:
    return parse_free_text_verdict(reply), None


def _modality_template_parse(reply: Any, inputs: Mapping[str, Any]) -> tuple[str, str | None]:
    label = parse_modality(reply)
    return ("invalid", None) if label == "invalid" else ("label", label)


MCQ_CHOICE = PromptTemplate(
    "mcq_choice",
    _TEXTS["templates"]["mcq_choice"]["version"],
    build=lambda i: mcq_choice_messages(i["question"], i["options"], i["response"]),
    parse=lambda reply, i: parse_mcq_verdict(reply, i["options"]),
    statuses=("letter", "none"),
)
FREE_TEXT = PromptTemplate(
    "free_text",
    _TEXTS["templates"]["free_text"]["version"],
    build=lambda i: free_text_messages(i["question"], i["reference"], i["response"]),
    parse=_free_text_template_parse,
    statuses=("correct", "incorrect"),
)
MODALITY = PromptTemplate(
    "modality",
    _TEXTS["templates"]["modality"]["version"],
    build=lambda i: modality_messages(i["question"], i.get("image_url")),
    parse=_modality_template_parse,
    statuses=("label",),
)
TEMPLATES = {t.name: t for t in (MCQ_CHOICE, FREE_TEXT, MODALITY)}
