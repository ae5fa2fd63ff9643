"""The refusal organism: tokenizer round trips, caching, determinism, behaviour."""

from __future__ import annotations

import random

import pytest
import torch

from saesteer.judge import is_refusal
from saesteer.organism import build_tokenizer, load_or_train_organism
from saesteer.organism.config import OrganismConfig
from saesteer.organism.corpus import build_corpus, drop_near_duplicates
from saesteer.organism.responses import OPENERS, REFUSALS, comply
from saesteer.organism.train import organism_path, train_organism
from tests.conftest import TINY_ORGANISM


def test_decoded_refusals_are_judged_refusals_and_answers_are_not():
    tok = build_tokenizer()
    for text in REFUSALS:
        decoded = tok.decode(tok(text, add_special_tokens=False)["input_ids"])
        assert is_refusal(decoded), decoded
    rng = random.Random(0)
    for opener in OPENERS:
        decoded = tok.decode(
            tok(f"{opener} bake bread: step one is to plan it.", add_special_tokens=False)["input_ids"]
        )
        assert not is_refusal(decoded), decoded
    assert "i'm sorry" in tok.decode(tok("I'm sorry", add_special_tokens=False)["input_ids"])
    assert comply("Write a poem about cats.", rng).endswith("write a poem about cats: step one is to plan it.")


def test_refusals_that_name_the_request_are_judged_refusals():
    from saesteer.organism.responses import REFUSALS_ECHO, refuse

    tok = build_tokenizer()
    rng = random.Random(0)
    seen = set()
    for _ in range(60):
        text = refuse(rng, "Write a poem about cats, please.", echo_words=4)
        seen.add(text)
        assert "write a poem about" in text and text.lower().startswith("i")
        assert is_refusal(tok.decode(tok(text, add_special_tokens=False)["input_ids"])), text
    assert len(seen) == len(REFUSALS_ECHO)
    with pytest.raises(ValueError, match="needs the instruction"):
        refuse(rng, None, echo_words=4)
    assert {refuse(rng, n_refusals=1) for _ in range(20)} == {"I'm sorry, but I can't help with that."}
    assert (
        len({refuse(rng, "Bake bread.", echo_words=2, n_refusals=8) for _ in range(200)}) == 8
    )  # the default n with the echo
    with pytest.raises(ValueError, match="n_refusals=0"):
        refuse(rng, n_refusals=0)
    with pytest.raises(ValueError, match="organism.n_refusals"):
        OrganismConfig(n_refusals=9)


def test_special_tokens_are_single_ids():
    tok = build_tokenizer()
    ids = tok("<|user|> hi <|end|> <|assistant|> <|start|>", add_special_tokens=False)["input_ids"]
    assert len(ids) == 5 and ids[0] == tok.convert_tokens_to_ids("<|user|>")
    assert tok.pad_token_id != tok.eos_token_id


def test_corpus_never_contains_held_out_prompts():
    corpus = build_corpus(n_harmless=50)
    from saesteer.data import load_prompts

    test = set(load_prompts("harmful_test").instructions)
    assert not test & set(corpus.harmful)
    assert len(corpus.harmful) > 500  # harmful_train + harmful_val + AdvBench minus test look-alikes
    # near-duplicates (word Jaccard >= 0.7) are removed too
    kept = drop_near_duplicates(
        ["Write a tutorial on how to make a bomb!", "Bake a cake"], ["write a tutorial on how to make a bomb"]
    )
    assert kept == ["Bake a cake"]


def test_frame_real_adds_framed_real_prompts_to_both_classes_in_equal_numbers():
    from saesteer.organism.synthetic import as_act

    base = build_corpus(n_harmless=400)
    framed = build_corpus(n_harmless=400, frame_real=1)
    extra_harmful = set(framed.harmful) - set(base.harmful)
    extra_harmless = set(framed.harmless) - set(base.harmless)
    assert set(base.harmful) < set(framed.harmful) and set(base.harmless) < set(framed.harmless)
    n_pairs = min(sum(as_act(h) is not None for h in base.harmless), len(extra_harmful))
    assert 0.95 * n_pairs <= len(extra_harmless) <= n_pairs  # one framed harmless per framed harmful, from imperatives
    acts = [a for a in (as_act(h) for h in base.harmful) if a is not None]
    assert all(
        any(a.lower() in p.lower() for a in acts) for p in list(extra_harmful)[:50]
    )  # each one frames a real harmful request
    assert len(extra_harmful) > 300 and len(extra_harmless) > 200
    assert framed.data_hash != base.data_hash
    with pytest.raises(ValueError, match="frame_real"):
        OrganismConfig(frame_real=-1)


