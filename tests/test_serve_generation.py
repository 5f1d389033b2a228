"""Generation over HTTP: a real ``ptuning serve`` process holding two generation tasks and a classification task on
one tiny Llama, answered by real clients (urllib, and OpenAI's own Python client): OpenAI's completions and chat
completions and Hugging Face's text-generation shape answer as ``generate_texts`` and the Predictor do for the same
task and input, streamed pieces add up to the answer, concurrent requests of two tasks each get their own task's
answer, and every bad request is a 4xx JSON naming the field."""

from __future__ import annotations

import http.client
import json
import shutil
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_generation_commands import FAST, PAIRS, write_jsonl
from test_generation_task import CHATML
from test_serve import TIMEOUT, predictor_of, served

pytest.importorskip("fastapi")

from ptuning.cli import main  # noqa: E402 - after the skip
from ptuning.generation import generate_texts  # noqa: E402
from ptuning.predictor import Predictor  # noqa: E402

TASKS = ("ner", "copy", "sent")
TEXTS = ["Peter Blackburn runs in Oslo", "Mary sings", "a good film with fine acting"]
CHAT = [{"role": "system", "content": "Find the entities."}, {"role": "user", "content": "Mary sings in Oslo"}]


@pytest.fixture(scope="module")
def runs(tiny_decoder_folders, tmp_path_factory) -> Path:
    """``ner`` (6 new tokens) and ``copy`` (9, positions shifted) generation tasks and ``sent`` (classification) on a
    tiny Llama whose tokenizer has a chat template."""
    folder = tmp_path_factory.mktemp("serve-generation")
    backbone = folder / "llama"
    shutil.copytree(tiny_decoder_folders["llama"], backbone)
    config_file = backbone / "tokenizer_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "chat_template": CHATML}))
    data = write_jsonl(folder / "ner.jsonl", [{"input": text, "target": target} for text, target in PAIRS])
    copy = write_jsonl(folder / "copy.jsonl", [{"input": text, "target": text} for text, _ in PAIRS])
    (folder / "sent.csv").write_text("text,label\ngood film,pos\nbad film,neg\n")
    model = ["--model", str(backbone)]
    assert (
        main(["train", *model, "--train", str(data), "--task", "generation", *FAST, "--output", str(folder / "ner")])
        == 0
    )
    copying = ["--train", str(copy), "--task", "generation", "--shift-positions", "--seed", "3"]
    assert main(["train", *model, *copying, *FAST, "--max-new-tokens", "9", "--output", str(folder / "copy")]) == 0
    assert (
        main(["train", *model, "--train", str(folder / "sent.csv"), *FAST[:6], "--output", str(folder / "sent")]) == 0
    )
    return folder


@pytest.fixture(scope="module")
def server(runs):
    yield from served(runs, "--max-queue", "8", tasks=TASKS)


@pytest.fixture(scope="module")
def predictor(runs) -> Predictor:
    return predictor_of(runs, TASKS)


def expected(predictor: Predictor, task: str, text: str, **settings) -> dict:
    """What ``generate_texts`` writes for ``text`` under ``task`` alone (greedy, the task's length, unless told)."""
    settings = {"max_new_tokens": predictor.tasks[task].max_new_tokens, **settings}
    return generate_texts(predictor.model, predictor.model.tokenizer, [text], [task], **settings)[0]


