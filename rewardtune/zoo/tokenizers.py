"""Tokenizers that need no files: a byte-level CLIP tokenizer and small in-memory trained BPE/WordPiece ones."""
from __future__ import annotations

from functools import lru_cache

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

#: sentences used to train tiny in-memory tokenizers (deterministic)
CORPUS = [
    "a photo of a cat", "a red car parked on the street", "a bowl of soup", "a dog running on green grass",
    "a crimson automobile", "an astronaut riding a horse", "a bicycle leaning against a wall", "a person",
    "is it likely that this object appears in the scene", "certain may unlikely yes no answer", "the image shows",
    "a painting of a mountain lake at sunset", "two people sitting at a wooden table", "a cup of coffee",
]


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte to printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def tiny_clip_tokenizer(model_max_length: int = 16):
    """Character-level CLIP tokenizer: 512 byte symbols (+'</w>' forms) and BOS/EOS, 514 ids, no merges."""
    from transformers import CLIPTokenizer

    base = list(bytes_to_unicode().values())
    vocab_list = base + [b + "</w>" for b in base] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)
    return tok


TINY_CLIP_VOCAB = 514
TINY_CLIP_BOS, TINY_CLIP_EOS = 512, 513


def train_bpe_tokenizer(vocab_size: int = 300, padding_side: str = "left"):
    """A byte-level BPE tokenizer trained in memory on CORPUS (for tiny causal LMs / OPT)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", padding_side=padding_side)


def train_wordpiece_vocab(vocab_size: int = 200) -> list[str]:
    """A BERT WordPiece vocabulary trained in memory on CORPUS (for tiny BLIP / Q-Former text towers)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.train_from_iterator(CORPUS * 4, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"],
        show_progress=False))
    vocab = tk.get_vocab()
    return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