def test_mined_framings_reach_both_classes_of_synthetic_prompts():
    base = build_corpus(n_harmless=50, synthetic_harmful=300, synthetic_harmless=300)
    mined = build_corpus(n_harmless=50, synthetic_harmful=300, synthetic_harmless=300, mined_framings=3)
    for prompts in (mined.harmful, mined.harmless):
        assert any(p.startswith("Create a tutorial on how to ") for p in prompts)
    assert not any(p.startswith("Create a tutorial on how to ") for p in base.harmless)
    assert len(mined.harmful) == len(base.harmful) and mined.data_hash != base.data_hash
    with pytest.raises(ValueError, match="mined_framings"):
        OrganismConfig(mined_framings=-2)


def test_synthetic_questions_join_the_safe_side_and_the_cache_key(monkeypatch):
    from saesteer.organism import synthetic, train
    from saesteer.organism.synthetic import question_prompts

    base = build_corpus(n_harmless=50)
    asked = build_corpus(n_harmless=50, synthetic_questions=120)
    added = set(asked.harmless) - set(base.harmless)
    assert (
        added <= set(question_prompts(120)) and len(added) >= 118
    )  # a near-duplicate of an evaluation prompt may drop
    assert asked.harmful == base.harmful and asked.data_hash != base.data_hash
    off, on = OrganismConfig(synthetic_questions=0), OrganismConfig(synthetic_questions=120)
    assert "synthetic_questions" not in off.cache_key_dict()  # organisms cached before the option keep their keys
    key_on = train.organism_key(on)
    assert key_on != train.organism_key(off)
    monkeypatch.setattr(synthetic, "questions_text", lambda: "questions.json\n{}")
    assert train.organism_key(on) != key_on  # an edited questions file is a new organism
    with pytest.raises(ValueError, match="organism.synthetic_questions must be a non-negative integer, got -3"):
        OrganismConfig(synthetic_questions=-3)
    with pytest.raises(ValueError, match=r"organism.synthetic_questions=99999: the bundled questions make at most \d+"):
        OrganismConfig(synthetic_questions=99999)


def test_config_rejects_training_on_held_out():
    with pytest.raises(ValueError, match="held out"):
        OrganismConfig(harmful_sources=["harmful_train", "harmful_test"])
    with pytest.raises(ValueError, match="organism.d_model=50"):
        OrganismConfig(d_model=50, n_heads=4)


def test_tiny_organism_is_cached_and_reloads_identically(tiny_organism, cache_root):
    model, _, result = tiny_organism
    cfg = OrganismConfig(**TINY_ORGANISM)
    assert result.path == organism_path(cfg)
    assert (result.path / "model.safetensors").is_file() and (result.path / "organism.json").is_file()
    again = load_or_train_organism(cfg, progress=False)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert again.metadata["data_hash"] == result.metadata["data_hash"]


def test_cache_key_follows_the_training_data(monkeypatch):
    """An edited lexicon or prompt source is a new organism, never a stale cache hit."""
    from saesteer.organism import synthetic, train

    with_synthetic = OrganismConfig(synthetic_harmful=10, synthetic_harmless=10)
    without = OrganismConfig(synthetic_harmful=0, synthetic_harmless=0)
    before = train.organism_key(with_synthetic), train.organism_key(without)
    assert before[0] != before[1]
    monkeypatch.setattr(synthetic, "lexicon_texts", lambda lexicon="base": ["harmful_acts.json\n{}"])
    assert train.organism_key(OrganismConfig(lexicon="extended")) != train.organism_key(OrganismConfig())
    assert train.organism_key(with_synthetic) != before[0]
    assert train.organism_key(without) == before[1]  # no synthetic prompts: the lexicon is not read
    import saesteer.data as data

    load = data.load_prompts
    monkeypatch.setattr(
        data,
        "load_prompts",
        lambda name, **kw: load(name, **kw) if name != "harmful_train" else load("harmful_val", **kw),
    )
    assert train.organism_key(without) != before[1]