def events(client, path: str, body: dict) -> list:
    """The server-sent events of a streamed answer, as they came: JSON payloads, then ``"[DONE]"``."""
    request = urllib.request.Request(client.base + path, json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    blocks = [block for block in raw.split("\n\n") if block]
    assert all(block.startswith("data: ") for block in blocks), raw
    return [block[6:] if block == "data: [DONE]" else json.loads(block[6:]) for block in blocks]


@pytest.mark.numerics
def test_completions_answer_as_generate_texts_and_the_predictor(server, predictor):
    for task in ("ner", "copy"):
        status, _, body = server.call("POST", "/v1/completions", {"model": task, "prompt": TEXTS, "temperature": 0})
        assert status == 200 and body["object"] == "text_completion" and body["id"].startswith("cmpl-")
        assert body["model"] == task and isinstance(body["created"], int)
        offline = predictor.predict([predictor.parse({"task": task, "input": text}, "x") for text in TEXTS])
        for choice, text, written in zip(body["choices"], TEXTS, offline, strict=True):
            alone = expected(predictor, task, text)
            assert choice["text"] == alone["generated_text"] == written["generated_text"]
            assert choice["finish_reason"] == alone["finish_reason"] and choice["logprobs"] is None
        usage = body["usage"]
        assert usage["prompt_tokens"] == sum(expected(predictor, task, text)["prompt_tokens"] for text in TEXTS)
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert expected(predictor, "ner", TEXTS[0]) != expected(predictor, "copy", TEXTS[0]), "two prefixes differ"


@pytest.mark.numerics
def test_max_tokens_and_stop_strings_cut_as_generate_texts_does(server, predictor):
    long = expected(predictor, "copy", TEXTS[0], max_new_tokens=12)["generated_text"]
    stop = long[3:5]  # a stop string the answer meets
    for settings in (
        {"max_new_tokens": 2},
        {"max_new_tokens": 12, "stop": stop},
        {"max_new_tokens": 12, "stop": [stop]},
    ):
        body = {"model": "copy", "prompt": TEXTS[0], "temperature": 0, "max_tokens": settings["max_new_tokens"]}
        if "stop" in settings:
            body["stop"] = settings["stop"]
        status, _, answer = server.call("POST", "/v1/completions", body)
        alone = expected(predictor, "copy", TEXTS[0], **settings)
        assert status == 200 and answer["choices"][0]["text"] == alone["generated_text"]
        assert answer["choices"][0]["finish_reason"] == alone["finish_reason"]
        assert answer["usage"]["completion_tokens"] == alone["completion_tokens"]
    assert alone["finish_reason"] == "stop" and stop not in alone["generated_text"]


@pytest.mark.numerics
def test_a_seeded_sample_is_the_sample_generate_texts_draws(server, predictor):
    body = {"model": "ner", "prompt": TEXTS[1], "temperature": 0.9, "top_p": 0.8, "seed": 7, "max_tokens": 8}
    first, second = (server.call("POST", "/v1/completions", body)[2] for _ in range(2))
    alone = expected(predictor, "ner", TEXTS[1], temperature=0.9, top_p=0.8, seed=7, max_new_tokens=8)
    assert first["choices"][0]["text"] == second["choices"][0]["text"] == alone["generated_text"]
    # any integer is a seed (JSON's, and the schema's, have no bound), taken modulo 2^64 as torch takes its own
    # range; an integer written 7.0 is 7
    for seed in (7 + 2**64, 7.0):
        assert server.call("POST", "/v1/completions", {**body, "seed": seed})[2]["choices"] == first["choices"]


@pytest.mark.numerics
def test_a_temperature_too_small_to_divide_by_is_greedy(server, predictor):
    """Logits over a temperature of 1e-40 overflow float32 (schemathesis found the 500): it decodes greedily, its
    limit."""
    greedy = expected(predictor, "ner", TEXTS[0])["generated_text"]
    body = {"inputs": TEXTS[0], "parameters": {"temperature": 1e-40, "do_sample": True}}
    assert server.call("POST", "/v1/tasks/ner/generate", body)[2]["generated_text"] == greedy
    answer = server.call("POST", "/v1/completions", {"model": "ner", "prompt": TEXTS[0], "temperature": 1e-40})
    assert answer[2]["choices"][0]["text"] == greedy


@pytest.mark.numerics
def test_chat_completions_render_the_chat_template(server, predictor):
    for task in ("ner", "copy"):  # both trained on plain inputs: the chat template still renders the messages
        status, _, body = server.call(
            "POST", "/v1/chat/completions", {"model": task, "messages": CHAT, "temperature": 0}
        )
        assert status == 200 and body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
        (written,) = predictor.predict([predictor.parse({"task": task, "messages": CHAT}, "x")])
        choice = body["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": written["generated_text"]}
        rendered = predictor.model.tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
        assert rendered.endswith("<|im_start|>assistant\n")
        assert body["usage"]["prompt_tokens"] == expected(predictor, task, rendered)["prompt_tokens"]
    parts = [
        {"role": "developer", "content": [{"type": "text", "text": "Find the "}, {"type": "text", "text": "entities."}]}
    ]
    same = server.call("POST", "/v1/chat/completions", {"model": "ner", "messages": parts + CHAT[1:], "temperature": 0})
    plain = server.call("POST", "/v1/chat/completions", {"model": "ner", "messages": CHAT, "temperature": 0})
    assert same[2]["choices"] == plain[2]["choices"]  # text parts joined, developer read as system


@pytest.mark.numerics
def test_streamed_pieces_add_up_to_the_answer(server, predictor):
    long = expected(predictor, "copy", TEXTS[0], max_new_tokens=12)["generated_text"]
    # " Oslo Oslo ...": " Oslo" ends in the stop string's beginning "o", held back until known, never sent
    for extra in ({}, {"stop": long[4:6]}):
        body = {"model": "copy", "prompt": TEXTS[0], "temperature": 0, "max_tokens": 12, **extra}
        whole = server.call("POST", "/v1/completions", body)[2]["choices"][0]
        chunks = events(server, "/v1/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
        assert chunks[-1] == "[DONE]"
        *pieces, usage = chunks[:-1]
        assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 1
        assert all(chunk["object"] == "text_completion" and chunk["id"] == pieces[0]["id"] for chunk in pieces)
        assert "".join(chunk["choices"][0]["text"] for chunk in pieces) == whole["text"]
        if extra:
            assert pieces[0]["choices"][0]["text"] == long[:4]  # " Osl": its "o" held back
        else:
            assert len(pieces) == 13, "each token's text is sent as it is written, then the finish reason"
        assert [chunk["choices"][0]["finish_reason"] for chunk in pieces][-1] == whole["finish_reason"]
        assert all(chunk["choices"][0]["finish_reason"] is None for chunk in pieces[:-1])
    body = {"model": "ner", "messages": CHAT, "temperature": 0}
    whole = server.call("POST", "/v1/chat/completions", body)[2]["choices"][0]
    *chunks, done = events(server, "/v1/chat/completions", {**body, "stream": True})
    assert done == "[DONE]" and all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert text == whole["message"]["content"]
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": whole["finish_reason"],
    }


@pytest.mark.numerics
def test_the_text_generation_shape(server, predictor):
    alone = expected(predictor, "ner", TEXTS[0])
    status, _, body = server.call("POST", "/v1/tasks/ner/generate", {"inputs": TEXTS[0]})
    assert (status, body) == (200, {"generated_text": alone["generated_text"]})
    asked = {"inputs": TEXTS[0], "parameters": {"details": True, "return_full_text": True, "max_new_tokens": 3}}
    short = expected(predictor, "ner", TEXTS[0], max_new_tokens=3)
    body = server.call("POST", "/v1/tasks/ner/generate", asked)[2]
    assert body["generated_text"] == TEXTS[0] + short["generated_text"]
    assert body["details"] == {"finish_reason": "length", "generated_tokens": 3, "seed": None}
    tokens = events(server, "/v1/tasks/ner/generate_stream", {"inputs": TEXTS[0]})
    assert [token["index"] for token in tokens] == list(range(1, len(tokens) + 1))
    assert "".join(token["token"]["text"] for token in tokens) == alone["generated_text"]
    assert tokens[-1]["generated_text"] == alone["generated_text"] and tokens[0]["generated_text"] is None
    assert events(server, "/v1/tasks/ner/generate", {"inputs": TEXTS[0], "stream": True}) == tokens


@pytest.mark.numerics
def test_concurrent_requests_of_two_tasks_each_get_their_own_answer(server, predictor):
    plans = [(task, text, length) for text in TEXTS for task in ("ner", "copy") for length in (3, 9)]
    wanted = [expected(predictor, task, text, max_new_tokens=length)["generated_text"] for task, text, length in plans]
    sentiment = predictor.predict([predictor.parse({"task": "sent", "text": "good film"}, "x")])[0]["label"]
    before = server.call("GET", "/metrics")[2]

    def send(plan: tuple[str, str, int]) -> str:
        task, text, length = plan
        body = {"model": task, "prompt": text, "temperature": 0, "max_tokens": length}
        status, _, answer = server.call("POST", "/v1/completions", body)
        predicted = server.call("POST", "/v1/tasks/sent/predict", {"inputs": [{"text": "good film"}]})
        assert status == 200 and predicted[2]["outputs"][0]["label"] == sentiment
        return answer["choices"][0]["text"]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(send, plans * 2)) == wanted * 2
    after = server.call("GET", "/metrics")[2]

    def count(text: str, name: str) -> float:
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    steps, rows = (
        count(after, f"ptuning_generation_batch_rows_{part}") - count(before, f"ptuning_generation_batch_rows_{part}")
        for part in ("count", "sum")
    )
    assert rows / steps > 1.5, "greedy prompts of both tasks and lengths shared decoding steps"
    assert count(after, 'ptuning_generated_tokens_total{task="copy"}') > 0
    assert count(after, "ptuning_time_to_first_token_seconds_count") >= 2 * len(plans)
    assert 'ptuning_inputs_total{status="200",task="ner"}' in after


