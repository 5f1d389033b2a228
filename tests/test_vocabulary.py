"""The shared vocabulary: task names, head kinds, families, data formats."""

import pytest
from torch import nn

from ptuning.errors import PtuningError
from ptuning.vocabulary import (
    _MODULE_DICT_ATTRIBUTES,
    _TRANSFORMERS_MODULE_ATTRIBUTES,
    FAMILIES,
    FORMAT_ALIASES,
    DataFormat,
    Family,
    HeadKind,
    TaskName,
    family,
)


def test_task_name_refuses_what_cannot_key_a_module_dict():
    assert TaskName("ner") == "ner"
    for bad in ("", "a.b", "to", "state_dict", "_modules", "training"):
        with pytest.raises(PtuningError, match="task names key"):
            TaskName(bad)


def test_module_dict_attributes_are_the_installed_torch_ones():
    # the list is written out so the command line checks names without importing torch; it must stay exact
    # with or without transformers' addition, which appears once a test has initialized a model
    assert set(dir(nn.ModuleDict())) | _TRANSFORMERS_MODULE_ATTRIBUTES == _MODULE_DICT_ATTRIBUTES


def test_every_family_has_a_head_kind_and_a_format():
    assert set(FAMILIES) == set(Family)
    assert Family.SRL.head_kind is HeadKind.TOKEN_CLASSIFICATION
    assert Family.QUESTION_ANSWERING.data_format is DataFormat.SQUAD
    assert FORMAT_ALIASES["squad_v2"].options == {"version_2": True}
    assert FORMAT_ALIASES["copa"].family is Family.MULTIPLE_CHOICE


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(PtuningError, match="unknown task 'nope'; supported: sequence-classification"):
        family("nope")
