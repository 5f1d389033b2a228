"""Extractive QA: SQuAD metrics, windowed features, span decoding, the SQuAD reader and CoNLL-2003 as QA."""

from __future__ import annotations

import json
import re
from itertools import pairwise

import numpy as np
import pytest
import torch

from ptuning.data.conll_qa import build_conll2003_qa
from ptuning.data.formats import SquadFormat
from ptuning.data.packaged import load_packaged
from ptuning.data.readers import TaggedSentence
from ptuning.data.squad import QAExample, read_squad
from ptuning.errors import DataError
from ptuning.metrics import exact_match, normalize_answer, squad_metrics, token_f1
from ptuning.tasks.question_answering import QuestionAnsweringTask, choose_null_threshold
from ptuning.vocabulary import Family

LONG_CONTEXT = (
    "Peter Blackburnshire, a retired teacher from Leeds, travelled for many weeks across the northern mountains "
    "before he finally reached the big house in Oslo where his brother had lived since the early spring of that year."
)
ANSWER = "the big house in Oslo"


def answerable(text: str, *golds: str, id: str = "q", question: str = "Where did he go?") -> QAExample:
    return QAExample(id, question, text, [(gold, text.index(gold)) for gold in golds])


def impossible(id: str) -> QAExample:
    return QAExample(id, "?", "some context", [], is_impossible=True)


# metrics ------------------------------------------------------------------------------------------


def test_normalization_drops_case_punctuation_articles_and_extra_space():
    assert normalize_answer("The  Big, Apple!") == "big apple"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("Theatre (Athens)") == "theatre athens"  # articles only as whole words
    assert exact_match("the Eiffel Tower", "Eiffel tower.") == 1.0
    assert exact_match("Eiffel Tower", "Eiffel") == 0.0


def test_token_f1_on_hand_computed_overlaps():
    # gold {barack, obama, junior}, predicted {president, barack, obama}: 2 shared, P = R = 2/3
    assert token_f1("Barack Obama junior", "President Barack Obama") == pytest.approx(2 / 3)
    # P = 2/2, R = 2/3: F1 = 2 * 1 * (2/3) / (5/3) = 0.8
    assert token_f1("New York City", "the New York") == pytest.approx(0.8)
    # a repeated token counts as often as both sides have it: 1 shared, P = 1, R = 1/3 -> 0.5
    assert token_f1("yes yes no", "yes") == pytest.approx(0.5)
    assert token_f1("Oslo", "Bergen") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "Oslo") == 0.0 and token_f1("Oslo", "") == 0.0


def test_squad_metrics_take_the_best_gold_and_score_unanswerable_questions():
    broncos = answerable("The Denver Broncos won; the Broncos", "Denver Broncos", "the Broncos", id="a")
    city = answerable("He lives in New York City", "New York City", id="b")
    examples = [broncos, city, impossible("c"), impossible("d")]
    predictions = {"a": "Broncos", "b": "New York", "c": "", "d": "Oslo"}
    metrics = squad_metrics(examples, predictions)
    # exact: a 1 (matches "the Broncos"), b 0, c 1 ("" for no answer), d 0; F1: 1, 0.8, 1, 0
    assert metrics["exact"] == pytest.approx(50.0)
    assert metrics["f1"] == pytest.approx(70.0)
    assert metrics["HasAns_exact"] == pytest.approx(50.0)
    assert metrics["HasAns_f1"] == pytest.approx(90.0)
    assert metrics["NoAns_exact"] == pytest.approx(50.0)
    only_answerable = squad_metrics([broncos, city], {"a": "Denver Broncos"})  # b missing: scores 0
    assert only_answerable == {"exact": pytest.approx(50.0), "f1": pytest.approx(50.0)}


# features -----------------------------------------------------------------------------------------


def window_span(offsets) -> tuple[int, int]:
    spans = [span for span in offsets if span is not None]
    return spans[0][0], spans[-1][1]


