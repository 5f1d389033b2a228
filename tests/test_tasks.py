"""Features, decoding and scores of the task families, on known cases."""

from __future__ import annotations

import numpy as np
import pytest

from ptuning.data.readers import LabeledText, TaggedSentence
from ptuning.errors import DataError
from ptuning.tasks import make_task
from ptuning.tasks.token_classification import WordTags

NER_LABELS = ["B-LOC", "B-PER", "I-PER", "O"]


def test_labels_on_first_subtoken_only(minilm_tokenizer):
    task = make_task("token-classification", minilm_tokenizer, NER_LABELS, 64)
    sentence = TaggedSentence(["Blackburnshire", "visited", "Oslo"], ["B-PER", "O", "B-LOC"])
    encoded = task.encode([sentence])
    tokens = minilm_tokenizer.convert_ids_to_tokens(encoded.inputs[0]["input_ids"])
    labels = encoded.inputs[0]["labels"]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert tokens[2].startswith("##")  # the first word is split into sub-tokens
    first_positions = [i for i, label in enumerate(labels) if label != -100]
    assert [tokens[i] for i in first_positions] == ["blackburn", "visited", "oslo"]
    assert [labels[i] for i in first_positions] == [1, 3, 0]
    assert labels.count(-100) == len(labels) - 3


def test_decode_reads_first_subtoken_and_marks_truncated_words_outside(minilm_tokenizer):
    task = make_task("token-classification", minilm_tokenizer, NER_LABELS, 4)  # [CLS] + 2 tokens + [SEP]
    sentence = TaggedSentence(["Peter", "Blackburn", "went", "home"], ["B-PER", "I-PER", "O", "O"])
    encoded = task.encode([sentence], with_labels=False)
    assert encoded.truncated == [0]
    logits = np.zeros((4, 4))
    logits[1, 1] = logits[2, 2] = 5.0  # Peter -> B-PER, Blackburn -> I-PER
    assert task.decode([logits], encoded, [sentence]) == [["B-PER", "I-PER", "O", "O"]]


def test_entity_level_scores_on_known_case(minilm_tokenizer):
    task = make_task("token-classification", minilm_tokenizer, NER_LABELS, 64)
    gold = [TaggedSentence(["a", "b", "c", "d"], ["B-PER", "I-PER", "O", "B-LOC"])]
    metrics = task.score(gold, [["B-PER", "I-PER", "O", "O"]])
    assert metrics["precision"] == pytest.approx(100.0)
    assert metrics["recall"] == pytest.approx(50.0)
    assert metrics["f1"] == pytest.approx(200 / 3)
    assert metrics["accuracy"] == pytest.approx(75.0)
    partial = task.score(gold, [["B-PER", "O", "O", "B-LOC"]])  # a half-found entity counts as wrong
    assert partial["precision"] == pytest.approx(50.0) and partial["recall"] == pytest.approx(50.0)


def test_tags_without_spans_are_scored_by_accuracy(minilm_tokenizer):
    task = make_task("token-classification", minilm_tokenizer, ["NN", "VB"], 64)
    assert task.primary_metric == "accuracy"
    metrics = task.score([TaggedSentence(["a", "b"], ["NN", "VB"])], [["NN", "NN"]])
    assert metrics == {"accuracy": 50.0}


def test_sequence_scores_on_known_case(minilm_tokenizer):
    task = make_task("sequence-classification", minilm_tokenizer, ["neg", "pos"], 64)
    examples = [LabeledText(t, None, label) for t, label in [("a", "pos"), ("b", "pos"), ("c", "neg"), ("d", "neg")]]
    probabilities = [np.array(p) for p in ([0.1, 0.9], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4])]
    metrics = task.score(examples, probabilities)
    assert metrics["accuracy"] == pytest.approx(75.0)
    # neg: P=2/3 R=1 F=0.8; pos: P=1 R=1/2 F=2/3 -> macro 0.7333
    assert metrics["f1"] == pytest.approx(100 * (0.8 + 2 / 3) / 2)


