"""Artifacts: safetensors round trips, and the pickle check does not misfire on real safetensors files."""

from __future__ import annotations

import json

import pytest
import torch

from saesteer.io import ArtifactError, load_tensors, save_tensors


def test_header_length_with_a_pickle_like_first_byte_still_loads(tmp_path):
    """A safetensors header length of 0x..80 starts the file with byte 0x80, pickle's protocol marker."""
    t = {"w": torch.arange(6, dtype=torch.float32).view(2, 3)}
    for pad in range(0, 300):  # grow the metadata until the header length's low byte is 0x80
        path = save_tensors(tmp_path / f"a{pad}.safetensors", t, {"note": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no metadata size gave a header length ending in 0x80")
    tensors, meta = load_tensors(path)
    assert torch.equal(tensors["w"], t["w"]) and meta["note"] == "x" * pad


def test_pickles_and_zip_archives_are_refused(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "zip.safetensors")
    (tmp_path / "old.safetensors").write_bytes(b"\x80\x02}q\x00." + json.dumps({}).encode())
    for name in ("zip.safetensors", "old.safetensors"):
        with pytest.raises(ArtifactError, match="looks like a pickle/torch.save file"):
            load_tensors(tmp_path / name)
