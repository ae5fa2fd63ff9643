"""Chat templates: literal strings, model-name mapping, exact token positions."""

from __future__ import annotations

import jinja2
import jinja2.sandbox
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from saesteer.chat import (
    TEMPLATES,
    ChatEncodingError,
    ChatTemplate,
    TemplateError,
    encode_chat,
    format_prompt,
    get_template,
    post_instruction_positions,
    suffix_ids,
    template_for_model,
)
from tests.families import byte_level_bpe

INSTR = "How do I bake bread?"

# ----------------------------------------------------------------------------- tokenizers

ORGANISM_SPECIALS = ["<unk>", "<|pad|>", "<|eos|>", "<|user|>", "<|end|>", "<|assistant|>", "<|start|>"]
CORPUS = ["How do I bake bread?", "Tell me a story about a cat.", "Write a poem about the sea.", "user model"]


@pytest.fixture(scope="module")
def organism_tok() -> PreTrainedTokenizerFast:
    """Word-level tokenizer with the organism's special tokens (no BOS)."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=ORGANISM_SPECIALS, show_progress=False))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<|pad|>",
        eos_token="<|eos|>",
        additional_special_tokens=ORGANISM_SPECIALS[3:],
    )


@pytest.fixture(scope="module")
def bpe_tok() -> PreTrainedTokenizerFast:
    """Byte-level BPE with Gemma-style turn tokens and a BOS token."""
    specials = ["<bos>", "<pad>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
    tok = byte_level_bpe(specials, CORPUS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        pad_token="<pad>",
        eos_token="<eos>",
        additional_special_tokens=specials[3:],
    )


# ----------------------------------------------------------------------------- templates as strings

EXPECTED = {
    "llama3": "<|start_header_id|>user<|end_header_id|>\n\nHow do I bake bread?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "llama3.1": (
        "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHow do I bake bread?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "llama2": "[INST] How do I bake bread? [/INST]",
    "gemma": "<start_of_turn>user\nHow do I bake bread?<end_of_turn>\n<start_of_turn>model\n",
    "qwen2.5": (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"
    ),
    "qwen2": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"
    ),
    "smollm2": (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"
    ),
    "chatml": "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n",
    "phi3": "<|user|>\nHow do I bake bread?<|end|>\n<|assistant|>\n",
    "mistral": "[INST] How do I bake bread? [/INST]",
    "mistral-v0.3": "[INST] How do I bake bread?[/INST]",
    "organism": "<|user|> How do I bake bread? <|end|> <|assistant|> <|start|>",
}
EXPECTED_BOS = {"llama3", "llama3.1", "llama2", "gemma", "mistral", "mistral-v0.3"}


def test_every_template_has_a_literal():
    assert set(EXPECTED) == set(TEMPLATES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_template_literal(name):
    t = get_template(name)
    assert format_prompt(t, INSTR) == EXPECTED[name]
    assert format_prompt(t, INSTR, response="Sure") == EXPECTED[name] + "Sure"
    assert t.bos is (name in EXPECTED_BOS)


def test_system_prompts():
    assert format_prompt(get_template("llama3"), "Hi", system="Be brief.") == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert format_prompt(get_template("qwen2.5"), "Hi", system="Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (
        format_prompt(get_template("llama2"), "Hi", system="Be brief.")
        == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"
    )
    with pytest.raises(TemplateError, match="template 'gemma' does not support a system prompt"):
        format_prompt(get_template("gemma"), "Hi", system="Be brief.")


def _render(jinja_src: str, bos: str) -> str:
    """Render a Hugging Face chat template the way transformers does."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(jinja_src).render(
        messages=[{"role": "user", "content": INSTR}], bos_token=bos, eos_token="</s>", add_generation_prompt=True
    )


# The official chat_template strings of google/gemma-2-2b-it, meta-llama/Meta-Llama-3-8B-Instruct
# and microsoft/Phi-3-mini-4k-instruct (tokenizer_config.json).
OFFICIAL = {
    "gemma": (
        "<bos>",
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
        "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}",
    ),
    "llama3": (
        "<|begin_of_text|>",
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    ),
    "phi3": (
        "",  # the template emits no BOS
        "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
        "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
        "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}",
    ),
}


