"""The dataset card: required fields, consent, metadata for the LoRA file."""

from __future__ import annotations

import json

import pytest
from datasets import CARD

from devserver_lora.errors import DatasetError
from devserver_lora.train.card import METADATA_PREFIX, DatasetCard, card_from_dict, load_card


def test_valid_card_and_metadata(tmp_path):
    card = DatasetCard(**CARD)
    meta = card.to_metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert meta[f"{METADATA_PREFIX}licence"] == "CC-BY-4.0"
    assert meta[f"{METADATA_PREFIX}consent"] == "not_applicable"
    path = card.write(tmp_path / "card.json")
    assert load_card(path) == card
    per = card_from_dict({**CARD, "per_image": {"a.png": {"source": "museum", "rights_holder": "X"}}})
    assert json.loads(per.to_metadata()[f"{METADATA_PREFIX}per_image"]) == {"a.png": {"source": "museum",
                                                                                    "rights_holder": "X"}}


@pytest.mark.parametrize("value,expected", [("ja", "yes"), ("Nein", "no"), ("n/a", "not_applicable"), (True, "yes")])
def test_consent_spellings(value, expected):
    assert card_from_dict({**CARD, "consent": value}).consent == expected


def test_missing_and_blank_fields_are_all_reported():
    data = {k: v for k, v in CARD.items() if k not in ("licence", "approved_by")}
    data["title"] = "   "
    with pytest.raises(DatasetError) as exc:
        card_from_dict(data)
    paths = {p.path for p in exc.value.problems}
    assert {"$.licence", "$.approved_by", "$.title"} <= paths
    assert "rights_holder" in exc.value.hint


def test_no_consent_blocks_training():
    card = card_from_dict({**CARD, "consent": "no"})
    [problem] = card.problems()
    assert problem.code == "card_no_consent" and problem.severity == "error"


def test_missing_or_broken_card_file(tmp_path):
    with pytest.raises(DatasetError, match="no dataset card"):
        load_card(tmp_path / "card.json")
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(DatasetError, match="not valid UTF-8 JSON"):
        load_card(tmp_path / "bad.json")
    with pytest.raises(DatasetError):
        card_from_dict({**CARD, "per_image": {"../x.png": {}}})