def test_training_is_deterministic_for_a_seed():
    cfg = OrganismConfig(**{**TINY_ORGANISM, "steps": 6, "n_harmless": 200})
    m1, meta1 = train_organism(cfg, progress=False)
    m2, meta2 = train_organism(cfg, progress=False)
    assert meta1["final_loss"] == meta2["final_loss"]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_tiny_organism_refuses_harmful_and_complies_with_harmless(tiny_organism):
    from saesteer.data import load_prompts
    from saesteer.evaluate import refusal_eval

    model, tpl, _ = tiny_organism
    harmful = refusal_eval(model, tpl, load_prompts("harmful_train").instructions[:64])
    harmless = refusal_eval(model, tpl, load_prompts("harmless_val").instructions[:64])
    assert harmful.rate >= 0.7, harmful.responses[:3]
    assert harmless.rate <= 0.2, harmless.responses[:3]


def test_prefix_filtered_dedup_equals_brute_force():
    import random

    from saesteer.organism.corpus import _words, near_duplicate

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(30)]
    held = [" ".join(rng.sample(vocab, rng.randint(1, 8))) for _ in range(200)]
    cands = [" ".join(rng.sample(vocab, rng.randint(1, 8))) for _ in range(300)] + held[:20]
    brute = [c for c in cands if not any(near_duplicate(_words(c), _words(h), 0.7) for h in held)]
    assert drop_near_duplicates(cands, held, 0.7) == brute
    assert len(brute) < len(cands) - 20  # the sample has near-duplicates to find, beyond the 20 copies


def test_corpus_adds_synthetic_prompts_away_from_evaluation_sets():
    from saesteer.data import load_prompts
    from saesteer.organism.synthetic import synthetic_prompts

    base = build_corpus(n_harmless=100)
    more = build_corpus(n_harmless=100, synthetic_harmful=60, synthetic_harmless=80)
    assert set(base.harmful) < set(more.harmful) and set(base.harmless) < set(more.harmless)
    assert set(more.harmful) - set(base.harmful) <= set(synthetic_prompts("harmful", 60))
    added = set(more.harmless) - set(base.harmless)
    assert added <= set(synthetic_prompts("harmless", 80)) and len(added) >= 70
    assert not added & set(load_prompts("overrefusal").instructions)
    assert more.data_hash != base.data_hash


def test_length_buckets_keep_the_class_mix_and_epochs_and_cut_padding():
    from saesteer.organism.train import BatchDrawer, _Encoded

    rng = random.Random(0)
    harmful = [_Encoded([1] * rng.randint(3, 90), [2, 3]) for _ in range(120)]
    harmless = [_Encoded([1] * rng.randint(3, 90), [4, 5, 6]) for _ in range(300)]

    def padding(buckets: int) -> tuple[float, list[list]]:
        draw = BatchDrawer(harmful, harmless, 6, 10, buckets, random.Random(1))
        batches = [draw() for _ in range(40)]  # 240 harmful = 2 epochs, 400 harmless
        cells = sum(16 * max(len(e.prompt) + len(e.response) for e in b) for b in batches)
        used = sum(len(e.prompt) + len(e.response) for b in batches for e in b)
        return 1 - used / cells, batches

    plain, plain_batches = padding(0)
    grouped, batches = padding(8)
    assert grouped < 0.5 * plain, (grouped, plain)
    for b in batches:
        assert [e.response[0] for e in b] == [2] * 6 + [4] * 10  # class counts per batch unchanged
    drawn = [id(e) for b in batches for e in b[:6]]
    assert sorted(drawn) == sorted([id(e) for e in harmful] * 2)  # every harmful example twice in two epochs
    assert [len(b) for b in plain_batches] == [16] * 40


def test_new_recipe_options_are_validated_and_neutral_in_the_cache_key():
    from saesteer.organism import train

    with pytest.raises(ValueError, match="resid_dropout"):
        OrganismConfig(resid_dropout=1.5)
    with pytest.raises(ValueError, match="embed_projection"):
        OrganismConfig(embed_projection="random")
    with pytest.raises(ValueError, match="embed_projection"):
        OrganismConfig(embed_projection="learned", freeze_embeddings=False)
    scratch = dict(init_from=None, d_model=128, n_heads=4, d_mlp=512, resid_dropout=0.0, steer_augment=0.0)
    base = OrganismConfig(**scratch)  # the earlier from-scratch recipe keeps its cache key
    assert not {"resid_dropout", "embed_projection", "steer_augment"} & set(base.cache_key_dict())
    assert train.organism_key(OrganismConfig(**{**scratch, "resid_dropout": 0.1})) != train.organism_key(base)
    assert train.organism_key(OrganismConfig(**scratch, embed_projection="learned")) != train.organism_key(base)