def test_pairs_are_two_segments_and_long_texts_truncated(minilm_tokenizer):
    task = make_task("sequence-classification", minilm_tokenizer, ["no", "yes"], 8)
    short = LabeledText("a cat", "a dog", "yes")
    long = LabeledText("one two three four five six seven eight nine", None, "no")
    encoded = task.encode([short, long])
    assert encoded.inputs[0]["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]
    assert len(encoded.inputs[1]["input_ids"]) == 8 and encoded.truncated == [1]
    assert [item["labels"] for item in encoded.inputs] == [1, 0]


def test_unknown_gold_label_is_refused_with_its_place(minilm_tokenizer):
    task = make_task("token-classification", minilm_tokenizer, NER_LABELS, 64)
    sentence = TaggedSentence(["Paris"], ["B-GPE"], source="dev.conll:12")
    with pytest.raises(DataError, match=r"dev.conll:12: label\(s\) \['B-GPE'\] unknown to the model"):
        task.check_labels([sentence])


def test_prediction_format_lists_entities(minilm_tokenizer):
    task = make_task("token-classification", minilm_tokenizer, NER_LABELS, 64)
    sentence = task.parse_input("Peter  Blackburn visited Oslo", None, "<stdin>:1")  # offsets keep the 2 spaces
    tags = WordTags(["B-PER", "I-PER", "O", "B-LOC"], [0.9, 0.7, 0.99, 0.6])
    result = task.format_prediction(sentence, tags)
    assert result["tags"] == ["B-PER", "I-PER", "O", "B-LOC"]
    assert result["entities"] == [
        {
            "entity_group": "PER",
            "score": pytest.approx(0.8),
            "word": "Peter  Blackburn",
            "start": 0,
            "end": 16,
            "word_start": 0,
            "word_end": 2,
        },
        {"entity_group": "LOC", "score": 0.6, "word": "Oslo", "start": 25, "end": 29, "word_start": 3, "word_end": 4},
    ]
    given_words = task.parse_input("", {"words": ["Peter", "Blackburn"]}, "<stdin>:3")
    [person] = task.format_prediction(given_words, ["B-PER", "I-PER"])["entities"]  # tags alone: no score
    assert (person["word"], person["start"], person["end"], person["score"]) == ("Peter Blackburn", 0, 15, None)
    with pytest.raises(DataError, match=r"<stdin>:2: expected"):
        task.parse_input('{"tokens": 1}', {"tokens": 1}, "<stdin>:2")


def test_tags_of_no_span_scheme_are_grouped_in_runs_as_transformers_groups_them(minilm_tokenizer):
    task = make_task("token-classification", minilm_tokenizer, ["ADJ", "NOUN", "O", "VERB"], 64)
    sentence = task.parse_input("big red dogs bark loudly", None, "<stdin>:1")
    tags = WordTags(["ADJ", "ADJ", "NOUN", "VERB", "O"], [0.5, 0.7, 0.9, 0.8, 0.99])
    entities = task.format_prediction(sentence, tags)["entities"]
    found = [(entity["entity_group"], entity["word"], entity["start"], entity["end"]) for entity in entities]
    # transformers' "simple" grouping: a tag without B-/I- continues a run of itself; "O" is ignored
    assert found == [("ADJ", "big red", 0, 7), ("NOUN", "dogs", 8, 12), ("VERB", "bark", 13, 17)]
    assert entities[0]["score"] == pytest.approx(0.6)


def test_a_text_encodes_the_same_whatever_its_batch_mates(minilm_tokenizer):
    """A single text next to a text pair is still encoded as a single text (no empty second segment)."""
    task = make_task("sequence-classification", minilm_tokenizer, ["neg", "pos"], 64)
    single = LabeledText("a good film", None, "pos")
    alone = task.encode([single]).inputs[0]
    beside_a_pair = task.encode([LabeledText("dull", "and long", "neg"), single]).inputs
    assert beside_a_pair[1] == alone
    assert minilm_tokenizer.convert_ids_to_tokens(alone["input_ids"]).count("[SEP]") == 1
    assert minilm_tokenizer.convert_ids_to_tokens(beside_a_pair[0]["input_ids"]).count("[SEP]") == 2


def test_decode_gives_each_word_the_probability_of_its_tag(minilm_tokenizer):
    task = make_task("token-classification", minilm_tokenizer, NER_LABELS, 64)
    sentence = TaggedSentence(["Oslo", "calls"], ["B-LOC", "O"])
    encoded = task.encode([sentence], with_labels=False)
    logits = np.zeros((len(encoded.inputs[0]["input_ids"]), len(NER_LABELS)))
    logits[1, 0] = 2.0  # "oslo": B-LOC
    logits[2, 3] = 1.0  # "calls": O
    [tags] = task.decode([logits], encoded, [sentence])
    assert list(tags) == ["B-LOC", "O"]
    assert tags.scores == pytest.approx([np.exp(2) / (np.exp(2) + 3), np.e / (np.e + 3)])
