"""Judge prompt templates, loaded generically from ``prompts.yaml`` (beside this file).

A template is one YAML entry; nothing in code lists template names. Each entry gives:

- ``version``: bump it whenever the text changes (the verdict cache is keyed on ``<name>/v<version>``);
- ``blocks``: ``{tag: input name}``: the untrusted inputs, in order, each sent as a *data block*
  (a tag line, one JSON literal, a closing tag line; see ``data_block``);
- ``image`` (optional): the input holding an image URL, sent as an OpenAI image part when present;
- ``reply``: the one reply line accepted, ``<keyword>: <answer>``, with the answers drawn from
  ``letters_from`` (the keys of an input mapping, status ``letter``; ``none`` names the word for
  "no option", status ``none``), ``statuses`` (fixed words, each its own status in lower case), or
  ``labels`` (a list, or the name of a top-level list such as ``modalities``: status ``label`` with
  the word as value; a well-formed reply naming a word outside the list is ``unknown``, its value
  the word, so a caller can count it apart from malformed replies);
- ``system`` and ``task``: the texts. ``{name}`` fields are filled from the file's top-level
  entries (a string as is, a list joined by ", ") and, in ``task`` only, ``{letters}`` (the
  ``letters_from`` keys). A field that nothing fills is an error when the file is loaded, so
  no literal ``{data_rule}`` ever reaches a judge;
- ``max_tokens`` (optional, default 16).

The JSON encoding of a data block escapes quotes, newlines and every ``<``, ``>`` and ``&`` (as
``\\u003c`` ...), so nothing a model writes can close its block, open a new one or start a line
of its own inside the prompt. The instructions come after the blocks, and a reply is parsed
strictly: anything other than the exact line (a number, a list, None, prose, a letter that is not
an option) is ``("invalid", None)``, never correct.

A new judge prompt: one entry in prompts.yaml, then ``pool.judge_many(TEMPLATES["name"], inputs)``.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml
from medbridge.harness_ext.errors import MedbridgeError

__all__ = [
    "FREE_TEXT",
    "MCQ_CHOICE",
    "MODALITIES",
    "MODALITY",
    "PROMPTS_FILE",
    "PromptError",
    "PromptTemplate",
    "ReplyFormat",
    "TEMPLATES",
    "data_block",
    "load_prompts",
    "read_data_block",
    "reply_text",
    "template",
]

PROMPTS_FILE = "prompts.yaml"  # in this package (judges/ in the checkout)


class PromptError(MedbridgeError):
    """A judge prompt entry that cannot be used; the message names the file, the template and the field."""


_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}
_BLOCK_TAG_RE = re.compile(r"[a-z_]{1,40}")
_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_KEYWORD_RE = re.compile(r"[A-Z][A-Z_]{0,31}")


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


def _as_data(value: Any) -> Any:
    """What a data block holds: a mapping as {str: str}, anything else as its text."""
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    return str(value)


@dataclass(frozen=True)
class ReplyFormat:
    """The one reply line a template accepts: ``<keyword>: <answer>`` (whitespace and a final full stop
    tolerated around it, nothing else). Exactly one of ``letters_from``, ``statuses``, ``labels``."""

    keyword: str
    letters_from: str | None = None
    none: str | None = None
    statuses: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    any_case: bool = False

    @property
    def settled(self) -> tuple[str, ...]:
        """The statuses of an accepted reply."""
        if self.letters_from:
            return ("letter", "none") if self.none else ("letter",)
        if self.statuses:
            return tuple(word.lower() for word in self.statuses)
        return ("label",)

    def pattern(self) -> re.Pattern:
        if self.letters_from:
            answer = "[A-Z]" + (f"|{re.escape(self.none)}" if self.none else "")
        elif self.statuses:
            answer = "|".join(re.escape(word) for word in self.statuses)
        else:
            answer = r"[A-Za-z][A-Za-z\-]*"
        flags = re.IGNORECASE if self.any_case and not self.letters_from else 0
        return re.compile(rf"\s*{self.keyword}:[ \t]*({answer})[ \t]*\.?\s*", flags)

    def parse(self, reply: Any, inputs: Mapping[str, Any]) -> tuple[str, str | None]:
        text = reply_text(reply)
        m = self.pattern().fullmatch(text) if text is not None else None
        if m is None:
            return "invalid", None
        token = m.group(1)
        if self.letters_from:
            if self.none and token == self.none:
                return "none", None
            return ("letter", token) if token in inputs[self.letters_from] else ("invalid", None)
        if self.statuses:
            return token.lower(), None
        label = token.lower() if self.any_case else token
        return ("label", label) if label in self.labels else ("unknown", label)


@dataclass(frozen=True)
class PromptTemplate:
    """One kind of judge question: how to ask it and how to read the answer.

    ``build(inputs) -> messages``; ``parse(reply, inputs) -> (status, value)`` where status is one of
    ``statuses``, "invalid", or (label replies only) "unknown". ``inputs`` is a JSON-able mapping: it
    is also what the verdict cache hashes, so it must hold everything that can change the verdict.
    """

    name: str
    version: str
    system: str
    task: str
    blocks: tuple[tuple[str, str], ...]
    reply: ReplyFormat
    image: str | None = None
    max_tokens: int = 16
    shared_fields: tuple[tuple[str, str], ...] = ()  # the file's top-level values, for the task's fields

    @property
    def key(self) -> str:
        """What the verdict cache records as the prompt version (also sent to the judge as a header)."""
        return f"{self.name}/v{self.version}"

    @property
    def statuses(self) -> tuple[str, ...]:
        return self.reply.settled

    def build(self, inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
        missing = [name for _, name in self.blocks if name not in inputs]
        if missing:
            raise ValueError(f"judge prompt {self.name!r} needs input(s) {missing}, got {sorted(inputs)}")
        fields = {}
        if self.reply.letters_from:
            letters = inputs[self.reply.letters_from]
            if not letters:
                raise ValueError(f"judge prompt {self.name!r} needs at least one option in {self.reply.letters_from!r}")
            fields["letters"] = ", ".join(str(k) for k in letters)
        text = "\n".join([*(data_block(tag, _as_data(inputs[name])) for tag, name in self.blocks), ""])
        text += "\n" + self.task.format(**dict(self.shared_fields), **fields)
        content: Any = text
        image_url = inputs.get(self.image) if self.image else None
        if image_url:
            content = [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": text}]
        return [{"role": "system", "content": self.system}, {"role": "user", "content": content}]

    def parse(self, reply: Any, inputs: Mapping[str, Any]) -> tuple[str, str | None]:
        return self.reply.parse(reply, inputs)


# ------------------------------------------------------------------------------------------ loading

_ENTRY_KEYS = {"version", "blocks", "image", "reply", "system", "task", "max_tokens"}
_REPLY_KEYS = {"keyword", "letters_from", "none", "statuses", "labels", "any_case"}


def _fields(text: str, where: str) -> set[str]:
    """The ``{name}`` fields of a text (``{{`` and ``}}`` are literal braces)."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as err:
        raise PromptError(f"{where}: {err} (write a literal brace as {{{{ or }}}})") from None
    names = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not _NAME_RE.fullmatch(name) or spec or conversion:
            raise PromptError(f"{where}: field {{{name}}} must be a plain {{name}} (letters, digits, _)")
        names.add(name)
    return names


