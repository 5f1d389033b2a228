"""Generation metrics: text scores computed by hand, the entities parser's edge cases, entities from CoNLL tags, and
entity F1 held to seqeval's on the same tag sequences."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from seqeval.metrics import f1_score, precision_score, recall_score

from ptuning.data.packaged import conll2003_folder
from ptuning.data.readers import read_conll
from ptuning.errors import PtuningError
from ptuning.generation_metrics import (
    PARSERS,
    entities_from_tags,
    entity_metrics,
    format_entities,
    generation_metrics,
    parse_entities,
    primary_metric,
    text_metrics,
)

GOLD = "Peter Blackburn (PER); Brussels (LOC)"

# text metrics -------------------------------------------------------------------------------------


def test_exact_match_normalizes_case_punctuation_and_articles():
    assert text_metrics(["The Eiffel  Tower!"], [["eiffel tower"]])["exact_match"] == 100.0
    assert text_metrics(["Eiffel"], [["eiffel tower"]])["exact_match"] == 0.0


def test_token_f1_of_a_partial_overlap():
    # normalized tokens: gold {peter, blackburn}, predicted {blackburn, said}: one shared, P = R = 1/2
    assert text_metrics(["Blackburn said"], [["Peter Blackburn"]])["f1"] == pytest.approx(50.0)


def test_rouge_l_of_a_known_longest_common_subsequence():
    # LCS of "the cat sat on the mat" and "the cat lay on a mat" is "the cat on mat": 4 of 6 tokens both ways
    scores = text_metrics(["the cat sat on the mat"], [["the cat lay on a mat"]])
    assert scores["rougeL"] == pytest.approx(100 * 2 / 3)


def test_best_reference_per_example_then_the_mean_over_examples():
    scores = text_metrics(["Blackburn said", "Brussels"], [["nothing alike", "Peter Blackburn"], ["Brussels", "x"]])
    assert scores["exact_match"] == pytest.approx(50.0)  # (0 + 1) / 2
    assert scores["f1"] == pytest.approx(75.0)  # (0.5 + 1) / 2
    assert scores["rougeL"] == pytest.approx(75.0)  # ROUGE-L of one shared token out of two each side is 0.5


def test_text_metrics_refuse_mismatched_or_empty_references():
    with pytest.raises(PtuningError, match="2 predictions for 1 references"):
        text_metrics(["a", "b"], [["a"]])
    with pytest.raises(PtuningError, match="example 0: expected a non-empty list"):
        text_metrics(["a"], [[]])


# the entities parser ------------------------------------------------------------------------------


def test_parse_entities_tolerates_spaces_and_skips_empty_items():
    assert parse_entities("  Peter   Blackburn(PER) ;Brussels ( LOC );  ") == Counter(
        {("Peter Blackburn", "PER"): 1, ("Brussels", "LOC"): 1}
    )


@pytest.mark.parametrize("empty", ["", "   ", "none", " None ", "NONE"])
def test_an_empty_answer_or_the_none_marker_means_no_entities(empty):
    assert parse_entities(empty) == Counter()


def test_a_declared_none_marker():
    assert parse_entities("nothing", none_marker="nothing") == Counter()
    assert format_entities([], none_marker="nothing") == "nothing"


def test_malformed_items_count_as_wrong_predictions_and_references_must_be_well_formed():
    parsed = parse_entities("Paris; Berlin (LOC); (PER); Lyon (LOC")
    assert parsed == Counter({("Paris", None): 1, ("Berlin", "LOC"): 1, ("(PER)", None): 1, ("Lyon (LOC", None): 1})
    # 1 of 4 predicted items matches the 1 gold pair: P 25, R 100, F1 = 2 * 0.25 / 1.25 = 0.4
    assert entity_metrics(["Paris; Berlin (LOC); (PER); Lyon (LOC"], ["Berlin (LOC)"]) == pytest.approx(
        {"precision": 25.0, "recall": 100.0, "f1": 40.0}
    )
    with pytest.raises(PtuningError, match="reference 1: malformed entity 'Paris'"):
        entity_metrics(["none", "none"], ["none", "Paris; Berlin (LOC)"])


def test_duplicates_are_counted_as_a_multiset():
    assert parse_entities("Paris (LOC); Paris (LOC)") == Counter({("Paris", "LOC"): 2})
    # two predicted, one gold, one matched: P 50, R 100, F1 66.67
    assert entity_metrics(["Paris (LOC); Paris (LOC)"], ["Paris (LOC)"]) == pytest.approx(
        {"precision": 50.0, "recall": 100.0, "f1": 200 / 3}
    )


def test_format_then_parse_round_trips_texts_with_their_own_brackets():
    pairs = [("Mladost ( L )", "ORG"), ("( Tom ) Seaver", "PER"), ("Videoton(*", "ORG"), ("Paris", "LOC")]
    assert format_entities(pairs) == "Mladost ( L ) (ORG); ( Tom ) Seaver (PER); Videoton(* (ORG); Paris (LOC)"
    assert parse_entities(format_entities(pairs), strict=True) == Counter(pairs)
    assert format_entities([]) == "none"


@pytest.mark.parametrize("pair", [("A; B", "ORG"), ("", "PER"), ("Paris", "LOC CITY"), ("Paris", "(LOC)")])
def test_format_refuses_what_could_not_be_parsed_back(pair):
    with pytest.raises(PtuningError, match="cannot be written"):
        format_entities([pair])


# entities from tags and seqeval's entity F1 -------------------------------------------------------

WORDS = ["Peter", "Blackburn", "met", "Paris", "Lyon", "EU"]
ENTITIES = [("Peter Blackburn", "PER"), ("Paris", "LOC"), ("Lyon", "LOC"), ("EU", "ORG")]


def test_entities_from_iob2_tags():
    assert entities_from_tags(WORDS, ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"]) == ENTITIES


def test_entities_from_iob1_tags():
    # IOB1 opens an entity with I-, and uses B- only between two adjacent entities of the same type
    assert entities_from_tags(WORDS, ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == ENTITIES


def test_entities_from_tags_refuse_mismatched_lengths():
    with pytest.raises(PtuningError, match="6 words but 2 tags"):
        entities_from_tags(WORDS, ["O", "O"])


def test_the_formatted_gold_scores_100_and_a_partial_answer_scores_what_hand_counting_gives():
    gold = format_entities(entities_from_tags(WORDS, ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"]))
    assert entity_metrics([gold], [gold]) == {"precision": 100.0, "recall": 100.0, "f1": 100.0}
    # example 1: 1 of 2 predicted right (Brussels has the wrong type), 2 gold; example 2: 1 spurious, 0 gold
    # P = 1/3, R = 1/2, F1 = 2 * (1/6) / (5/6) = 0.4
    scores = entity_metrics(["Peter Blackburn (PER); Brussels (ORG)", "EU (ORG)"], [GOLD, "none"])
    assert scores == pytest.approx({"precision": 100 / 3, "recall": 50.0, "f1": 40.0})


def test_nothing_predicted_and_nothing_gold_scores_0_as_seqeval_does():
    assert entity_metrics(["none"], ["none"]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert 100 * f1_score([["O"]], [["O"]], zero_division=0) == 0.0


def test_entity_metrics_agree_with_seqeval_on_perturbed_tag_sequences():
    rng = random.Random(0)
    tags = ["O", *(f"{prefix}-{kind}" for prefix in "BI" for kind in ("PER", "LOC", "ORG", "MISC"))]
    gold_tags, predicted_tags, gold_texts, predicted_texts = [], [], [], []
    for _ in range(200):
        words = [f"w{i}" for i in range(rng.randint(1, 15))]  # distinct words: a text names one span
        gold = [rng.choice(tags) if rng.random() < 0.4 else "O" for _ in words]  # IOB1 and IOB2 runs alike
        predicted = [rng.choice(tags) if rng.random() < 0.2 else tag for tag in gold]
        gold_tags.append(gold)
        predicted_tags.append(predicted)
        gold_texts.append(format_entities(entities_from_tags(words, gold)))
        predicted_texts.append(format_entities(entities_from_tags(words, predicted)))
    expected = {
        name: 100 * score(gold_tags, predicted_tags, zero_division=0)
        for name, score in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score))
    }
    assert 0 < expected["f1"] < 100
    assert entity_metrics(predicted_texts, gold_texts) == pytest.approx(expected)


def test_conll2003_is_iob2_and_its_formatted_gold_parses_back_to_seqeval_entities():
    sentences = read_conll(conll2003_folder() / "valid.txt", 3)
    for sentence in sentences:
        tags = sentence.tags
        assert all(tag[2:] == before[2:] for before, tag in zip(["O", *tags], tags, strict=False) if tag[:2] == "I-")
        entities = entities_from_tags(sentence.words, tags)
        assert parse_entities(format_entities(entities), strict=True) == Counter(entities)
    targets = [format_entities(entities_from_tags(s.words, s.tags)) for s in sentences]
    assert entity_metrics(targets, targets)["f1"] == 100.0


# the task's entry point ---------------------------------------------------------------------------


def test_generation_metrics_without_a_parser_is_judged_on_rouge_l():
    scores = generation_metrics(["the cat sat on the mat"], ["the cat lay on a mat"], None)
    assert set(scores) == {"exact_match", "f1", "rougeL"}
    assert primary_metric(None) == "rougeL" and scores["rougeL"] == pytest.approx(100 * 2 / 3)


def test_generation_metrics_with_the_entities_parser():
    assert "entities" in PARSERS and primary_metric("entities") == "entities_f1"
    scores = generation_metrics(["Peter Blackburn (PER); Brussels (ORG)", "EU (ORG)"], [GOLD, ["none"]], "entities")
    assert set(scores) == {
        "exact_match",
        "f1",
        "rougeL",
        "entities_precision",
        "entities_recall",
        "entities_f1",
    }
    assert scores["entities_f1"] == pytest.approx(40.0)
    assert scores["exact_match"] == 0.0


def test_generation_metrics_refuse_an_unknown_parser_and_several_references_to_parse():
    with pytest.raises(PtuningError, match="unknown output parser 'json'; known: entities"):
        generation_metrics(["a"], ["a"], "json")
    with pytest.raises(PtuningError, match="example 0: a parsed output has one reference"):
        generation_metrics(["none"], [["none", "Paris (LOC)"]], "entities")
