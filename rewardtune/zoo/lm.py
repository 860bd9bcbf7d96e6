"""Tiny Llama-style causal LM twin with a BPE tokenizer trained in memory and a small chat template.

The tokenizer keeps the answer words the LLM judge reads (certain / may / unlikely / yes / no) as single tokens,
as they are in the Llama vocabulary, and its context is short (512 positions) so truncation paths get exercised.
"""
from __future__ import annotations

from pathlib import Path

MAX_POSITIONS = 512

#: a USER/ASSISTANT template in the style of Vicuna's, as a Jinja chat template
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}USER: {{ m['content'] }}\n"
    "{% else %}ASSISTANT: {{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

ANSWER_WORDS = ("certain", "may", "unlikely", "yes", "no")


def answer_corpus() -> list[str]:
    from rewardtune.zoo.tokenizers import CORPUS

    answers = [f"ASSISTANT: {w}" for w in ANSWER_WORDS] + [" ".join(ANSWER_WORDS)]
    return CORPUS * 4 + answers * 40 + ["USER: prompt object scene appear likely"] * 10


def train_lm_tokenizer(vocab_size: int = 400):
    from transformers import PreTrainedTokenizerFast

    from rewardtune.zoo.tokenizers import byte_level_bpe

    tk = byte_level_bpe(answer_corpus(), vocab_size, ["<unk>", "<s>", "</s>", "<pad>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", padding_side="left", model_max_length=MAX_POSITIONS)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_llama(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def build(path: Path, seed: int) -> None:
    """Tiny Llama: 2 layers, hidden 32, GQA 4/2 heads, 512 positions; tokenizer with a USER/ASSISTANT template."""
    tok = train_lm_tokenizer()
    make_llama(tok).save_pretrained(path)
    tok.save_pretrained(path)