def _check_filled(text: Any, where: str, known: Mapping[str, Any]) -> str:
    if not isinstance(text, str) or not text.strip():
        raise PromptError(f"{where} must be non-empty text")
    unfilled = sorted(_fields(text, where) - set(known))
    if unfilled:
        raise PromptError(
            f"{where} has field(s) {', '.join('{' + n + '}' for n in unfilled)} that nothing fills "
            f"(fillable here: {', '.join(sorted(known)) or 'none'}); define them at the top of the file or remove them"
        )
    return text


def _reply_format(spec: Any, where: str, shared_lists: Mapping[str, tuple[str, ...]]) -> ReplyFormat:
    if not isinstance(spec, Mapping):
        raise PromptError(f"{where} must be a mapping with keyword and one of letters_from, statuses, labels")
    unknown = sorted(set(spec) - _REPLY_KEYS)
    if unknown:
        raise PromptError(f"{where}: unknown key(s) {unknown} (known: {sorted(_REPLY_KEYS)})")
    keyword = spec.get("keyword")
    if not isinstance(keyword, str) or not _KEYWORD_RE.fullmatch(keyword):
        raise PromptError(f"{where}.keyword must be an upper-case word such as VERDICT, got {keyword!r}")
    kinds = [k for k in ("letters_from", "statuses", "labels") if spec.get(k) is not None]
    if len(kinds) != 1:
        raise PromptError(f"{where} needs exactly one of letters_from, statuses, labels (got {kinds or 'none'})")
    any_case = bool(spec.get("any_case", False))
    if kinds == ["letters_from"]:
        none = spec.get("none")
        if none is not None and not (isinstance(none, str) and _KEYWORD_RE.fullmatch(none)):
            raise PromptError(f"{where}.none must be an upper-case word such as NONE, got {none!r}")
        return ReplyFormat(keyword, letters_from=str(spec["letters_from"]), none=none, any_case=any_case)
    words = spec[kinds[0]]
    if isinstance(words, str) and kinds == ["labels"]:
        if words not in shared_lists:
            raise PromptError(f"{where}.labels names {words!r}, which is not a top-level list of the file")
        words = shared_lists[words]
    if not (isinstance(words, (list, tuple)) and words and all(isinstance(w, str) and w for w in words)):
        raise PromptError(f"{where}.{kinds[0]} must be a non-empty list of words")
    if kinds == ["statuses"]:
        if any(not re.fullmatch(r"[A-Za-z][A-Za-z_\-]*", w) for w in words):
            raise PromptError(f"{where}.statuses must be plain words, got {list(words)}")
        if {w.lower() for w in words} & {"invalid", "unknown", "failed"}:
            raise PromptError(f"{where}.statuses must not use the reserved words invalid, unknown, failed")
        return ReplyFormat(keyword, statuses=tuple(words), any_case=any_case)
    return ReplyFormat(keyword, labels=tuple(w.lower() if any_case else w for w in words), any_case=any_case)


