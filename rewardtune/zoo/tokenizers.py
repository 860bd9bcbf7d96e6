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


def train_bpe(word_counts: dict[str, int], initial: list[str], vocab_size: int,
              prefix: str = "") -> tuple[list[str], list[tuple[str, str]]]:
    """Byte-pair encoding trained in plain Python, deterministic by construction: (vocabulary in id order, merges).

    `initial` (special tokens, then the alphabet) takes the first ids. Each step merges the most frequent adjacent
    pair; ties go to the pair with the smaller ids, as tokenizers' BpeTrainer breaks them. With `prefix` ("##" for
    WordPiece) every symbol after a word's first carries it. tokenizers' own trainer is not used: its WordPiece
    trainer numbers the prefixed symbols in hash-map order, so the vocabulary changed from one process to the next.
    For byte-level BPE this gives exactly what tokenizers 0.23's trainer gives.
    """
    vocab = list(initial)
    ids = {t: i for i, t in enumerate(vocab)}

    def add(tok: str) -> int:
        if tok not in ids:
            ids[tok] = len(vocab)
            vocab.append(tok)
        return ids[tok]

    if prefix:  # every continuing symbol, in sorted order (not first-seen order)
        for c in sorted({c for w in word_counts for c in w[1:]}):
            add(prefix + c)
    words = []
    for w in sorted(word_counts):
        words.append(([add(c if i == 0 or not prefix else prefix + c) for i, c in enumerate(w)], word_counts[w]))
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        pairs: dict[tuple[int, int], int] = {}
        for syms, n in words:
            for pair in zip(syms, syms[1:], strict=False):
                pairs[pair] = pairs.get(pair, 0) + n
        if not pairs:
            break
        a, b = min(pairs, key=lambda p: (-pairs[p], p))
        right = vocab[b][len(prefix):] if prefix and vocab[b].startswith(prefix) else vocab[b]
        new = add(vocab[a] + right)
        merges.append((vocab[a], vocab[b]))
        for k, (syms, n) in enumerate(words):
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[k] = (out, n)
    return vocab, merges


def _word_counts(corpus: list[str], normalizer, pre_tokenizer) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in corpus:
        if normalizer is not None:
            s = normalizer.normalize_str(s)
        for w, _ in pre_tokenizer.pre_tokenize_str(s):
            counts[w] = counts.get(w, 0) + 1
    return counts


def byte_level_bpe(corpus: list[str], vocab_size: int, special_tokens: list[str]):
    """A byte-level BPE `tokenizers.Tokenizer` trained (deterministically) on `corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    vocab, merges = train_bpe(_word_counts(corpus, None, pre),
                              list(special_tokens) + sorted(pre_tokenizers.ByteLevel.alphabet()), vocab_size)
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, unk_token="<unk>"))
    tk.pre_tokenizer = pre
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(list(special_tokens))
    return tk


def train_bpe_tokenizer(vocab_size: int = 300, padding_side: str = "left"):
    """A byte-level BPE tokenizer trained in memory on CORPUS (for tiny causal LMs / OPT)."""
    from transformers import PreTrainedTokenizerFast

    tk = byte_level_bpe(CORPUS * 4, vocab_size, ["<unk>", "<s>", "</s>", "<pad>"])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", padding_side=padding_side)


def train_wordpiece_vocab(vocab_size: int = 200) -> list[str]:
    """A BERT WordPiece vocabulary trained in memory on CORPUS (for tiny BLIP / Q-Former text towers)."""
    from tokenizers import normalizers, pre_tokenizers

    counts = _word_counts(CORPUS * 4, normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer())
    alphabet = sorted({c for w in counts for c in w})
    vocab, _ = train_bpe(counts, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]", *alphabet],
                         vocab_size, prefix="##")
    return vocab


def tiny_t5_tokenizer(model_max_length: int = 16):
    """A character-level T5 (Unigram) tokenizer: pad, eos, unk, the word-start marker, then printable ASCII; no
    sentencepiece file needed. Ids: pad 0, eos 1, unk 2, as T5's."""
    import string

    from transformers import T5Tokenizer

    chars = sorted(set(string.ascii_letters + string.digits + string.punctuation))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)] + [(c, -2.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
