"""Hugging Face's Inference API at ``POST /models/NAME``: ``huggingface_hub.InferenceClient`` pointed at a real
``ptuning serve`` process (token classification, text classification, question answering and text generation tasks
on one tiny Llama) works unchanged, each answer that of the Predictor for the same input; a body of another kind than
the task's, a wrong shape, an unsupported parameter or an unknown task is a 4xx JSON saying so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TOLERANCE
from test_generation_commands import write_jsonl
from test_serve import predictor_of, served

pytest.importorskip("fastapi")
huggingface_hub = pytest.importorskip("huggingface_hub")

from huggingface_hub import InferenceClient  # noqa: E402 - after the skip
from huggingface_hub.errors import HfHubHTTPError  # noqa: E402

from ptuning.cli import main  # noqa: E402
from ptuning.predictor import Predictor  # noqa: E402

TASKS = ("ner", "sent", "qa", "gen")
CONTEXT = "Peter Blackburn visited Oslo in August."
SQUAD = {
    "version": "v1.1",
    "data": [
        {
            "title": "t",
            "paragraphs": [
                {
                    "context": CONTEXT,
                    "qas": [
                        {
                            "id": "q1",
                            "question": "Who visited?",
                            "answers": [{"text": "Peter Blackburn", "answer_start": 0}],
                        },
                        {"id": "q2", "question": "Where did he go?", "answers": [{"text": "Oslo", "answer_start": 24}]},
                    ],
                }
            ],
        }
    ],
}
TEXTS = ["Peter  Blackburn runs in Oslo", "Mary sings", "a good film with fine acting"]


@pytest.fixture(scope="module")
def runs(tiny_decoder_folders, tmp_path_factory) -> Path:
    """A task of each kind on the tiny Llama: ``ner`` (CoNLL tags), ``sent`` (two labels), ``qa`` (SQuAD) and
    ``gen`` (generation, 5 new tokens)."""
    folder = tmp_path_factory.mktemp("serve-hf")
    (folder / "ner.conll").write_text(
        "Peter B-PER\nBlackburn I-PER\nruns O\n\nOslo B-LOC\ncalls O\n\nMary B-PER\nsings O\n"
    )
    (folder / "sent.csv").write_text("text,label\ngood film,pos\nbad film,neg\nfine acting,pos\ndull plot,neg\n")
    (folder / "qa.json").write_text(json.dumps(SQUAD))
    write_jsonl(folder / "gen.jsonl", [{"input": text, "target": text} for text in TEXTS])
    common = ["--model", str(tiny_decoder_folders["llama"]), "--max-steps", "3", "--batch-size", "2", "--lr", "0.1"]
    common += ["--prompt-length", "2"]
    data = {"ner": ["ner.conll"], "sent": ["sent.csv"], "qa": ["qa.json", "--task", "squad"]}
    data["gen"] = ["gen.jsonl", "--task", "generation", "--max-new-tokens", "5"]
    for name, (file, *flags) in data.items():
        assert main(["train", "--train", str(folder / file), *flags, *common, "--output", str(folder / name)]) == 0
    return folder


@pytest.fixture(scope="module")
def server(runs):
    yield from served(runs, tasks=TASKS)


@pytest.fixture(scope="module")
def predictor(runs) -> Predictor:
    return predictor_of(runs, TASKS)


def offline(predictor: Predictor, record: dict) -> dict:
    """The Predictor's own answer to ``record``."""
    return predictor.predict([predictor.parse(record, "test")])[0]


def close(got: float, expected: float) -> bool:
    return got == pytest.approx(expected, rel=TOLERANCE, abs=TOLERANCE)