def test_models_lists_the_generation_tasks(server):
    status, _, body = server.call("GET", "/v1/models")
    assert status == 200 and [model["id"] for model in body["data"]] == ["ner", "copy"]
    assert server.call("GET", "/v1/models/copy")[2]["id"] == "copy"
    assert server.call("GET", "/v1/models/sent")[0] == 404


COMPLETIONS, CHATS, GENERATE = "/v1/completions", "/v1/chat/completions", "/v1/tasks/ner/generate"
OK = {"model": "ner", "prompt": "Mary sings"}
MESSAGES = {"model": "ner", "messages": CHAT}


@pytest.mark.parametrize(
    ("path", "body", "status", "error_type", "message"),
    [
        (COMPLETIONS, {**OK, "model": "pos"}, 404, "unknown_task", "unknown task 'pos'; generation tasks: ner, copy"),
        (COMPLETIONS, {**OK, "model": "sent"}, 404, "unknown_task", "task 'sent' is sequence-classification"),
        (CHATS, {**MESSAGES, "model": "sent"}, 404, "unknown_task", "not a generation task"),
        (COMPLETIONS, {"model": "ner"}, 422, "validation", "prompt: missing"),
        (COMPLETIONS, {**OK, "prompt": [1, 2]}, 422, "validation", "prompt: expected a string or a non-empty list"),
        (COMPLETIONS, {**OK, "prompt": ""}, 422, "validation", "prompt[0]: no tokens to continue from"),
        (COMPLETIONS, {**OK, "n": 2}, 422, "validation", "n: not supported here (only null or 1), got 2"),
        (COMPLETIONS, {**OK, "best_of": 3}, 422, "validation", "best_of: not supported here"),
        (COMPLETIONS, {**OK, "echo": True}, 422, "validation", "echo: not supported here"),
        (COMPLETIONS, {**OK, "logprobs": 2}, 422, "validation", "logprobs: not supported here (only null), got 2"),
        (COMPLETIONS, {**OK, "presence_penalty": 0.5}, 422, "validation", "presence_penalty: not supported"),
        (COMPLETIONS, {**OK, "temperature": 3}, 422, "validation", "temperature: Input should be less than or equal"),
        (COMPLETIONS, {**OK, "temperature": "0"}, 422, "validation", 'temperature: expected a number, got "0"'),
        (COMPLETIONS, {**OK, "top_p": 0}, 422, "validation", "top_p: Input should be greater than 0"),
        (COMPLETIONS, {**OK, "max_tokens": 0}, 422, "validation", "max_tokens: Input should be greater than or equal"),
        (
            COMPLETIONS,
            {**OK, "max_tokens": 500},
            422,
            "validation",
            "prompt tokens and 500 new ones exceed the 128 positions",
        ),
        (COMPLETIONS, {**OK, "stop": ""}, 422, "validation", "stop: expected a non-empty string"),
        (COMPLETIONS, {**OK, "stream": "yes"}, 422, "validation", 'stream: expected true or false, got "yes"'),
        (COMPLETIONS, {**OK, "max_token": 5}, 422, "validation", "max_token: unknown field"),
        (COMPLETIONS, {**OK, "prompt": ["x"] * 9}, 429, "overloaded", "inputs are waiting already"),
        (COMPLETIONS, b"{", 422, "invalid_json", "the body is not JSON"),
        (CHATS, {"model": "ner", "messages": []}, 422, "validation", "messages: List should have at least 1 item"),
        (
            CHATS,
            {"model": "ner", "messages": [{"role": "tool", "content": "x"}]},
            422,
            "validation",
            "messages[0].role",
        ),
        (CHATS, {"model": "ner", "messages": [{"role": "user"}]}, 422, "validation", "messages[0].content: missing"),
        (CHATS, {**MESSAGES, "tools": [{"type": "function"}]}, 422, "validation", "tools: not supported here"),
        (CHATS, {**MESSAGES, "logprobs": True}, 422, "validation", "logprobs: not supported here"),
        (CHATS, {**MESSAGES, "n": 3}, 422, "validation", "n: not supported here"),
        (GENERATE, {"inputs": 5}, 422, "validation", "inputs: expected a string, got 5"),
        (GENERATE, {"inputs": "x", "parameters": {"top_k": 5}}, 422, "validation", "parameters.top_k: not supported"),
        (GENERATE, {"inputs": "x", "parameters": {"temperature": 0}}, 422, "validation", "parameters.temperature"),
        ("/v1/tasks/sent/generate", {"inputs": "x"}, 404, "unknown_task", "task 'sent' is sequence-classification"),
        # no tokens for the model to read: this tokenizer adds none to an empty text (schemathesis found a 500)
        ("/v1/tasks/sent/predict", {"inputs": [{"text": ""}]}, 422, "validation", "inputs[0]: no tokens to read"),
    ],
)
def test_a_bad_request_is_a_4xx_naming_the_field(server, path, body, status, error_type, message):
    answer_status, _, answer = server.call("POST", path, body)
    assert (answer_status, answer["error_type"]) == (status, error_type), answer
    assert message in answer["error"], answer["error"]