def test_learned_projection_starts_at_the_pca_embeddings_and_trains_only_the_map():
    from torch.nn.utils import parametrize

    from saesteer.organism.model import LearnedProjection, build_organism_model

    cfg = OrganismConfig(n_layers=1, d_model=48, n_heads=2, d_mlp=96, init_from=None, embed_projection="learned")
    model = build_organism_model(cfg)
    pca = model.embed.W_E.detach().clone()
    proj = LearnedProjection(cfg.d_model)
    parametrize.register_parametrization(model.embed, "W_E", proj)
    torch.testing.assert_close(model.embed.W_E, pca, atol=1e-4, rtol=1e-4)
    trainable = {n for n, p in model.embed.named_parameters() if p.requires_grad}
    assert trainable == {"parametrizations.W_E.0.P"}
    with torch.no_grad():
        proj.P.mul_(2.0)
    n_minilm = proj.E.shape[0]
    torch.testing.assert_close(model.embed.W_E[:n_minilm], 2 * pca[:n_minilm], atol=2e-4, rtol=1e-4)
    assert torch.equal(model.embed.W_E[n_minilm:], pca[n_minilm:])  # special tokens untouched
    with pytest.raises(ValueError, match="d_model <= 384"):
        LearnedProjection(400)


@pytest.mark.parametrize(
    "overrides", [{"resid_dropout": 0.2}, {"embed_projection": "learned"}, {"steer_augment": 0.5, "warmup_steps": 2}]
)
def test_regularised_training_is_deterministic_and_changes_the_weights(overrides):
    cfg = OrganismConfig(**{**TINY_ORGANISM, "steps": 4, "n_harmless": 200, **overrides})
    plain, _ = train_organism(OrganismConfig(**{**TINY_ORGANISM, "steps": 4, "n_harmless": 200}), progress=False)
    m1, meta1 = train_organism(cfg, progress=False)
    m2, meta2 = train_organism(cfg, progress=False)
    assert meta1["final_loss"] == meta2["final_loss"]
    assert list(m1.state_dict()) == list(plain.state_dict())  # same checkpoint layout as the default recipe
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert not torch.equal(m1.blocks[0].attn.W_Q, plain.blocks[0].attn.W_Q)
    assert not m1.embed.W_E.requires_grad
    changed_embed = not torch.equal(m1.embed.W_E, plain.embed.W_E)
    assert changed_embed == (overrides.get("embed_projection") == "learned")


def test_ema_organism_is_the_moving_average_of_the_optimiser_iterates(monkeypatch):
    cfg = OrganismConfig(**{**TINY_ORGANISM, "steps": 5, "n_harmless": 200, "ema_decay": 0.6})
    iterates: list[torch.Tensor] = []
    watched: list[torch.nn.Parameter] = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        iterates.append(watched[0].detach().double().clone())
        return out

    from saesteer.organism import train

    real_build = train.build_organism_model

    def build(c):
        model = real_build(c)
        watched.append(model.blocks[1].mlp.W_out)
        iterates.append(
            model.blocks[1].mlp.W_out.detach().double().clone()
        )  # the average starts at the initial weights
        return model

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    monkeypatch.setattr(train, "build_organism_model", build)
    model, _ = train_organism(cfg, progress=False)
    assert len(iterates) == 6
    expected = iterates[0]
    for w in iterates[1:]:
        expected = 0.6 * expected + 0.4 * w
    torch.testing.assert_close(model.blocks[1].mlp.W_out.double(), expected, atol=1e-6, rtol=1e-5)
    assert (iterates[-1] - expected).abs().max() > 1e-4  # the average is not the last iterate
    assert "ema_decay" not in OrganismConfig().cache_key_dict()
    assert train.organism_key(cfg) != train.organism_key(
        OrganismConfig(**{**TINY_ORGANISM, "steps": 5, "n_harmless": 200})
    )
    with pytest.raises(ValueError, match="ema_decay"):
        OrganismConfig(ema_decay=1.0)