# The official chat_template of meta-llama/Llama-3.1-8B-Instruct (tokenizer_config.json, as published with the
# model in July 2024; the same template ships with Llama-3.1-70B/405B-Instruct), written out from that file with its
# tool-calling branches: a system block with the knowledge cutoff and date_string (default "26 Jul 2024") always
# comes first, with the system message (if any) after the date.
LLAMA31_INSTRUCT_JINJA = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# The official chat_template of Qwen/Qwen2.5-7B-Instruct (tokenizer_config.json; the same template ships with every
# Qwen2.5-*-Instruct size), written out from that file with its tool-calling branches: without a system message the
# default "You are Qwen, created by Alibaba Cloud. You are a helpful assistant." is inserted; no BOS token.
QWEN25_INSTRUCT_JINJA = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

OFFICIAL["llama3.1"] = ("<|begin_of_text|>", LLAMA31_INSTRUCT_JINJA)
OFFICIAL["qwen2.5"] = ("", QWEN25_INSTRUCT_JINJA)  # Qwen2.5's tokenizer has no BOS token; the template emits none


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_matches_official_jinja(name):
    bos, src = OFFICIAL[name]
    assert _render(src, bos) == bos + format_prompt(get_template(name), INSTR)


def _render_conversation(jinja_src: str, bos: str, messages: list[dict]) -> str:
    """Render a Hugging Face chat template for ``messages`` with the generation prompt, as transformers does."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(jinja_src).render(
        messages=messages, bos_token=bos, eos_token="</s>", add_generation_prompt=True
    )


CONVERSATIONS = [
    ("How do I bake bread?", None),
    ("Tell me a story about a cat.", None),
    ("How do I make a bomb?", "You are a helpful assistant."),
    ("Write a poem about the sea.", "Be brief.\nAnswer in English."),
]


@pytest.mark.parametrize("instruction, system", CONVERSATIONS)
@pytest.mark.parametrize("name", ["llama3", "llama3.1", "qwen2.5", "phi3"])
def test_conversations_match_official_jinja(name, instruction, system):
    """The same conversations, with and without a system prompt, rendered by saesteer and by the official template."""
    bos, src = OFFICIAL[name]
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": instruction}
    ]
    assert _render_conversation(src, bos, messages) == bos + format_prompt(
        get_template(name), instruction, system=system
    )


def test_llama31_official_jinja_keeps_the_fixed_date():
    """saesteer's llama3.1 template is the official one with its default date_string (26 Jul 2024)."""
    bos, src = OFFICIAL["llama3.1"]
    rendered = _render_conversation(src, bos, [{"role": "user", "content": INSTR}])
    assert "Today Date: 26 Jul 2024\n\n<|eot_id|>" in rendered and rendered.startswith(
        "<|begin_of_text|><|start_header_id|>system"
    )


# ----------------------------------------------------------------------------- model names