def test_harmless_openai_fields_are_taken(server):
    body = {**OK, "temperature": 0, "n": 1, "logprobs": None, "echo": False, "user": "u", "presence_penalty": 0}
    assert server.call("POST", COMPLETIONS, body)[0] == 200
    chat = {**MESSAGES, "temperature": 0, "tools": [], "tool_choice": "none", "response_format": {"type": "text"}}
    assert server.call("POST", CHATS, {**chat, "max_completion_tokens": 2, "metadata": {"a": "b"}})[0] == 200


@pytest.mark.numerics
def test_the_openai_client_works_unchanged(server, predictor):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="x", max_retries=0)
    completion = client.completions.create(model="ner", prompt=TEXTS[0], temperature=0)
    assert completion.choices[0].text == expected(predictor, "ner", TEXTS[0])["generated_text"]
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    whole = client.chat.completions.create(model="copy", messages=CHAT, temperature=0)
    stream = client.chat.completions.create(model="copy", messages=CHAT, temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    with pytest.raises(openai.NotFoundError) as missing:  # the error body's message is the exception's body
        client.completions.create(model="sent", prompt="x")
    assert "generation tasks: ner, copy" in missing.value.body
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.completions.create(model="ner", prompt="x", n=2)
    assert "n: not supported" in refused.value.body


def generated(client, task: str) -> float:
    """The server's count of tokens generated for ``task``, once it has stopped changing."""
    counts = [None]
    while True:
        text = client.call("GET", "/metrics")[2]
        prefix = f'ptuning_generated_tokens_total{{task="{task}"}} '
        counts.append(sum(float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix)))
        if counts[-1] == counts[-2]:
            return counts[-1]
        time.sleep(0.3)


def test_a_stream_its_client_leaves_ends_its_row(server, predictor):
    host, port = server.base.removeprefix("http://").split(":")
    before = generated(server, "copy")
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    body = {"model": "copy", "prompt": TEXTS[1], "temperature": 0, "max_tokens": 110, "stream": True}
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: {")
    connection.close()  # the server notices at once and ends the row: 110 tokens are not written for nobody
    assert generated(server, "copy") - before < 100
    answer = server.call("POST", "/v1/completions", {"model": "ner", "prompt": TEXTS[1], "temperature": 0})[2]
    assert answer["choices"][0]["text"] == expected(predictor, "ner", TEXTS[1])["generated_text"]