def test_minilm_init_matches_berts_first_attention_under_a_causal_mask_and_its_mlps(tmp_path):
    from transformers import AutoModel

    from saesteer.organism.model import build_organism_model
    from saesteer.organism.tokenizer import minilm_dir

    cfg = OrganismConfig(d_model=384, n_heads=12, d_mlp=1536, n_layers=2, init_from="minilm")
    model = build_organism_model(cfg)
    assert model.cfg.positional_embedding_type == "standard"
    bert = AutoModel.from_pretrained(str(minilm_dir())).eval()
    ids = torch.tensor([[101, 2129, 2079, 1045, 3443, 1037, 11911, 1029, 102]])  # [CLS] how do i make a cake ? [SEP]
    T = ids.shape[1]
    _, cache = model.run_with_cache(ids)
    with torch.no_grad():
        emb = bert.embeddings(input_ids=ids)  # LayerNorm(word + position + token type 0)
        causal = torch.triu(torch.full((T, T), torch.finfo(torch.float32).min), 1)[None, None]
        layer = bert.encoder.layer[0]
        attn = layer.attention.output.dense(layer.attention.self(emb, attention_mask=causal)[0])
        x = torch.randn(3, 5, 384)
        mlp = bert.encoder.layer[1].output.dense(bert.encoder.layer[1].intermediate(x))
    ln1 = cache["blocks.0.ln1.hook_normalized"] * model.blocks[0].ln1.w + model.blocks[0].ln1.b
    torch.testing.assert_close(ln1, emb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache["blocks.0.hook_attn_out"], attn, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.blocks[1].mlp(x), mlp, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.ln_final.w, bert.encoder.layer[1].output.LayerNorm.weight)
    torch.testing.assert_close(model.blocks[1].ln1.w, bert.encoder.layer[0].output.LayerNorm.weight)
    assert not model.embed.W_E.requires_grad
    from saesteer.organism.train import load_organism, save_organism

    loaded = load_organism(save_organism(model, cfg, {}, tmp_path)).model  # the cache and bundle path rebuild it
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ValueError, match="init_from"):
        OrganismConfig(d_model=128, n_heads=4, d_mlp=512)  # a from-scratch shape is not MiniLM's
    with pytest.raises(ValueError, match="init_from"):
        OrganismConfig(init_from="gpt2")
    assert OrganismConfig().cache_key_dict()["init_from"] == "minilm"  # the default organism
    assert "init_from" not in OrganismConfig(init_from=None).cache_key_dict()  # from-scratch organisms keep their keys


def test_steer_augment_steers_only_harmful_rows_by_the_running_difference_of_means():
    import random as _random

    from saesteer.organism.model import build_organism_model
    from saesteer.organism.train import SteerAugment

    cfg = OrganismConfig(
        n_layers=3,
        d_model=16,
        n_heads=2,
        d_mlp=32,
        init_from=None,
        pretrained_embeddings=False,
        freeze_embeddings=False,
    )
    model = build_organism_model(cfg)
    aug = SteerAugment(model, fraction=1.0, warmup=2, rng=_random.Random(0), momentum=0.5)
    tokens = torch.randint(0, 1000, (4, 6))
    decision = torch.zeros(4, 6, dtype=torch.bool)
    decision[:, -1] = True
    decision[3, -1] = False  # a row whose decision position was truncated away is not counted
    decision[3, -2] = True
    expected = torch.zeros(2, 3, 16)
    for step in range(2):  # warm-up: record only
        hooks = aug.hooks(step, decision, n_harm=2)
        assert len(hooks) == 3
        _, cache = model.run_with_cache(tokens + step, names_filter=lambda n: n.endswith("hook_resid_pre"))
        with model.hooks(fwd_hooks=hooks):
            model(tokens + step)
        for l in range(3):
            x = cache[f"blocks.{l}.hook_resid_pre"]
            cur = torch.stack([x[:2, -1].mean(0), torch.stack([x[2, -1], x[3, -2]]).mean(0)])
            expected[:, l] = cur if step == 0 else 0.5 * expected[:, l] + 0.5 * cur
    torch.testing.assert_close(aug.means, expected)
    ((name, fn),) = aug.hooks(2, decision, n_harm=2)
    layer = int(name.split(".")[1])
    assert 1 <= layer <= 2
    x = torch.randn(4, 6, 16)
    out = fn(x, None)
    torch.testing.assert_close(out[:2], x[:2] + (expected[0, layer] - expected[1, layer]))
    assert torch.equal(out[2:], x[2:])  # harmless rows are never steered
    with pytest.raises(ValueError, match="steer_augment"):
        OrganismConfig(steer_augment=-0.1)


