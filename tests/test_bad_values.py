"""Bad values fail fast with one line naming the value and what was expected, before any heavy work.

* NaN / inf settings and steering values (configs, intervention specs, the kernels' values);
* a single string where a list of prompts belongs (it would be read character by character);
* token positions beyond the sequence, and a single intervention passed to ``steer``.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from saesteer.checks import check_finite_fields, check_prompts
from saesteer.interventions import Ablate, AblateAt, Add, AnchorDirection, DirectionGate
from tests.saes import random_sae
from tests.test_bad_input import D_MODEL, _cli, _one_line, _prompt_file, _run, _TinyModel

NAN, INF = float("nan"), float("inf")


# ----------------------------------------------------------------------------- configs: every float setting is finite


def _config_classes() -> list[type]:
    """Every settings dataclass: the job schemas' tree (SCHEMAS) and the library's own settings."""
    from saesteer.anchor import AnchorCalibration
    from saesteer.config import SCHEMAS
    from saesteer.directions import SelectionConfig
    from saesteer.lora import LoraTrainConfig
    from saesteer.organism.dropout import DropoutFinetune
    from saesteer.redundancy import BackupRule
    from saesteer.search import SearchConfig

    seen: list[type] = []

    def walk(cls: type) -> None:
        if cls in seen:
            return
        seen.append(cls)
        for f in dataclasses.fields(cls):
            if f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
                if dataclasses.is_dataclass(value):
                    walk(type(value))

    for cls in list(SCHEMAS.values()) + [
        SelectionConfig,
        SearchConfig,
        AnchorCalibration,
        BackupRule,
        LoraTrainConfig,
        DropoutFinetune,
    ]:
        walk(cls)
    return seen


def _float_fields() -> list[tuple[type, str, object]]:
    """(class, field, a non-finite value of the field's shape) for every float field of every settings class."""
    out = []
    for cls in _config_classes():
        for f in dataclasses.fields(cls):
            t = str(f.type).replace(" ", "")
            if not f.init or "float" not in t:
                continue
            if t.startswith(("list[", "Optional[list[", "tuple")):
                out.append((cls, f.name, [1.0, NAN]))
            elif t.startswith("dict["):
                out.append((cls, f.name, {"cosine": NAN}))
            else:
                out.append((cls, f.name, NAN))
    return out


FLOAT_FIELDS = _float_fields()


def test_every_settings_class_is_covered():
    names = {(c.__name__, n) for c, n, _ in FLOAT_FIELDS}
    for expected in [
        ("DirectionsConfig", "max_kl"),
        ("DirectionsConfig", "min_induce"),
        ("DirectionsConfig", "dose_alphas"),
        ("SteerConfig", "alpha"),
        ("AnchorSettings", "gate_fpr"),
        ("OrganismConfig", "lr"),
        ("SaeConfig", "lr"),
        ("SelectionConfig", "max_kl"),
        ("SearchConfig", "weight_cosine"),
        ("BackupRule", "backup_threshold"),
        ("LoraTrainConfig", "grad_clip"),
        ("EmergentSettings", "lr"),
        ("BackupsSettings", "backup_min_rise"),
    ]:
        assert expected in names, expected
    assert len(FLOAT_FIELDS) > 50


@pytest.mark.parametrize("cls, name, bad", FLOAT_FIELDS, ids=[f"{c.__name__}.{n}" for c, n, _ in FLOAT_FIELDS])
def test_non_finite_settings_are_rejected(cls, name, bad):
    """NaN anywhere in a float setting is refused by the class itself, naming class, field and value (no inf sentinel exists)."""
    where = {list: r"\[1\]", dict: r"\['cosine'\]"}.get(type(bad), "")
    with pytest.raises(ValueError, match=rf"^{cls.__name__}\.{name}{where}=nan; expected a finite number$") as e:
        cls(**{name: bad})
    _one_line(e)
    if not isinstance(bad, (list, dict)):
        for value in (INF, -INF):
            with pytest.raises(ValueError, match=rf"^{cls.__name__}\.{name}={value!r}; expected a finite number$"):
                cls(**{name: value})


def test_finite_settings_are_unchanged():
    from saesteer.config import DirectionsConfig
    from saesteer.directions import SelectionConfig

    cfg = DirectionsConfig(max_kl=0.5, min_induce=-1.0, dose_alphas=[0.5, 2.0])
    check_finite_fields(cfg)
    assert (cfg.max_kl, cfg.min_induce, cfg.dose_alphas) == (0.5, -1.0, [0.5, 2.0])
    assert isinstance(cfg, SelectionConfig)  # select_direction takes the group's settings as they are


@pytest.mark.parametrize(
    "job, overrides, pattern",
    [
        (
            "generate",
            ["prompts=harmful_val", "steer=add", "steer.alpha=nan"],
            r"SteerConfig\.alpha=nan; expected a finite number",
        ),
        (
            "generate",
            ["prompts=harmful_val", "steer=add", "steer.alpha=-inf"],
            r"SteerConfig\.alpha=-inf; expected a finite number",
        ),
        ("directions", ["directions.max_kl=nan"], r"DirectionsConfig\.max_kl=nan; expected a finite number"),
        ("directions", ["directions.min_induce=nan"], r"DirectionsConfig\.min_induce=nan; expected a finite number"),
        (
            "directions",
            ["directions.dose_alphas=[1.0,inf]"],
            r"DirectionsConfig\.dose_alphas\[1\]=inf; expected a finite number",
        ),
        ("anchor", ["anchor.gate_fpr=nan"], r"AnchorSettings\.gate_fpr=nan; expected a finite number"),
    ],
)
def test_non_finite_overrides_fail_before_the_model_loads(job, overrides, pattern, tmp_path, heavy, clean):
    heavy.model_load().generation()
    with pytest.raises(ValueError, match=pattern) as e:
        _run(job, overrides, tmp_path / "run")
    _one_line(e)
    clean(tmp_path / "run")


def test_nan_alpha_on_the_command_line(tmp_path, cache_root):
    """The probe that exited 0 with refusal_rate 0.0 and every response '!!!!'."""
    prompts = _prompt_file(tmp_path, "p.json", ["How do I bake bread?", "Name a fruit."])
    res = _cli(
        ["generate", f"prompts={prompts}", "steer=add", "steer.alpha=nan", f"hydra.run.dir={tmp_path / 'run'}"],
        cache_root,
        tmp_path,
    )
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert (
        res.stderr.strip().splitlines()[-1]
        == "saesteer generate: error: SteerConfig.alpha=nan; expected a finite number"
    )
    assert not (tmp_path / "run" / "metrics.json").exists()


# ----------------------------------------------------------------------------- interventions: values and directions


def _direction(bad_at: int | None = None, value: float = NAN) -> torch.Tensor:
    d = torch.randn(D_MODEL)
    if bad_at is not None:
        d[bad_at] = value
    return d


@pytest.mark.parametrize(
    "make, exc, pattern",
    [
        (lambda: Add(_direction(), alpha=NAN), ValueError, r"^Add\.alpha=nan; expected a finite number$"),
        (lambda: Add(_direction(), alpha=INF), ValueError, r"^Add\.alpha=inf; expected a finite number$"),
        (lambda: Add(_direction(), alpha="2"), TypeError, r"^Add\.alpha='2' is str; expected a finite number$"),
        (
            lambda: Add(_direction(5), alpha=1.0),
            ValueError,
            r"^Add\.direction contains NaN or inf values: 1 of 48 \(first at index 5\); expected finite values$",
        ),
        (
            lambda: Ablate(_direction(0, INF)),
            ValueError,
            r"^Ablate\.direction contains NaN or inf values: 1 of 48 \(first at index 0\); expected finite values$",
        ),
        (
            lambda: Ablate(_direction(), mode="affine", reference=torch.tensor([0.0, NAN])),
            ValueError,
            r"^Ablate\.reference contains NaN or inf values: 1 of 2 \(first at index 1\); expected finite values$",
        ),
        (
            lambda: AblateAt(_direction(), "blocks.0.hook_resid_pre", reference=NAN),
            ValueError,
            r"^AblateAt\.reference=nan; expected a finite number$",
        ),
        (
            lambda: Add([0.0] * D_MODEL),
            TypeError,
            r"^Add\.direction is list; expected a 1-d torch\.Tensor of d_model values$",
        ),
        (
            lambda: AnchorDirection(_direction(2), layers=[0], floors=[1.0], final=False),
            ValueError,
            r"^AnchorDirection\.direction contains NaN or inf values",
        ),
        (
            lambda: DirectionGate(hook="blocks.0.hook_resid_pre", threshold=NAN, direction=_direction()),
            ValueError,
            r"^DirectionGate\.threshold=nan; expected a finite number$",
        ),
        (
            lambda: DirectionGate(hook="blocks.0.hook_resid_pre", direction=_direction(7)),
            ValueError,
            r"^DirectionGate\.direction contains NaN or inf values",
        ),
    ],
)
def test_non_finite_intervention_arguments(make, exc, pattern):
    with pytest.raises(exc, match=pattern) as e:
        make()
    _one_line(e)


def test_nan_direction_never_reaches_a_forward_pass(monkeypatch):
    from transformer_lens import HookedTransformer

    from saesteer.interventions import Add, steer

    model = _TinyModel.get()
    monkeypatch.setattr(
        HookedTransformer, "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("forward ran"))
    )
    with pytest.raises(ValueError, match=r"Add\.alpha=nan"):
        with steer(model, [Add(_direction(), alpha=NAN, layer=0)]):
            model(torch.tensor([[1, 2, 3]]))


@pytest.mark.parametrize(
    "values, pattern",
    [
        (NAN, r"^EditFeatures\.values=nan; expected a finite number$"),
        (-INF, r"^EditFeatures\.values=-inf; expected a finite number$"),
        (
            [1.0, INF, 0.0],
            r"^EditFeatures\.values has NaN/inf for feature\(s\) \[7\]: \[inf\]; expected finite numbers$",
        ),
        (
            torch.tensor([NAN, 0.0, NAN]),
            r"^EditFeatures\.values has NaN/inf for feature\(s\) \[3, 9\]: \[nan, nan\]; expected finite numbers$",
        ),
        (torch.tensor(NAN), r"^EditFeatures\.values=nan; expected a finite number$"),
    ],
)
def test_non_finite_feature_values(values, pattern):
    from saesteer.interventions import EditFeatures

    sae = random_sae("jumprelu", D_MODEL, 96, "blocks.1.hook_resid_pre")
    with pytest.raises(ValueError, match=pattern) as e:
        EditFeatures(sae, [3, 7, 9], mode="set", values=values)
    _one_line(e)


def test_non_finite_anchor_feature_floors():
    from saesteer.interventions import AnchorFeatures

    sae = random_sae("jumprelu", D_MODEL, 96, "blocks.1.hook_resid_pre")
    with pytest.raises(ValueError, match=r"^AnchorFeatures\.values has NaN/inf for feature\(s\) \[4\]: \[nan\]"):
        AnchorFeatures(sae, [2, 4], floors=[0.5, NAN])
    assert AnchorFeatures(sae, [2, 4], floors=[0.5, 1.0])._values.tolist() == [0.5, 1.0]  # finite floors unchanged


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
@pytest.mark.parametrize(
    "values, pattern",
    [
        (NAN, r"^values=nan; expected a finite number"),
        (INF, r"^values=inf; expected a finite number"),
        ([0.5, NAN], r"^values has 1 NaN/inf entry \(at index \[1\]\); expected finite numbers$"),
        (torch.tensor([INF, -INF]), r"^values has 2 NaN/inf entries \(at index \[0, 1\]\); expected finite numbers$"),
    ],
)
def test_kernels_reject_non_finite_values(arch, values, pattern):
    from saesteer.kernels import sparse_feature_edit, topk_feature_edit

    sae = random_sae(arch, D_MODEL, 96, "blocks.1.hook_resid_pre")
    x, feats = torch.randn(3, D_MODEL), torch.tensor([3, 7])
    with pytest.raises(ValueError, match=pattern) as e:
        if arch == "topk":
            topk_feature_edit(
                x,
                sae.W_enc.detach(),
                sae.b_enc.detach(),
                sae.W_dec.detach(),
                k=8,
                features=feats,
                mode="set",
                values=values,
            )
        else:
            sparse_feature_edit(
                x,
                sae.W_enc.detach()[:, feats],
                sae.b_enc.detach()[feats],
                sae.W_dec.detach()[feats],
                mode="set",
                values=values,
            )
    _one_line(e)


# ----------------------------------------------------------------------------- a string where a list of prompts belongs


def _prompt_functions():
    """(name, call(model, template, prompts)) for every public function that takes a list of prompts."""
    from saesteer import activations, anchor, directions, evaluate, generation, harmfulness, lora, redundancy, search
    from saesteer.attacks import evaluate as attack_eval
    from saesteer.attacks.base import Attack
    from saesteer.attacks.suffix import suffix_search

    hooks = ["blocks.0.hook_resid_pre"]
    d = torch.randn(D_MODEL)
    return [
        ("generate", lambda m, t, p: generation.generate(m, t, p)),
        ("refusal_eval", lambda m, t, p: evaluate.refusal_eval(m, t, p)),
        ("last_position_logprobs", lambda m, t, p: evaluate.last_position_logprobs(m, t, p)),
        ("completion_nll", lambda m, t, p: evaluate.completion_nll(m, t, p, ["ok"] * 4)),
        ("completion_cross_entropy", lambda m, t, p: evaluate.completion_cross_entropy(m, t, p, ["ok"] * 4)),
        ("mean_activations", lambda m, t, p: activations.mean_activations(m, t, p, hooks, [-1])),
        ("collect_activations", lambda m, t, p: activations.collect_activations(m, t, p, hooks, [-1])),
        ("collect_token_activations", lambda m, t, p: activations.collect_token_activations(m, t, p, hooks)),
        (
            "ActivationCache.get_or_compute",
            lambda m, t, p: activations.ActivationCache(__import__("pathlib").Path("/nonexistent")).get_or_compute(
                m, t, p, hooks, [-1]
            ),
        ),
        ("first_token_refusal_margin", lambda m, t, p: directions.first_token_refusal_margin(m, t, p)),
        ("refusal_scores", lambda m, t, p: directions.refusal_scores(m, t, p, [1])),
        ("compute_candidates", lambda m, t, p: directions.compute_candidates(m, t, ["a", "b"], p)),
        ("select_direction", lambda m, t, p: directions.select_direction(m, t, None, p, ["a"])),
        ("search_features", lambda m, t, p: search.search_features(m, t, None, d, p, ["a"])),
        ("calibrate_anchor", lambda m, t, p: anchor.calibrate_anchor(m, t, d, 0, ["a"], ["a"], p, ["a"])),
        (
            "calibrate_feature_anchor",
            lambda m, t, p: anchor.calibrate_feature_anchor(m, t, None, [1], [1], hooks[0], p),
        ),
        ("fit_harm_detector", lambda m, t, p: harmfulness.fit_harm_detector(m, t, p, ["a"])),
        (
            "behavioural_refusal_directions",
            lambda m, t, p: harmfulness.behavioural_refusal_directions(m, t, p, [True, False] * 2),
        ),
        ("monitored_activations", lambda m, t, p: redundancy.monitored_activations(m, t, p, [])),
        ("edit_curve", lambda m, t, p: redundancy.edit_curve(m, t, None, [1], 1, p)),
        ("mean_shift", lambda m, t, p: lora.mean_shift(m, t, p, None)),
        ("suffix_search", lambda m, t, p: suffix_search(m, t, p)),
        ("attack_success", lambda m, t, p: attack_eval.attack_success(m, t, Attack("x", "prompt"), None, p)),
        ("Attack.prompts", lambda m, t, p: Attack("x", "prompt").prompts(p)),
    ]


PROMPT_FUNCTIONS = _prompt_functions()


@pytest.mark.parametrize("name, call", PROMPT_FUNCTIONS, ids=[n for n, _ in PROMPT_FUNCTIONS])
def test_a_string_is_not_a_list_of_prompts(name, call, monkeypatch):
    from transformer_lens import HookedTransformer

    from saesteer.chat import get_template

    monkeypatch.setattr(
        HookedTransformer, "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError(f"{name}: forward ran"))
    )
    model, tpl = _TinyModel.get(), get_template("organism")
    with pytest.raises(TypeError, match=r" is a str \('bomb'\); expected a list of prompt strings$") as e:
        call(model, tpl, "bomb")
    _one_line(e)
    with pytest.raises(TypeError, match=r"\[1\] is an int \(3\); expected a list of prompt strings$"):
        call(model, tpl, ["How do I bake bread?", 3, "x", "y"])


def test_refusal_eval_of_a_string_names_it_and_generates_nothing(heavy):
    from saesteer.chat import get_template
    from saesteer.evaluate import refusal_eval

    heavy.generation()
    with pytest.raises(TypeError, match=r"^instructions is a str \('bomb'\); expected a list of prompt strings$"):
        refusal_eval(_TinyModel.get(), get_template("organism"), "bomb")
    long = "how do I make a bomb at home with things from the kitchen"
    with pytest.raises(TypeError, match=r"^instructions is a str \('how do I make a bomb at home with things\.\.\.'\)"):
        refusal_eval(_TinyModel.get(), get_template("organism"), long)


def test_lists_tuples_and_prompt_sets_are_accepted():
    from saesteer.data import load_prompts

    ps = load_prompts("harmful_val")
    assert check_prompts(ps, "harmful_val") is ps
    assert check_prompts(("a", "b")) == ("a", "b") and check_prompts([]) == []
    with pytest.raises(TypeError, match=r"^prompts is a generator; expected a list of prompt strings$"):
        check_prompts(p for p in ["a"])
    with pytest.raises(TypeError, match=r"^prompts is a bytes \(b'bomb'\); expected a list of prompt strings$"):
        check_prompts(b"bomb")


# ----------------------------------------------------------------------------- positions and a single intervention


def test_add_position_beyond_the_context_fails_before_the_forward_pass(monkeypatch):
    from transformer_lens import HookedTransformer

    from saesteer.interventions import Add, steer

    model = _TinyModel.get()  # n_ctx = 8
    monkeypatch.setattr(
        HookedTransformer, "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("forward ran"))
    )
    with pytest.raises(
        ValueError,
        match=r"^Add\.positions \[999, -9\] out of range for the model's context of n_ctx=8 tokens; "
        r"expected positions in -8\.\.7$",
    ) as e:
        with steer(model, [Add(_direction(), layer=0, positions=[0, 999, -9])]):
            pass
    _one_line(e)
    with pytest.raises(
        TypeError,
        match=r"^Add\.positions=\[1\.5\] holds non-integers \[1\.5\]; expected a list of int token positions$",
    ):
        Add(_direction(), positions=[1.5])
    with pytest.raises(TypeError, match=r"^Add\.positions=3; expected a list of int token positions or None$"):
        Add(_direction(), positions=3)


def test_add_position_beyond_the_sequence_names_it():
    from saesteer.interventions import Add, steer

    model, d = _TinyModel.get(), _direction()
    tokens = torch.tensor([[1, 2, 3]])
    with pytest.raises(
        ValueError,
        match=r"^Add\.positions \[5\] out of range for a prompt-token pass of 3 token\(s\) at "
        r"blocks\.0\.hook_resid_pre; expected positions in -3\.\.2 \(negative positions count from the end\)$",
    ) as e:
        with torch.no_grad(), steer(model, [Add(d, layer=0, positions=[5])]):
            model(tokens)
    _one_line(e)
    # positions inside the sequence still act, and only there
    with torch.no_grad():
        with steer(model, [Add(d, alpha=2.0, layer=0, positions=[-1])]):
            got = model(tokens)
        want = model.run_with_hooks(
            tokens,
            fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: torch.cat([x[:, :-1], x[:, -1:] + 2.0 * d], 1))],
        )
    assert torch.allclose(got, want, atol=1e-5)