def test_long_context_becomes_overlapping_windows_with_exact_offsets(minilm_tokenizer):
    task = QuestionAnsweringTask(minilm_tokenizer, [], 24, doc_stride=4)
    example = answerable(LONG_CONTEXT, ANSWER)
    encoded = task.encode([example])
    assert len(encoded.inputs) == 3 and all(window.example == 0 for window in encoded.meta)
    for inputs, window in zip(encoded.inputs, encoded.meta, strict=True):
        assert set(inputs) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
        assert len(inputs["input_ids"]) <= 24
        tokens = minilm_tokenizer.convert_ids_to_tokens(inputs["input_ids"])
        assert tokens[:7] == ["[CLS]", "where", "did", "he", "go", "?", "[SEP]"] and tokens[-1] == "[SEP]"
        assert all(span is None for span in window.offsets[:7] + window.offsets[-1:])
        for token, span in zip(tokens[7:-1], window.offsets[7:-1], strict=True):
            assert LONG_CONTEXT[span[0] : span[1]].lower() == token.removeprefix("##")
    contexts = [[span for span in window.offsets if span] for window in encoded.meta]
    for previous, following in pairwise(contexts):
        assert previous[-4:] == following[:4]  # doc_stride tokens are shared by neighbouring windows
    assert window_span(encoded.meta[0].offsets)[0] == 0
    assert window_span(encoded.meta[-1].offsets)[1] == len(LONG_CONTEXT)


def test_answer_labels_only_where_the_window_holds_all_of_it(minilm_tokenizer):
    task = QuestionAnsweringTask(minilm_tokenizer, [], 24, doc_stride=4)
    example = answerable(LONG_CONTEXT, ANSWER)
    start_char = LONG_CONTEXT.index(ANSWER)
    end_char = start_char + len(ANSWER)
    encoded = task.encode([example])
    kinds = []
    for inputs, window in zip(encoded.inputs, encoded.meta, strict=True):
        first, last = window_span(window.offsets)
        start, end = inputs["labels"]
        if first <= start_char and end_char <= last:
            kinds.append("inside")
            assert LONG_CONTEXT[window.offsets[start][0] : window.offsets[end][1]] == ANSWER
        elif first < end_char and start_char < last:
            kinds.append("cut")
            assert (start, end) == (0, 0)
        else:
            kinds.append("elsewhere")
            assert (start, end) == (0, 0)
    assert kinds == ["elsewhere", "inside", "cut"]
    unanswerable = QAExample("n", "Where did he go?", LONG_CONTEXT, [], is_impossible=True)
    assert all(inputs["labels"] == [0, 0] for inputs in task.encode([unanswerable]).inputs)


def test_stride_is_clamped_and_a_question_that_cannot_fit_is_refused(minilm_tokenizer):
    task = QuestionAnsweringTask(minilm_tokenizer, [], 24)  # doc_stride 128 > the 16 context tokens a window has
    contexts = [[span for span in window.offsets if span] for window in task.encode([answerable(LONG_CONTEXT)]).meta]
    assert len(contexts[0]) == 16 and contexts[0][-8:] == contexts[1][:8]  # half the room is shared
    long_question = QAExample("long", "why " * 30, "short context", source="dev.json: data[0].paragraphs[0].qas[3]")
    with pytest.raises(DataError, match=r"qas\[3\].*question alone takes"):
        task.encode([long_question])


def test_collator_pads_features_and_stacks_labels(minilm_tokenizer):
    task = QuestionAnsweringTask(minilm_tokenizer, [], 24, doc_stride=4)
    encoded = task.encode([answerable(LONG_CONTEXT, ANSWER), answerable("Oslo is cold", "Oslo")])
    batch = task.collator()(encoded.inputs)
    assert batch["input_ids"].shape == (4, 24) and batch["labels"].shape == (4, 2)
    assert batch["labels"].tolist() == [inputs["labels"] for inputs in encoded.inputs]
    assert batch["attention_mask"][-1].sum() == len(encoded.inputs[-1]["input_ids"])


# decoding -----------------------------------------------------------------------------------------

SHORT = "Peter went to Oslo in May ."


def crafted(task, example, spans: dict[str, tuple[float, float]], question=(-10.0, -10.0), cls=(-10.0, -10.0)):
    """Logits of one window: -10 everywhere but the given (start, end) logits of context words, question tokens, CLS."""
    encoded = task.encode([example], with_labels=False)
    (window,) = encoded.meta
    logits = np.full((len(window.offsets), 2), -10.0, dtype=np.float32)
    logits[0] = cls
    first_context = next(position for position, span in enumerate(window.offsets) if span)
    logits[1 : first_context - 1] = question  # between [CLS] and [SEP]
    for position, span in enumerate(window.offsets):
        if span is not None and example.context[span[0] : span[1]] in spans:
            logits[position] = spans[example.context[span[0] : span[1]]]
    return [logits], encoded