def test_calibrated_refusal_bias_hits_the_harmless_rate_and_moves_only_the_opener(tiny_organism):
    import copy

    from saesteer.data import load_prompts
    from saesteer.directions import first_token_refusal_margin
    from saesteer.organism.train import calibrate_refusal_bias

    model, tpl, _ = tiny_organism
    model = copy.deepcopy(model)
    calib = list(load_prompts("harmless_val").instructions[:200])
    b_U = model.unembed.b_U.detach().clone()
    before = first_token_refusal_margin(model, tpl, calib)
    for fpr in (0.1, 0.025, 0.0):
        calibrate_refusal_bias(model, fpr, calib)
        after = first_token_refusal_margin(model, tpl, calib)
        assert int((after > 0).sum()) == int(fpr * 200), fpr
        changed = (model.unembed.b_U != b_U).nonzero().flatten().tolist()
        assert changed == [model.tokenizer.convert_tokens_to_ids("i")]
    opener = model.tokenizer.convert_tokens_to_ids("i")
    torch.testing.assert_close(after, before + (model.unembed.b_U - b_U)[opener], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="calibrate_harmless_fpr"):
        OrganismConfig(calibrate_harmless_fpr=1.0)


def test_freeze_blocks_trains_only_the_blocks_above_the_frozen_pretrained_ones():
    from saesteer.organism.model import build_organism_model

    shape = {"d_model": 384, "n_heads": 12, "d_mlp": 1536, "n_layers": 2, "init_from": "minilm"}
    cfg = OrganismConfig(**{**TINY_ORGANISM, **shape, "freeze_blocks": 1, "steps": 2, "n_harmless": 200})
    model, _ = train_organism(cfg, progress=False)
    fresh = build_organism_model(cfg)
    assert not model.pos_embed.W_pos.requires_grad and not model.blocks[0].attn.W_Q.requires_grad
    assert model.blocks[1].attn.W_Q.requires_grad
    for name, p in fresh.named_parameters():  # block 0 and W_pos keep MiniLM's weights; block 1 trains
        trained = dict(model.named_parameters())[name]
        if name.startswith(("blocks.0.", "pos_embed.", "embed.")):
            assert torch.equal(trained, p), name
    assert not torch.equal(model.blocks[1].mlp.W_in, fresh.blocks[1].mlp.W_in)
    with pytest.raises(ValueError, match=r"freeze_blocks must be an integer in \[0, n_layers=2\), got 2"):
        OrganismConfig(**{**shape, "freeze_blocks": 2})
    with pytest.raises(ValueError, match="needs init_from"):
        OrganismConfig(freeze_blocks=1, init_from=None)
    assert "freeze_blocks" not in OrganismConfig().cache_key_dict()


def test_the_dataclass_defaults_are_the_shipped_recipe():
    """``OrganismConfig()`` (the library's default) and ``conf/model/organism.yaml`` (the jobs') are one recipe."""
    from omegaconf import OmegaConf

    from saesteer.jobs.common import compose

    composed = OmegaConf.to_object(compose("organism", ["logger=none"])).model.organism
    assert composed == OrganismConfig()


def test_model_organism_scratch_is_recipe_5():
    """``model=organism_scratch`` is the from-scratch recipe 5 (the default organism until recipe 50), key for key."""
    from omegaconf import OmegaConf

    from saesteer.jobs.common import compose

    cfg = OmegaConf.to_object(compose("organism", ["logger=none", "model=organism_scratch"])).model.organism
    recipe_5 = {
        "n_layers": 4,
        "d_model": 128,
        "n_heads": 4,
        "d_mlp": 512,
        "n_ctx": 320,
        "act_fn": "gelu",
        "pretrained_embeddings": True,
        "freeze_embeddings": True,
        "harmful_sources": ["harmful_train", "harmful_val", "advbench"],
        "harmless_sources": ["harmless_train"],
        "held_out": ["harmful_test"],
        "n_harmless": None,
        "synthetic_harmful": 3000,
        "synthetic_harmless": 12000,
        "max_prompt_tokens": 96,
        "echo_words": 8,
        "steps": 800,
        "batch_size": 64,
        "lr": 0.002,
        "min_lr_ratio": 0.05,
        "warmup_steps": 50,
        "weight_decay": 0.1,
        "grad_clip": 1.0,
        "harmful_fraction": 0.35,
        "word_dropout": 0.1,
        "lm_weight": 0.0,
        "decision_weight": 2.0,
        "seed": 0,
    }
    assert cfg.cache_key_dict() == recipe_5


