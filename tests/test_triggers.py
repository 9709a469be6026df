"""Trigger words merged into the Stage-2 prompt without repeating what the LLM already wrote."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devserver_lora.lora.triggers import contains_trigger, merge_triggers


def test_prefix_by_default_and_suffix_on_request() -> None:
    assert merge_triggers("a market at dawn", ["yoruba heritage"]) == "yoruba heritage, a market at dawn"
    assert merge_triggers("a market at dawn", ["yoruba heritage"], position="suffix") == "a market at dawn, yoruba heritage"
    assert merge_triggers("a market", ["t1", "t2"]) == "t1, t2, a market"


def test_trigger_already_written_anywhere_is_not_repeated() -> None:
    prompt = "A still life in the Cooked Negatives style, soft light"
    assert merge_triggers(prompt, ["cooked negatives"]) == prompt
    assert merge_triggers("cooked\nnegatives, a cup", ["cooked negatives"]) == "cooked\nnegatives, a cup"


def test_word_boundaries() -> None:
    # "cat" inside "concatenate" is not the trigger; "tok" inside "tokyo" neither.
    assert merge_triggers("concatenate", ["cat"]) == "cat, concatenate"
    assert merge_triggers("tokyo at night", ["tok"]) == "tok, tokyo at night"
    assert merge_triggers("a <lora-style> poster", ["<lora-style>"]) == "a <lora-style> poster"
    assert merge_triggers("sks_dog running", ["sks"]) == "sks, sks_dog running"


def test_yoruba_diacritics_case_and_normal_forms() -> None:
    composed = "Ọmọ Yorùbá"
    decomposed = unicodedata.normalize("NFD", composed)
    prompt = f"portrait of an {decomposed.upper()} elder"
    assert merge_triggers(prompt, [composed]) == prompt
    assert contains_trigger("àdìrẹ cloth", "ÀDÌRẸ")
    # Without the accents it is a different word in Yorùbá: not a match.
    assert not contains_trigger("adire cloth", "àdìrẹ")
    assert merge_triggers("adire cloth", ["àdìrẹ"]) == "àdìrẹ, adire cloth"


def test_duplicates_empty_and_formatting() -> None:
    assert merge_triggers("x", ["A", "a", " ", "b  c"]) == "A, b c, x"
    assert merge_triggers("", ["t"]) == "t"
    assert merge_triggers("  , a prompt ,", ["t"]) == "t, a prompt"
    assert merge_triggers("p", []) == "p"
    assert merge_triggers("p", "single") == "single, p"
    with pytest.raises(ValueError, match="position"):
        merge_triggers("p", ["t"], position="middle")  # type: ignore[arg-type]


words = st.text(alphabet="abcỌọùáàìẹ ", min_size=1, max_size=12).filter(lambda s: s.strip())


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.lists(words, max_size=4), st.sampled_from(["prefix", "suffix"]))
def test_merge_is_stable_and_contains_every_trigger(prompt: str, triggers: list[str], position: str) -> None:
    once = merge_triggers(prompt, triggers, position=position)  # type: ignore[arg-type]
    assert merge_triggers(once, triggers, position=position) == once  # type: ignore[arg-type]
    for t in triggers:
        assert contains_trigger(once, t)