def test_decode_rejects_question_tokens_reversed_and_too_long_spans(minilm_tokenizer):
    example = QAExample("s", "Where did Peter go?", SHORT, [("Oslo", 14)])
    task = QuestionAnsweringTask(minilm_tokenizer, [], 64)
    # the question tokens score highest but are not in the context
    logits, encoded = crafted(task, example, {"Oslo": (1, 1)}, question=(20, 20))
    (prediction,) = task.decode(logits, encoded, [example])
    assert prediction["text"] == "Oslo" and (prediction["start"], prediction["end"]) == (14, 18)
    assert prediction["score"] == pytest.approx(2.0)
    # May -> Peter ends before it starts; May -> May and Peter -> Peter score 0; to -> Oslo scores 5
    logits, encoded = crafted(task, example, {"May": (10, -10), "Peter": (-10, 10), "to": (2, -10), "Oslo": (-10, 3)})
    assert task.decode(logits, encoded, [example])[0]["text"] == "to Oslo"
    # Peter -> "." scores 20 but is 7 tokens, Oslo -> "." (12) 4 tokens, Oslo -> May (4) 3 tokens
    spans = {"Peter": (10, -10), ".": (-10, 10), "Oslo": (2, -10), "May": (-10, 2)}
    for limit, expected in ((3, "Oslo in May"), (4, "Oslo in May ."), (7, SHORT)):
        task = QuestionAnsweringTask(minilm_tokenizer, [], 64, max_answer_length=limit)
        logits, encoded = crafted(task, example, spans)
        assert task.decode(logits, encoded, [example])[0]["text"] == expected


def test_decode_takes_the_best_span_over_all_windows(minilm_tokenizer):
    task = QuestionAnsweringTask(minilm_tokenizer, [], 24, doc_stride=4)
    example = answerable(LONG_CONTEXT, ANSWER)
    encoded = task.encode([example], with_labels=False)
    logits = [np.zeros((len(window.offsets), 2), dtype=np.float32) for window in encoded.meta]
    logits[0][8, 0] = logits[0][9, 1] = 3.0  # "Blackburnshire": 6 in the first window
    logits[1][17, 0] = logits[1][21, 1] = 4.0  # ANSWER: 8 in the second
    (prediction,) = task.decode(logits, encoded, [example])
    assert prediction["text"] == ANSWER and prediction["score"] == pytest.approx(8.0)
    assert LONG_CONTEXT[prediction["start"] : prediction["end"]] == ANSWER


def test_version_2_predicts_no_answer_by_the_lowest_null_score_and_threshold(minilm_tokenizer):
    example = QAExample("s", "Where did Peter go?", SHORT, [("Oslo", 14)])
    task = QuestionAnsweringTask(minilm_tokenizer, [], 64, version_2=True)
    logits, encoded = crafted(task, example, {"Oslo": (2, 3)}, cls=(4, 4))  # null 8 beats span 5 by 3
    (prediction,) = task.decode(logits, encoded, [example])
    assert prediction == {
        "text": "",
        "start": -1,
        "end": -1,
        "score": pytest.approx(5.0),
        "probability": pytest.approx(prediction["probability"]),
        "null_score": pytest.approx(8.0),
        "null_probability": pytest.approx(prediction["null_probability"]),
        "span_text": "Oslo",
    }
    assert prediction["null_probability"] > 0.5 > prediction["probability"]
    task.null_threshold = 3.5  # the null score must beat the span by more than 3.5
    assert task.decode(logits, encoded, [example])[0]["text"] == "Oslo"
    assert QuestionAnsweringTask(minilm_tokenizer, [], 64).decode(logits, encoded, [example])[0]["text"] == "Oslo"
    # two windows: the null score is the lowest of their first-token scores
    long_task = QuestionAnsweringTask(minilm_tokenizer, [], 24, doc_stride=4, version_2=True)
    long_example = answerable(LONG_CONTEXT, ANSWER)
    long_encoded = long_task.encode([long_example], with_labels=False)
    windows = [np.zeros((len(window.offsets), 2), dtype=np.float32) for window in long_encoded.meta]
    for window, cls in zip(windows, (3.0, 1.0, 2.0), strict=True):
        window[0] = cls
    windows[1][17, 0] = windows[1][21, 1] = 2.0
    (prediction,) = long_task.decode(windows, long_encoded, [long_example])
    assert prediction["null_score"] == pytest.approx(2.0) and prediction["text"] == ANSWER