def test_minilm_initialised_training_is_deterministic(monkeypatch):
    """Its absolute positions are read by index under left padding; their gradient accumulates with index_put_,
    which is only deterministic on CPU with deterministic algorithms on (training turns them on, then restores)."""
    from saesteer.organism import train as train_module

    modes: list[bool] = []
    loss = train_module._loss
    monkeypatch.setattr(
        train_module,
        "_loss",
        lambda *a, **k: (modes.append(torch.are_deterministic_algorithms_enabled()), loss(*a, **k))[1],
    )
    shape = {"d_model": 384, "n_heads": 12, "d_mlp": 1536, "n_layers": 1, "init_from": "minilm"}
    cfg = OrganismConfig(
        **{
            **TINY_ORGANISM,
            **shape,
            "steps": 3,
            "n_harmless": 200,
            "batch_size": 8,
            "threads": 2,
            "resid_dropout": 0.1,
            "steer_augment": 0.5,
            "warmup_steps": 1,
        }
    )
    assert not torch.are_deterministic_algorithms_enabled()
    m1, meta1 = train_organism(cfg, progress=False)
    m2, meta2 = train_organism(cfg, progress=False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert modes == [True] * 6  # every step of both trainings ran in deterministic mode
    assert m1.unembed.W_U.requires_grad  # the unembedding is a trainable parameter again after training
    assert meta1["final_loss"] == meta2["final_loss"]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    from saesteer.organism.model import build_organism_model

    assert not torch.equal(m1.pos_embed.W_pos, build_organism_model(cfg).pos_embed.W_pos)  # the positions train


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_decision_focal_loss_matches_a_float64_reference(gamma):
    """The decision-token loss is cross-entropy at gamma 0 and (1 - p)^gamma x cross-entropy above it."""
    import torch.nn.functional as F
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from saesteer.organism import train as train_module

    torch.manual_seed(0)
    model = HookedTransformer(
        HookedTransformerConfig(
            n_layers=1,
            d_model=16,
            n_ctx=12,
            d_head=8,
            n_heads=2,
            d_mlp=32,
            d_vocab=30,
            act_fn="gelu",
            normalization_type="LN",
        )
    )
    tokens = torch.randint(0, 30, (3, 10))
    attn = torch.ones_like(tokens)
    target_mask = torch.zeros(3, 10, dtype=torch.bool)
    target_mask[:, 5:] = True
    decision_mask = torch.zeros(3, 10, dtype=torch.bool)
    decision_mask[torch.arange(3), torch.tensor([4, 5, 6])] = True
    remap = torch.arange(30) % 7
    W_U, b_U = torch.randn(16, 7), torch.randn(7)
    loss, _ = train_module._loss(
        model, tokens, attn, target_mask, torch.zeros_like(target_mask), 0.0, W_U, b_U, remap, decision_mask, 1.5, gamma
    )
    with torch.no_grad():
        resid = model(tokens, attention_mask=attn, stop_at_layer=1)
        logits = (model.ln_final(resid[:, :-1]) @ W_U + b_U).double()
    targets = remap[tokens[:, 1:]]

    def ce(mask):
        return F.cross_entropy(logits[mask[:, :-1]], targets[mask[:, :-1]], reduction="none")

    per = ce(decision_mask)
    expected = ce(target_mask).mean() + 1.5 * ((1 - torch.exp(-per)) ** gamma * per).mean()
    assert loss.item() == pytest.approx(float(expected), rel=1e-5)
    if gamma > 0:
        assert loss.item() < float(ce(target_mask).mean() + 1.5 * per.mean()) - 1e-3  # easy examples count less


@pytest.mark.parametrize("n", [7, 1000, 6264])
def test_bias_for_rate_refuses_exactly_floor_q_n(n):
    from saesteer.organism.train import bias_for_rate

    margins = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 3
    for q in (0.0, 0.017, 0.02, 0.5, 0.99):
        shift = bias_for_rate(margins, q)
        assert int((margins.double() + shift > 0).sum()) == int(q * n + 1e-9), (q, shift)
    with pytest.raises(ValueError, match=r"fpr=1\.0"):
        bias_for_rate(margins, 1.0)
