"""Judge prompts are data: every entry of judges/prompts.yaml is loaded the same way, a new prompt is one
entry, a field that nothing fills is an error at load (never literal ``{data_rule}`` sent), and the stub
judge answers by the template name the client sends, not by reading the prompt's instructions."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from importlib import resources

import pytest
from medbridge.judges import JudgeClient, choice_inputs, prompts
from medbridge.judges.client import TEMPLATE_HEADER
from medbridge.judges.prompts import PromptError, load_prompts
from medbridge.tests.fake_judge_server import FakeJudgeServer, stub_judge_config
from medbridge.tests.judge_redteam import OPTIONS, QUESTION

REAL = resources.files("medbridge.judges").joinpath("prompts.yaml").read_text(encoding="utf-8")

LATERALITY = """
  laterality:
    version: '1'
    blocks: {question: question, model_response: response}
    reply: {keyword: SIDE, labels: [left, right, both], any_case: true}
    system: >-
      You read which body side an answer names. {data_rule}
    task: |-
      Task: name the side the model_response gives. Reply with exactly one line: SIDE: <one of left, right, both>.
"""


def _with_entry(entry: str, base: str = REAL) -> str:
    return base.rstrip("\n") + "\n" + entry


def _sample_inputs(template: prompts.PromptTemplate) -> dict:
    inputs = {name: f"text for {name}" for _, name in template.blocks}
    if template.reply.letters_from:
        inputs[template.reply.letters_from] = dict(OPTIONS)
    return inputs


def test_every_packaged_template_is_filled_and_parses_its_own_format():
    assert set(prompts.TEMPLATES) >= {"mcq_choice", "free_text", "modality"}
    for template in prompts.TEMPLATES.values():
        messages = template.build(_sample_inputs(template))
        system, user = messages[0]["content"], messages[-1]["content"]
        assert not re.search(r"\{[a-z_]+\}", system + user), template.name
        assert "untrusted data" in system  # the shared data rule went in, as text
        for tag, name in template.blocks:
            assert prompts.read_data_block(user, tag) == _sample_inputs(template)[name]
        assert template.parse("nothing like the format", _sample_inputs(template)) == ("invalid", None)


def test_a_new_prompt_is_one_yaml_entry_asked_through_the_client_by_name(tmp_path):
    templates, shared = load_prompts(_with_entry(LATERALITY), "scratch.yaml")
    laterality = templates["laterality"]
    assert templates.keys() == prompts.TEMPLATES.keys() | {"laterality"}
    assert shared["data_rule"] in laterality.system and "{data_rule}" not in laterality.system
    assert laterality.statuses == ("label",) and laterality.key == "laterality/v1"
    inputs = [{"question": "Which side?", "response": r} for r in ("left, clearly", "on the right", "the back")]
    with FakeJudgeServer(template_replies={"laterality": "SIDE: Left"}) as server:

        async def go():
            client = JudgeClient(stub_judge_config(server.base_url, tmp_path))
            try:
                return await client.judge_many(laterality, inputs), client.stats
            finally:
                await client.aclose()

        verdicts, stats = asyncio.run(go())
        seen = json.loads(urllib.request.urlopen(server.base_url.removesuffix("/v1") + "/stats").read())
    assert [(v.status, v.value) for v in verdicts] == [("label", "left")] * 3
    assert seen["counts"]["template:laterality"] == 3 and stats["requests"] == 3


@pytest.mark.parametrize(
    "where,text",
    [
        ("system", "You read sides. {data_rulez}"),  # a typo of a real field
        ("system", "You read sides. {letters}"),  # per-question fields are for the task only
        ("task", "Task: name the side. Valid: {sides}."),
    ],
)
def test_a_field_nothing_fills_is_an_error_naming_file_template_and_field(where, text):
    entry = LATERALITY.replace(
        "You read which body side an answer names. {data_rule}" if where == "system" else
        "Task: name the side the model_response gives. Reply with exactly one line: SIDE: <one of left, right, both>.",
        text,
    )
    field = re.search(r"\{(\w+)\}", text).group(1)
    with pytest.raises(PromptError, match=rf"scratch\.yaml: template 'laterality'\.{where} .*\{{{field}\}}"):
        load_prompts(_with_entry(entry), "scratch.yaml")


@pytest.mark.parametrize(
    "old,new,message",
    [
        ("    version: '1'\n    blocks", "    blocks", r"missing key\(s\) \['version'\]"),
        ("    reply: {keyword: SIDE,", "    colour: red\n    reply: {keyword: SIDE,", r"unknown key\(s\) \['colour'\]"),
        ("labels: [left, right, both]", "labels: sides", "not a top-level list"),
        ("labels: [left, right, both]", "labels: [left], statuses: [A]", "exactly one of"),
        ("keyword: SIDE", "keyword: side", "upper-case word"),
        ("{question: question, model_response: response}", "{Question: question}", "is not tag"),
        ("names. {data_rule}", "names. {data_rule", "literal brace"),
    ],
)
def test_malformed_entries_are_refused_by_name(old, new, message):
    entry = LATERALITY.replace(old, new)
    assert entry != LATERALITY
    with pytest.raises(PromptError, match=message):
        load_prompts(_with_entry(entry), "scratch.yaml")


def test_stub_judge_answers_by_the_template_header_not_the_prompt_text():
    mcq = prompts.MCQ_CHOICE.build(choice_inputs(QUESTION, OPTIONS, "<answer>B</answer>"))
    body = {"model": "fake-judge", "messages": mcq, "temperature": 0, "max_tokens": 16}

    def post(headers):
        headers = {"Content-Type": "application/json", **headers}
        request = urllib.request.Request(server.base_url + "/chat/completions", json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(request) as resp:
                return resp.status, json.loads(resp.read())["choices"][0]["message"]["content"]
        except urllib.error.HTTPError as err:
            return err.code, None

    with FakeJudgeServer(template_replies={"laterality": "SIDE: left"}) as server:
        assert post({TEMPLATE_HEADER: "mcq_choice/v1"}) == (200, "VERDICT: B")
        assert post({}) == (400, None)  # no template named: no guessing from the text
        assert post({TEMPLATE_HEADER: "laterality/v1"}) == (200, "SIDE: left")
        assert post({TEMPLATE_HEADER: "nonexistent/v1"}) == (400, None)