def test_probabilities_are_those_of_the_transformers_pipeline(minilm_tokenizer):
    from transformers.pipelines.document_question_answering import select_starts_ends

    example = QAExample("s", "Where did Peter go?", SHORT, [("Oslo", 14)])
    task = QuestionAnsweringTask(minilm_tokenizer, [], 64)
    logits, encoded = crafted(task, example, {"Oslo": (2.0, 3.0), "Peter": (1.5, -1.0)}, question=(9, 9), cls=(1, 2))
    (prediction,) = task.decode(logits, encoded, [example])
    (window,) = encoded.meta
    p_mask = np.array([[span is None for span in window.offsets]], dtype=int)  # (1, tokens)
    p_mask[0, 0] = 0  # the first token (no answer) takes part in the softmax, as the pipeline's [CLS] does
    starts, ends, scores, null = select_starts_ends(
        logits[0][None, :, 0], logits[0][None, :, 1], p_mask, np.ones_like(p_mask), handle_impossible_answer=True
    )
    assert (window.offsets[starts[0]][0], window.offsets[ends[0]][1]) == (prediction["start"], prediction["end"])
    assert prediction["probability"] == pytest.approx(float(scores[0]), rel=1e-5)
    assert prediction["null_probability"] == pytest.approx(null, rel=1e-5)
    assert task.format_prediction(example, prediction)["probability"] == prediction["probability"]
    nothing = {**prediction, "text": "", "start": -1, "end": -1}
    assert task.format_prediction(example, nothing)["probability"] == prediction["null_probability"]


def test_prediction_lines_in_and_out(minilm_tokenizer):
    task = QuestionAnsweringTask(minilm_tokenizer, [], 64)
    record = {"question": "Where?", "context": SHORT}
    example = task.parse_input(json.dumps(record), record, "in.jsonl:4")
    assert (example.id, example.question, example.context, example.source) == (
        "in.jsonl:4",
        "Where?",
        SHORT,
        "in.jsonl:4",
    )
    assert task.parse_input("", {**record, "id": "x1"}, "in.jsonl:5").id == "x1"
    with pytest.raises(DataError, match=r"in.jsonl:6: question answering reads JSON lines .*not plain text"):
        task.parse_input("Where is Oslo?", None, "in.jsonl:6")
    with pytest.raises(DataError, match=r"in.jsonl:7: expected .* non-empty question and context"):
        task.parse_input("", {"question": "Where?"}, "in.jsonl:7")
    prediction = {"text": "Oslo", "start": 14, "end": 18, "score": 2.0, "null_score": 0.0, "span_text": "Oslo"}
    prediction |= {"probability": 0.75, "null_probability": 0.1}
    assert task.format_prediction(example, prediction) == {
        "id": "in.jsonl:4",
        "prediction_text": "Oslo",
        "start": 14,
        "end": 18,
        "score": 2.0,
        "probability": 0.75,
    }


def test_null_threshold_maximizes_f1():
    examples = [
        answerable("He went to Oslo", "Oslo", id="a"),
        impossible("b"),
        answerable("in New York City", "New York City", id="c"),
        answerable("in New York City", "New York City", id="e"),
        impossible("d"),
    ]
    # (null_score - score, span): gains when answered a +1, b -1, c +1, e +0.8, d -1 -> best cut after e
    rows = {"a": (-2, "Oslo"), "b": (1, "Paris"), "c": (3, "New York City"), "e": (4, "New York"), "d": (5, "Bergen")}
    decoded = [
        {
            "text": "",
            "start": -1,
            "end": -1,
            "score": 0.0,
            "null_score": float(rows[e.id][0]),
            "span_text": rows[e.id][1],
        }
        for e in examples
    ]
    threshold = choose_null_threshold(examples, decoded)
    assert threshold == 4.0

    def f1_at(cut: float) -> float:
        answers = {e.id: rows[e.id][1] if rows[e.id][0] <= cut else "" for e in examples}
        return squad_metrics(examples, answers)["f1"]

    assert f1_at(threshold) == pytest.approx(100 * 3.8 / 5)  # a, c, e answered; b "Paris" scores 0; d "" scores 1
    assert all(f1_at(threshold) >= f1_at(cut) for cut in (-100, -2, 0, 1, 3, 5, 100))
    nothing_pays = choose_null_threshold([impossible("x")], [{**decoded[1], "null_score": 0.5}])
    assert nothing_pays < 0.5  # every question is better left unanswered


# reader -------------------------------------------------------------------------------------------

CONTEXT = "Oslo is the capital of Norway."


def squad_file(tmp_path, qas: list, name: str = "dev.json"):
    path = tmp_path / name
    path.write_text(
        json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]})
    )
    return path