@pytest.fixture(autouse=True)
def client_online(monkeypatch) -> None:
    """The tests run offline (HF_HUB_OFFLINE=1, as make test sets it), under which the Hugging Face client refuses
    every URL, loopback too: a user of the client against ptuning unsets it for the client's process, as here."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def client_of(server, task: str) -> InferenceClient:
    return InferenceClient(model=f"{server.base}/models/{task}", timeout=60)


def test_token_classification_answers_the_predictor_s_entities(server, predictor):
    client = client_of(server, "ner")
    for text in TEXTS:
        got = client.token_classification(text)
        expected = offline(predictor, {"task": "ner", "text": text})["entities"]
        assert [(e.entity_group, e.word, e.start, e.end) for e in got] == [
            (e["entity_group"], e["word"], e["start"], e["end"]) for e in expected
        ]
        assert all(
            close(g.score, e["score"]) and text[g.start : g.end] == g.word for g, e in zip(got, expected, strict=True)
        )
    many = server.call("POST", "/models/ner", {"inputs": TEXTS[:2]})[2]
    assert [[e["word"] for e in found] for found in many] == [
        [e.word for e in client.token_classification(t)] for t in TEXTS[:2]
    ]
    groups = {e["entity_group"] for found in many for e in found}
    kept = client.token_classification(TEXTS[0], ignore_labels=sorted(groups)[:1], aggregation_strategy="simple")
    assert {e.entity_group for e in kept} <= groups - set(sorted(groups)[:1])


def test_text_classification_ranks_the_predictor_s_probabilities(server, predictor):
    client = client_of(server, "sent")
    for text in TEXTS:
        got = client.text_classification(text)
        probabilities = offline(predictor, {"task": "sent", "text": text})["probabilities"]
        ranked = sorted(probabilities, key=lambda label: -probabilities[label])
        assert [element.label for element in got] == ranked
        assert all(close(element.score, probabilities[element.label]) for element in got)
        (best,) = client.text_classification(text, top_k=1, function_to_apply="softmax")
        assert best.label == ranked[0]
    pair = {"text": "a good film", "text_pair": "fine acting"}
    status, _, answer = server.call("POST", "/models/sent", {"inputs": [pair, "dull plot"]})
    expected = offline(predictor, {"task": "sent", **pair})["probabilities"]
    assert status == 200 and len(answer) == 2
    assert all(close(element["score"], expected[element["label"]]) for element in answer[0])


def test_question_answering_answers_the_predictor_s_span_and_probability(server, predictor):
    client = client_of(server, "qa")
    for question in ("Who visited Oslo?", "Where did Peter go?"):
        got = client.question_answering(question=question, context=CONTEXT)
        expected = offline(predictor, {"task": "qa", "question": question, "context": CONTEXT})
        assert (got.answer, got.start, got.end) == (expected["prediction_text"], expected["start"], expected["end"])
        assert got.answer == CONTEXT[got.start : got.end] and close(got.score, expected["probability"])
        assert 0 < got.score <= 1
    body = {"inputs": [{"question": "Who?", "context": CONTEXT}] * 2}
    status, _, answers = server.call("POST", "/models/qa", body)
    assert status == 200 and len(answers) == 2 and answers[0] == answers[1]


def test_text_generation_writes_the_predictor_s_text_whole_and_streamed(server, predictor):
    client = client_of(server, "gen")
    for text in TEXTS[1:]:
        expected = offline(predictor, {"task": "gen", "input": text})["generated_text"]
        assert client.text_generation(text) == expected
        assert "".join(client.text_generation(text, stream=True)) == expected
        whole = client.text_generation(text, details=True, return_full_text=True)
        assert whole.generated_text == text + expected and whole.details.generated_tokens <= 5
    events = list(client.text_generation(TEXTS[1], stream=True, details=True, max_new_tokens=3))
    assert len(events) <= 3 and events[-1].generated_text == "".join(event.token.text for event in events)
    assert server.call("POST", "/models/gen", {"inputs": TEXTS[1]})[2] == [
        {"generated_text": client.text_generation(TEXTS[1])}
    ]


def refusal(call) -> tuple[int, dict]:
    """The status and JSON body of a request the server refused."""
    with pytest.raises(HfHubHTTPError) as refused:
        call()
    return refused.value.response.status_code, refused.value.response.json()


@pytest.mark.parametrize(
    ("task", "body", "status", "error_type", "message"),
    [
        ("nope", {"inputs": "x"}, 404, "unknown_task", "unknown task 'nope'; loaded tasks: ner, sent, qa, gen"),
        ("ner", {"inputs": 3}, 422, "validation", "task 'ner' is token-classification: inputs: expected a string"),
        ("ner", {"inputs": " "}, 422, "validation", "inputs[0]: no tokens to read (is its text empty?)"),
        ("sent", {"inputs": ["x", ""]}, 422, "validation", "inputs[1]: no tokens to read"),
        ("ner", {"inputs": []}, 422, "validation", "inputs: expected a string or a non-empty list of strings"),
        ("ner", {"text": "x"}, 422, "validation", "inputs: missing; text: unknown field"),
        ("ner", {"inputs": "x", "parameters": {"stride": 4}}, 422, "validation", "parameters.stride: not supported"),
        ("ner", {"inputs": "x", "parameters": {"aggregation_strategy": "max"}}, 422, "validation", "aggregation_str"),
        ("sent", {"inputs": {"text": "x", "pair": "y"}}, 422, "validation", "inputs: expected a string, {"),
        ("sent", {"inputs": "x", "parameters": {"top_k": 0}}, 422, "validation", "parameters.top_k: Input should be"),
        ("qa", {"inputs": "x"}, 422, "validation", "task 'qa' is question-answering: inputs: expected {\"question\""),
        ("qa", {"inputs": {"question": " ", "context": "c"}}, 422, "validation", "non-empty question and context"),
        ("qa", {"inputs": {"question": "q", "context": "c"}, "parameters": {"top_k": 2}}, 422, "validation", "only"),
        ("gen", {"inputs": ["x"]}, 422, "validation", "task 'gen' is generation: inputs: expected a string"),
        ("sent", b"{", 422, "invalid_json", "the body is not JSON"),
    ],
)
def test_a_bad_request_is_a_4xx_json_saying_what_is_wrong(server, task, body, status, error_type, message):
    got = server.call("POST", f"/models/{task}", body)
    assert got[0] == status and got[2]["error_type"] == error_type and message in got[2]["error"], got


def test_the_client_learns_a_call_of_another_kind_and_an_unknown_task(server):
    status, body = refusal(lambda: client_of(server, "ner").question_answering(question="Who?", context=CONTEXT))
    assert status == 422 and body["error"].startswith("task 'ner' is token-classification: inputs: expected a string")
    status, body = refusal(lambda: client_of(server, "nope").text_classification("x"))
    assert (status, body["error_type"]) == (404, "unknown_task")
    status, body = refusal(lambda: client_of(server, "sent").text_classification("x", function_to_apply="sigmoid"))
    assert status == 422 and "function_to_apply" in body["error"]
    status, body = refusal(lambda: client_of(server, "qa").question_answering("Who?", CONTEXT, doc_stride=8))
    assert status == 422 and "doc_stride: not supported here (only null)" in body["error"]


def test_the_published_schema_declares_each_kind_s_body_and_both_answers(server):
    operation = server.call("GET", "/openapi.json")[2]["paths"]["/models/{name}"]["post"]
    bodies = operation["requestBody"]["content"]["application/json"]["schema"]["anyOf"]
    assert [sorted(body["properties"]) for body in bodies] == [["inputs", "parameters"]] * 3 + [
        ["inputs", "parameters", "stream"]
    ]
    assert "$ref" not in json.dumps(bodies)  # it stands alone: nothing points into a $defs it lacks
    assert {"application/json", "text/event-stream"} <= set(operation["responses"]["200"]["content"])