def load_prompts(text: str, source: str = PROMPTS_FILE) -> tuple[dict[str, PromptTemplate], dict[str, Any]]:
    """Parse a prompts file: (templates by name, the file's top-level values). Every problem is a
    ``PromptError`` naming ``source``, the template and the field."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PromptError(f"{source}: not valid YAML ({err})") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("templates"), Mapping) or not doc["templates"]:
        raise PromptError(f"{source}: expected a mapping with a non-empty 'templates' mapping")
    shared = {k: v for k, v in doc.items() if k != "templates"}
    fill: dict[str, str] = {}
    shared_lists: dict[str, tuple[str, ...]] = {}
    for name, value in shared.items():
        if isinstance(value, str):
            fill[name] = value
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            shared_lists[name] = tuple(value)
            fill[name] = ", ".join(value)
        else:
            raise PromptError(f"{source}: top-level {name!r} must be text or a list of words")
    templates: dict[str, PromptTemplate] = {}
    for name, entry in doc["templates"].items():
        where = f"{source}: template {name!r}"
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise PromptError(f"{source}: template name {name!r} must be lower-case letters, digits and _")
        if not isinstance(entry, Mapping):
            raise PromptError(f"{where} must be a mapping")
        unknown = sorted(set(entry) - _ENTRY_KEYS)
        missing = sorted({"version", "blocks", "reply", "system", "task"} - set(entry))
        if unknown or missing:
            raise PromptError(f"{where}: unknown key(s) {unknown}, missing key(s) {missing}")
        blocks = entry["blocks"]
        if not isinstance(blocks, Mapping) or not blocks:
            raise PromptError(f"{where}.blocks must map data block tags to input names")
        for tag, input_name in blocks.items():
            if not (isinstance(tag, str) and _BLOCK_TAG_RE.fullmatch(tag) and isinstance(input_name, str)):
                raise PromptError(f"{where}.blocks: {tag!r}: {input_name!r} is not tag (a-z, _): input name")
        reply = _reply_format(entry["reply"], f"{where}.reply", shared_lists)
        if reply.letters_from and reply.letters_from not in blocks.values():
            raise PromptError(f"{where}.reply.letters_from {reply.letters_from!r} is not one of its blocks' inputs")
        system = _check_filled(entry["system"], f"{where}.system", fill)
        task_fill = {**fill, **({"letters": ""} if reply.letters_from else {})}
        task = _check_filled(entry["task"], f"{where}.task", task_fill)
        max_tokens = entry.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= 4096:
            raise PromptError(f"{where}.max_tokens must be an integer from 1 to 4096, got {max_tokens!r}")
        templates[name] = PromptTemplate(
            name=name,
            version=str(entry["version"]),
            system=system.format(**fill),
            task=task,  # filled per question by build(): {letters} differs between questions
            blocks=tuple((str(tag), str(input_name)) for tag, input_name in blocks.items()),
            reply=reply,
            image=str(entry["image"]) if entry.get("image") else None,
            max_tokens=max_tokens,
            shared_fields=tuple(fill.items()),
        )
    return templates, shared


def _load_package_prompts() -> tuple[dict[str, PromptTemplate], dict[str, Any]]:
    text = resources.files(__package__).joinpath(PROMPTS_FILE).read_text(encoding="utf-8")
    return load_prompts(text, f"judges/{PROMPTS_FILE}")


TEMPLATES, _SHARED = _load_package_prompts()


def template(name: str) -> PromptTemplate:
    """The template ``name`` of judges/prompts.yaml."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise PromptError(f"no judge prompt {name!r} in judges/{PROMPTS_FILE} (it has {sorted(TEMPLATES)})") from None


# The project's only modality vocabulary (prompts.yaml says where it comes from).
MODALITIES: tuple[str, ...] = tuple(_SHARED["modalities"])
# The templates the project's own code asks (cascade, classify); any other entry is asked by name.
MCQ_CHOICE = template("mcq_choice")
FREE_TEXT = template("free_text")
MODALITY = template("modality")
