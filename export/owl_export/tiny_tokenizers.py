"""Train tiny tokenizers shaped like the published Qwen2 and LLaMA-2 ones, for tests and toy models.

Both train on data/corpus.txt, deterministically and in well under a second. The output directories
look like Hugging Face checkpoints (minus the weights), so `vocab.load_hf_vocab` reads them exactly
as it reads the real thing.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

CORPUS = Path(__file__).with_name("data") / "corpus.txt"

# Qwen2's pre-tokenizer regex, as in its tokenizer.json.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def corpus_lines() -> list[str]:
    return CORPUS.read_text(encoding="utf-8").splitlines()


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def train_qwen2_tokenizer(out_dir, vocab_size: int = 1000, texts=None) -> None:
    """Byte-level BPE like Qwen2: tokenizer.json, vocab.json, merges.txt, tokenizer_config.json.

    `vocab_size` is the size of the BPE vocabulary; the three special tokens follow it. `texts`: the
    training text (default: data/corpus.txt in chunks of 8 lines).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 byte characters, like Qwen2
    )
    # Chunks of several lines, newlines kept, so runs of "\n" and indentation after them are seen too.
    if texts is None:
        lines = CORPUS.read_text(encoding="utf-8").splitlines(keepends=True)
        chunks = ["".join(lines[i:i + 8]) for i in range(0, len(lines), 8)]
    else:
        chunks = list(texts)
    tok.train_from_iterator(chunks, trainer, length=len(chunks))
    # Specials come right after the base vocabulary, as in Qwen2 (151643..).
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN2_SPECIALS])
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json + merges.txt, the slow-tokenizer files Qwen2 also ships

    first = tok.token_to_id(QWEN2_SPECIALS[0])
    _write_json(out / "tokenizer_config.json", {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(first + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": True}
            for i, t in enumerate(QWEN2_SPECIALS)
        },
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": CHATML_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    })


def train_llama_tokenizer(out_dir, vocab_size: int = 1000) -> None:
    """SentencePiece BPE with LLaMA's trainer settings: tokenizer.model, tokenizer_config.json,
    special_tokens_map.json."""
    import sentencepiece as spm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(1234)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()),
        model_prefix=str(out / "tokenizer"),
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_by_unicode_script=True,
        split_by_whitespace=True,
        character_coverage=0.99995,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        max_sentence_length=1 << 16,
        num_threads=1,  # deterministic
        minloglevel=2,
    )
    os.remove(out / "tokenizer.vocab")  # LLaMA ships only tokenizer.model

    def added(content):
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
                "rstrip": False, "single_word": False}

    _write_json(out / "tokenizer_config.json", {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": added("<s>"),
        "clean_up_tokenization_spaces": False,
        "eos_token": added("</s>"),
        "legacy": False,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": added("<unk>"),
    })
    plain = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    _write_json(out / "special_tokens_map.json", {
        "bos_token": {"content": "<s>", **plain},
        "eos_token": {"content": "</s>", **plain},
        "unk_token": {"content": "<unk>", **plain},
    })