def test_read_squad_versions_1_and_2(tmp_path):
    path = squad_file(
        tmp_path,
        [
            {
                "id": "q1",
                "question": "Capital?",
                "answers": [{"text": "Oslo", "answer_start": 0}, {"text": "Oslo", "answer_start": 0}],
            },
            {"id": "q2", "question": "Population?", "answers": [], "is_impossible": True},
        ],
    )
    first, second = read_squad(path)
    assert (first.id, first.question, first.context) == ("q1", "Capital?", CONTEXT)
    assert first.answers == [("Oslo", 0), ("Oslo", 0)] and not first.is_impossible
    assert first.source == f"{path}: data[0].paragraphs[0].qas[0] id=q1"
    assert second.is_impossible and second.answers == []


@pytest.mark.parametrize(
    ("qa", "message"),
    [
        ({"id": "q7", "answers": []}, r"qas\[0\] id=q7: missing 'question'"),
        (
            {"id": "q7", "question": "?", "answers": [{"text": "Norway", "answer_start": 3}]},
            r"qas\[0\] id=q7 answers\[0\]: the context at answer_start 3 reads 'o is t', not the answer 'Norway'",
        ),
        (
            {"id": "q7", "question": "?", "answers": [{"text": "Norway.", "answer_start": 25}]},
            r"qas\[0\] id=q7 answers\[0\]: answer 'Norway.' at answer_start 25 lies outside the context \(30 char",
        ),
        ({"id": "q7", "question": "?", "answers": []}, r"qas\[0\] id=q7: no answers"),
    ],
)
def test_read_squad_names_file_and_record_of_bad_questions(tmp_path, qa, message):
    path = squad_file(tmp_path, [qa])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: data\[0\]\.paragraphs\[0\]\.{message}"):
        read_squad(path)


def test_read_squad_refuses_non_json_and_missing_data(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('{"data": [')
    with pytest.raises(DataError, match=r"train.json: not JSON"):
        read_squad(path)
    path.write_text('{"version": "1.1"}')
    with pytest.raises(DataError, match=r"train.json: the top level: missing 'data'"):
        read_squad(path)


# CoNLL-2003 as QA --------------------------------------------------------------------------------


def test_conll_questions_have_every_mention_with_its_offset():
    sentence = TaggedSentence(
        ["Peter", "Blackburn", "visited", "Oslo", "Bergen", "."], ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "O"], "s:1"
    )
    per, org, loc, misc = build_conll2003_qa([sentence])
    assert per.context == "Peter Blackburn visited Oslo Bergen ."
    assert per.id == "s:1:PER" and per.question == "Which persons are mentioned?"
    assert per.answers == [("Peter Blackburn", 0)] and not per.is_impossible
    assert loc.answers == [("Oslo", 24), ("Bergen", 29)]  # two adjacent mentions stay apart
    assert all(loc.context[start : start + len(text)] == text for text, start in loc.answers)
    assert org.is_impossible and org.answers == [] and misc.is_impossible and misc.id == "s:1:MISC"


@pytest.fixture(scope="module")
def conll_qa():
    return load_packaged("conll2003-qa")


def test_packaged_conll2003_qa_sizes(conll_qa):
    splits = conll_qa
    assert splits.family is Family.QUESTION_ANSWERING and splits.data_format == SquadFormat()
    assert splits.options == {"version_2": True}
    sizes = [
        (len(part), sum(not e.is_impossible for e in part)) for part in (splits.train, splits.validation, splits.test)
    ]
    assert sizes == [(56164, 16785), (13000, 4106), (13812, 4083)]  # 4 questions per CoNLL-2003 sentence


# training -----------------------------------------------------------------------------------------


def test_a_few_trainer_steps_lower_the_loss_and_evaluate_scores(tmp_path, minilm_tokenizer, conll_qa):
    from transformers import Trainer, TrainingArguments

    from ptuning.config import PromptConfig
    from ptuning.model import PromptedModel

    torch.manual_seed(0)
    model = PromptedModel.from_backbone("minilm-l6", "question-answering", prompt=PromptConfig(length=8))
    task = QuestionAnsweringTask(minilm_tokenizer, [], 32, version_2=True)
    features = task.encode(conll_qa.train[:64]).inputs  # some sentences need two windows
    collate = task.collator()

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(model(**collate(features[:32])).loss)

    before = loss()
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        max_steps=10,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=0,
    )
    Trainer(model=model, args=arguments, train_dataset=features, data_collator=collate).train()
    assert loss() < 0.8 * before
    metrics = task.evaluate(model, conll_qa.validation[:16])
    assert set(metrics) >= {"exact", "f1"} and all(0.0 <= value <= 100.0 for value in metrics.values())