@pytest.mark.parametrize(
    ("model", "template"),
    [
        ("gemma-2-2b-it", "gemma"),
        ("google/gemma-2-9b-it", "gemma"),
        ("gemma-7b-it", "gemma"),
        ("google/gemma-3-4b-it", "gemma"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama3.1"),
        ("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama3.1"),
        ("llama-3.2-1b-instruct", "llama3.1"),
        ("Meta-Llama-3-8B-Instruct", "llama3"),
        ("meta-llama/Meta-Llama-3-70B-Instruct", "llama3"),
        ("meta-llama/Llama-2-7b-chat-hf", "llama2"),
        ("Llama-2-13b-chat", "llama2"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5"),
        ("qwen2.5-1.5b-instruct", "qwen2.5"),
        ("Qwen/Qwen2-1.5B-Instruct", "qwen2"),
        ("Qwen/Qwen1.5-7B-Chat", "qwen2"),
        ("Qwen/Qwen3-8B", "chatml"),
        ("Qwen/Qwen-1_8B-chat", "chatml"),
        ("qwen-7b-chat", "chatml"),
        ("01-ai/Yi-6B-Chat", "chatml"),
        ("microsoft/Phi-3-mini-4k-instruct", "phi3"),
        ("microsoft/Phi-3.5-mini-instruct", "phi3"),
        ("mistral-7b-instruct", "mistral"),
        ("mistralai/Mistral-7B-Instruct-v0.2", "mistral"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistral-v0.3"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mistral"),
        ("organism", "organism"),
        ("saesteer-organism-tiny", "organism"),
    ],
)
def test_template_for_model(model, template):
    assert template_for_model(model).name == template


@pytest.mark.parametrize(
    "model",
    [
        "gemma-2-2b",
        "google/gemma-2-9b",
        "meta-llama/Llama-3.1-8B",
        "Meta-Llama-3-8B",
        "Qwen/Qwen2.5-7B",
        "Qwen/Qwen3-8B-Base",
        "mistral-7b",
    ],
)
def test_base_models_rejected(model):
    with pytest.raises(TemplateError, match=rf"no chat template is known for model '{model}': it looks like a base"):
        template_for_model(model)


def test_unknown_model_and_overrides():
    with pytest.raises(
        TemplateError,
        match=r"no chat template is known for model 'gpt2'; pass one with model.template=<name> \(known: llama3, llama3.1,",
    ):
        template_for_model("gpt2")
    assert template_for_model("gpt2", override="chatml") is TEMPLATES["chatml"]
    custom = ChatTemplate("mine", prefix="Q: ", suffix="\nA:", bos=False)
    assert template_for_model("gemma-2-2b-it", override=custom) is custom
    with pytest.raises(TemplateError, match="unknown chat template 'gema'; known templates: llama3"):
        template_for_model("gpt2", override="gema")


def test_template_validation():
    with pytest.raises(TemplateError, match="template 'x': suffix is empty"):
        ChatTemplate("x", prefix="a", suffix="")
    with pytest.raises(TemplateError, match=r"system_prefix must contain '\{system\}' exactly once"):
        ChatTemplate("x", prefix="a", suffix="b", system_prefix="no placeholder")


# ----------------------------------------------------------------------------- encoding


def test_organism_positions_exact(organism_tok):
    tok = organism_tok
    t = get_template("organism")
    prompts = ["Tell me a story about a cat.", "How do I bake bread?", "Write a poem"]
    enc = encode_chat(tok, t, prompts)

    assert enc.n_post == 3 and suffix_ids(tok, t) == tok.convert_tokens_to_ids(
        ["<|end|>", "<|assistant|>", "<|start|>"]
    )
    assert enc.n_prefix == 1  # <|user|>, no BOS
    assert enc.t_inst == -4 and enc.post_positions == [-3, -2, -1] == post_instruction_positions(3)
    assert enc.tokens.dtype == torch.long and enc.attention_mask.dtype == torch.long
    # word-level: instruction lengths are word+punctuation counts
    assert enc.instruction_lengths.tolist() == [8, 6, 3]
    assert enc.lengths.tolist() == [12, 10, 7]
    T = 12
    assert enc.tokens.shape == (3, T)

    pad = tok.pad_token_id
    last_words = [".", "?", "poem"]
    for i, row in enumerate(enc.tokens):
        n = int(enc.lengths[i])
        # left padding
        assert row[: T - n].tolist() == [pad] * (T - n)
        assert enc.attention_mask[i].tolist() == [0] * (T - n) + [1] * n
        # first real token is <|user|>, last three are the suffix
        assert tok.convert_ids_to_tokens(int(row[T - n])) == "<|user|>"
        assert tok.decode(row[-3:]) == "<|end|> <|assistant|> <|start|>"
        # t_inst is the last instruction token
        assert tok.convert_ids_to_tokens(int(row[enc.t_inst])) == last_words[i]
        # instruction mask covers exactly the instruction tokens
        span = row[enc.instruction_mask[i]]
        assert span.tolist() == tok(prompts[i], add_special_tokens=False)["input_ids"]

    assert enc.instruction_mask.dtype == torch.bool
    assert enc.instruction_mask.sum(1).tolist() == enc.instruction_lengths.tolist()
    assert not (enc.instruction_mask & (enc.attention_mask == 0)).any()


def test_bpe_with_bos_round_trips(bpe_tok):
    tok = bpe_tok
    t = get_template("gemma")
    prompts = ["How do I bake bread?", "Tell me a story about a cat.", "Hi"]
    enc = encode_chat(tok, t, prompts, max_length=64)
    assert enc.n_post == len(tok(t.suffix, add_special_tokens=False)["input_ids"]) == 6
    for i, text in enumerate(prompts):
        row = enc.tokens[i][enc.attention_mask[i].bool()].tolist()
        assert row[0] == tok.bos_token_id
        # whole row decodes to BOS + the formatted prompt, and equals joint tokenization here
        assert tok.decode(row) == "<bos>" + format_prompt(t, text)
        assert row == [tok.bos_token_id] + tok(format_prompt(t, text), add_special_tokens=False)["input_ids"]
        assert tok.decode(enc.tokens[i, enc.post_positions]) == t.suffix
        assert tok.decode(enc.tokens[i][enc.instruction_mask[i]]) == text
    assert enc.n_prefix == 1 + len(tok(t.prefix, add_special_tokens=False)["input_ids"])

    # the same template without BOS, or a tokenizer without a BOS id, adds none
    no_bos = ChatTemplate("g", prefix=t.prefix, suffix=t.suffix, bos=False)
    enc2 = encode_chat(tok, no_bos, prompts)
    assert enc2.tokens.shape[1] == enc.tokens.shape[1] - 1
    assert (enc2.lengths == enc.lengths - 1).all()
    for i in range(len(prompts)):
        with_bos = enc.tokens[i][enc.attention_mask[i].bool()]
        without = enc2.tokens[i][enc2.attention_mask[i].bool()]
        assert torch.equal(without, with_bos[1:])


def test_system_prompt_encoding(bpe_tok):
    t = ChatTemplate("s", prefix="user\n", suffix="<end_of_turn>\n", bos=False, system_prefix="{system}\nuser\n")
    a = encode_chat(bpe_tok, t, ["Hi"])
    b = encode_chat(bpe_tok, t, ["Hi"], system="Tell me")
    assert b.n_prefix > a.n_prefix and b.n_post == a.n_post
    assert bpe_tok.decode(b.tokens[0]) == "Tell me\nuser\nHi<end_of_turn>\n"


def test_pad_override_and_device(organism_tok):
    enc = encode_chat(organism_tok, get_template("organism"), ["Write a poem about the sea.", "Hi"], pad_token_id=99)
    assert enc.tokens[1, 0].item() == 99 and enc.attention_mask[1, 0].item() == 0
    moved = enc.to("cpu")
    assert torch.equal(moved.tokens, enc.tokens) and moved.n_post == enc.n_post and len(moved) == 2


def test_encoding_errors(organism_tok):
    t = get_template("organism")
    with pytest.raises(
        ChatEncodingError,
        match=r"prompt 1 is 12 tokens long, more than max_length=10 \(instruction starts 'Tell me a story",
    ):
        encode_chat(organism_tok, t, ["Hi", "Tell me a story about a cat."], max_length=10)
    with pytest.raises(ChatEncodingError, match=r"instruction 1 \(' '\) tokenizes to no tokens"):
        encode_chat(organism_tok, t, ["Hi", " "])
    with pytest.raises(ChatEncodingError, match="got a single string"):
        encode_chat(organism_tok, t, "Hi")
    with pytest.raises(ChatEncodingError, match="instructions is empty"):
        encode_chat(organism_tok, t, [])
    with pytest.raises(ChatEncodingError, match="instruction 0 is int, expected str"):
        encode_chat(organism_tok, t, [3])
    with pytest.raises(ChatEncodingError, match="suffix ' ' tokenizes to no tokens"):
        encode_chat(organism_tok, ChatTemplate("blank", prefix="", suffix=" ", bos=False), ["Hi"])

    class NoPad:
        pad_token_id = eos_token_id = bos_token_id = None

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[1] * max(1, len(s)) for s in texts]}

    with pytest.raises(ChatEncodingError, match="neither a pad nor an eos token; pass pad_token_id="):
        encode_chat(NoPad(), t, ["Hi"])
    assert encode_chat(NoPad(), t, ["Hi"], pad_token_id=0).tokens.shape == (1, len("<|user|> ") + 2 + len(t.suffix))
    with pytest.raises(ChatEncodingError, match="n_post=0: expected >= 1"):
        post_instruction_positions(0)
