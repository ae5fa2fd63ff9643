import hashlib

import pytest

from saesteer.artifacts import KINDS, artifact_dir, artifact_path, cache_key


def _sha16(parts: list[str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() + b"\x00")
    return h.hexdigest()[:16]


def test_cache_key_hashes_strings_as_they_are_and_the_rest_as_sorted_json():
    blob = {"b": [1, 2.5], "a": "x"}
    assert cache_key("stage", blob, 3) == _sha16(["stage", '{"a": "x", "b": [1, 2.5]}', "3"])
    assert cache_key({"a": 1, "b": 2}) == cache_key({"b": 2, "a": 1})
    assert cache_key("a", "b") != cache_key("ab")


def test_artifact_paths_live_under_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAESTEER_CACHE", str(tmp_path))
    assert artifact_path("sae", "k1") == tmp_path / "sae" / "k1"
    assert artifact_dir("pipeline") == tmp_path / "pipeline"
    assert artifact_path("organism", "k2", root=tmp_path / "elsewhere") == tmp_path / "elsewhere" / "k2"
    assert set(KINDS) >= {"organism", "directions", "sae", "activations", "pipeline", "models"}


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match=r"unknown artifact kind 'saes'; expected one of"):
        artifact_path("saes", "k")
