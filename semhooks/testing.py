"""Tiny random models with a local tokenizer: offline, deterministic, well under a second.

For unit tests and documentation examples. The tokenizers are trained in memory on a small
built-in corpus, so they behave like the real ones (GPT-2 byte-level BPE with leading-space
tokens, Llama-style BPE, BERT WordPiece with [CLS]/[SEP]) without any download.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch

Arch = str  # "llama", "gpt2", "bert", or any name in semhooks.tiny_models.ARCHS

_CORPUS = [
    "The capital of France is Paris. The capital of Germany is Berlin.",
    "The capital of Italy is Rome, and the capital of Spain is Madrid.",
    "Bat, Rabbit, Ant, Fox, Cat, Dog, Owl, Bee, Cow, Pig,",
    "I loved this movie; it was wonderful and moving.",
    "I hated this film: it was boring, dull and far too long!",
    "The bank of the river was muddy. She went to the bank to deposit money.",
    "Él comió café en São Paulo con una crème brûlée. naïve résumé façade",
    "He plays the guitar and the piano. She plays the violin.",
    "In this sentence, the word means in one word:",
    "emoji 🙂 test, numbers 12345 and symbols #@$%&*()[]{}",
]


@functools.cache
def _tokenizer_object(arch: Arch, vocab_size: int) -> Any:
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    corpus = _CORPUS * 4
    if arch == "bert":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=specials, show_progress=False
        )
        tok.train_from_iterator(corpus, trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[
                ("[CLS]", tok.token_to_id("[CLS]")),
                ("[SEP]", tok.token_to_id("[SEP]")),
            ],
        )
        return tok
    # Llama-style: characters outside the training alphabet become <unk> (dropping them would
    # shift every later offset and misalign spans).
    tok = Tokenizer(models.BPE(unk_token=None if arch == "gpt2" else "<unk>"))
    if arch == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        specials = ["<|endoftext|>"]
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # llama-style: metaspace pre-tokenisation ("▁word"), byte fallback alphabet
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        specials = ["<unk>", "<s>", "</s>"]
        alphabet = sorted(set("".join(_CORPUS)) | {"▁"})
    bpe_trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(corpus, bpe_trainer)
    return tok


def tiny_tokenizer(arch: Arch = "gpt2", vocab_size: int = 400) -> Any:
    """A Hugging Face fast tokenizer trained in memory (no files, no network)."""
    from transformers import PreTrainedTokenizerFast

    tok_obj = _tokenizer_object(arch, vocab_size)
    if arch == "bert":
        tok = PreTrainedTokenizerFast(
            tokenizer_object=tok_obj,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    elif arch == "gpt2":
        tok = PreTrainedTokenizerFast(
            tokenizer_object=tok_obj,
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
        )
    else:
        tok = PreTrainedTokenizerFast(
            tokenizer_object=tok_obj,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="</s>",
        )
    # TransformerLens re-creates tokenizers from name_or_path unless add_bos_token is set.
    tok.init_kwargs["name_or_path"] = f"semhooks-tiny-{arch}"
    tok.init_kwargs["add_bos_token"] = True
    return tok


def tiny_hf_model(
    arch: Arch = "llama",
    seed: int = 0,
    n_layers: int = 3,
    d_model: int = 64,
    vocab_size: int | None = None,
) -> tuple[Any, Any]:
    """A tiny randomly initialised Hugging Face model and its tokenizer.

    ``arch`` is ``"llama"``, ``"gpt2"``, ``"bert"`` or any family in
    :data:`semhooks.tiny_models.ARCHS` (``"neox"``, ``"gemma2"``, ``"mixtral"``, ``"roberta"``...).
    """
    if arch not in ("llama", "gpt2", "bert"):
        from semhooks import tiny_models

        if arch not in tiny_models.ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(tiny_models.ARCHS)}")
        style = tiny_models.ARCHS[arch].tokenizer_style
        base = tiny_tokenizer("gpt2" if style == "roberta" else style, vocab_size or 400)
        tok = tiny_models.roberta_tokenizer(base) if style == "roberta" else base
        return tiny_models.build_hf_model(arch, tok, seed, n_layers, d_model), tok
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    tok = tiny_tokenizer(arch, vocab_size or 400)
    n_vocab = len(tok)
    torch.manual_seed(seed)
    common: dict[str, Any] = {"vocab_size": n_vocab}
    cfg: Any
    hf: Any
    if arch == "llama":
        cfg = LlamaConfig(
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=False,
            **common,
        )
        hf = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(
            n_embd=d_model,
            n_layer=n_layers,
            n_head=4,
            n_positions=512,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            **common,
        )
        hf = GPT2LMHeadModel(cfg)
    elif arch == "bert":
        cfg = BertConfig(
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
            **common,
        )
        hf = BertForMaskedLM(cfg)
    else:
        raise ValueError(f"unknown arch {arch!r}")  # pragma: no cover - checked above
    return hf.eval(), tok


def tiny_model(
    arch: Arch = "llama",
    seed: int = 0,
    n_layers: int = 3,
    d_model: int = 64,
    vocab_size: int | None = None,
    backend: Literal["bridge", "hooked"] = "bridge",
    device_map: Sequence[str] | None = None,
) -> Any:
    """A tiny random TransformerLens model (bridge by default) with a local tokenizer.

    ``device_map``: two (or more) devices, e.g. ``["cuda:0", "cuda:1"]`` (``["cpu", "cpu"]``
    exercises the placement logic alone): the Hugging Face model's layers are split over
    them by accelerate (:func:`semhooks.tiny_models.dispatch`) before the bridge wraps it.

    >>> model = tiny_model("gpt2")
    >>> model.cfg.n_layers
    3
    """
    hf, tok = tiny_hf_model(arch, seed, n_layers, d_model, vocab_size)
    name = f"tiny-{arch}"
    if device_map is not None:
        if backend == "hooked":
            raise ValueError("backend='hooked' places layers with n_devices, not device_map")
        from semhooks import tiny_models

        hf = tiny_models.dispatch(hf, list(device_map))
    if backend == "hooked":
        from semhooks.backend.hooked import hooked_transformer_from_hf

        # Raises ValueError naming the architecture where TransformerLens 3.x has no
        # HookedTransformer for it (semhooks.backend.hooked_configs.UNSUPPORTED).
        model = hooked_transformer_from_hf(hf, tok)
    else:
        from transformer_lens.model_bridge import TransformerBridge

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=tok)
    model.eval()
    from semhooks.backend.state import model_state

    model_state(model).name = name
    return model