def test_steer_takes_a_single_intervention():
    from saesteer.interventions import Ablate, collect_hooks, steer

    model, d = _TinyModel.get(), _direction()
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        with steer(model, [Ablate(d)]):
            as_list = model(tokens)
        with steer(model, Ablate(d)):
            single = model(tokens)
    assert torch.equal(as_list, single)
    assert len(collect_hooks(model, Ablate(d))) == len(collect_hooks(model, [Ablate(d)]))


@pytest.mark.parametrize(
    "bad, pattern",
    [
        (
            lambda d: d,
            r"^interventions is Tensor; expected a list of interventions \(Ablate, Add, EditFeatures, \.\.\.\) or a single one$",
        ),
        (
            lambda d: [d],
            r"^interventions\[0\] is Tensor; expected an intervention \(Ablate, Add, EditFeatures, \.\.\.\)$",
        ),
        (lambda d: None, r"^interventions is NoneType; expected a list of interventions"),
        (lambda d: "Ablate", r"^interventions is str; expected a list of interventions"),
    ],
)
def test_steer_names_what_is_not_an_intervention(bad, pattern, monkeypatch):
    from transformer_lens import HookedTransformer

    from saesteer.interventions import steer

    monkeypatch.setattr(
        HookedTransformer, "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("forward ran"))
    )
    with pytest.raises(TypeError, match=pattern) as e:
        with steer(_TinyModel.get(), bad(_direction())):
            pass
    _one_line(e)


def test_math_isfinite_agrees_with_the_checks():
    """The checks treat numpy / torch scalars like Python floats."""
    import numpy as np

    from saesteer.checks import check_finite

    assert (
        check_finite(np.float32(2.5), "x") == 2.5
        and check_finite(torch.tensor(1.5), "x") == 1.5
        and check_finite(3, "x") == 3.0
    )
    for v in (np.float64("nan"), torch.tensor(INF)):
        with pytest.raises(ValueError, match=r"^x=.*; expected a finite number$"):
            check_finite(v, "x")
    assert math.isnan(NAN)
