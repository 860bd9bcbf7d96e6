"""Tiny BLIP-2 twin: ViT (32 px) + Q-Former + tiny OPT, saved with a Blip2Processor so `from_pretrained` works."""
from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = 32
NUM_QUERY_TOKENS = 4
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def make_processor():
    """Blip2Processor: BLIP image processor (32 px, bicubic, CLIP mean/std) + in-memory BPE tokenizer.

    The processor adds the `<image>` token to the tokenizer, as the hub checkpoints have it.
    """
    import warnings

    from transformers import Blip2Processor

    from rewardtune.zoo.tokenizers import train_bpe_tokenizer

    try:
        from transformers import BlipImageProcessorPil as ImageProcessor
    except ImportError:  # older transformers: the PIL processor is the default one
        from transformers import BlipImageProcessor as ImageProcessor

    tok = train_bpe_tokenizer(600, padding_side="left")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ip = ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=list(OPENAI_MEAN),
                            image_std=list(OPENAI_STD), resample=3)
    return Blip2Processor(image_processor=ip, tokenizer=tok, num_query_tokens=NUM_QUERY_TOKENS)


def make_blip2(tok):
    from transformers import Blip2Config, Blip2ForConditionalGeneration, OPTConfig

    cfg = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE_SIZE, patch_size=8),
        qformer_config=dict(vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, encoder_hidden_size=32, max_position_embeddings=64),
        text_config=OPTConfig(vocab_size=len(tok), hidden_size=32, ffn_dim=37, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32,
                              pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                              eos_token_id=tok.eos_token_id).to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS, image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    return Blip2ForConditionalGeneration(cfg)


def make_captions_wordy(model, tok, gain: float = 3.0) -> None:
    """Make a random twin caption in words: re-draw the vision / Q-Former / projection weights at std
    gain/sqrt(fan_in) (their std-0.02 init gives every image the same caption), and scale the tied OPT embedding
    rows of whole corpus words up and the rest down, so greedy decoding picks words rather than control bytes."""
    import torch

    from rewardtune.zoo.tokenizers import CORPUS

    words = {w for s in CORPUS for w in s.split()}
    with torch.no_grad():
        for part in (model.vision_model, model.qformer, model.language_projection):
            for mod in part.modules():
                if isinstance(mod, torch.nn.Linear | torch.nn.Conv2d):
                    mod.weight.normal_(0.0, gain / mod.weight[0].numel() ** 0.5)
        emb = model.language_model.get_input_embeddings().weight
        keep = torch.zeros(emb.shape[0], dtype=torch.bool)
        for t, i in tok.get_vocab().items():
            if t.startswith("\u0120") and t[1:] in words:
                keep[i] = True
        emb[keep] *= 3.0
        emb[~keep] *= 0.2


def build(path: Path, seed: int) -> None:
    """Tiny BLIP-2 captioner: 2-layer ViT (32 px, patch 8), 2-layer Q-Former with 4 queries, 2-layer OPT whose
    greedy captions are strings of words (no repeats) that change with the image."""
    proc = make_processor()
    model = make_blip2(proc.tokenizer)
    make_captions_wordy(model, proc.tokenizer)
    model.generation_config.no_repeat_ngram_size = 1
    model.save_pretrained(path)
    proc.save_pretrained(path)
