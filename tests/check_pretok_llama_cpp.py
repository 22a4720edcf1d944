"""Cross-check of the pre-tokenizers against llama.cpp itself, on the same GGUF files.

Not collected by pytest: it needs llama-cpp-python in another Python (the one bench scripts take):

  PYTHONPATH=python:export:tests python tests/check_pretok_llama_cpp.py --llama-python ~/llama-env/bin/python

For every tokenizer.ggml.pre of tests/test_pretokenizers.py it trains the same tiny vocabulary, writes it into a
vocab-only llama GGUF, and tokenizes the awkward corpus with owl_cpp, HF `tokenizers` (the published
configuration) and llama.cpp (vocab_only). It prints, per name, on how many texts llama.cpp agrees with owl_cpp
and with HF, and the first text where it does not. Where llama.cpp differs from HF the tests follow HF (llama.cpp
rewrites some regexes for std::regex, and applies no NFC normalizer).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf

import test_pretokenizers as T
from owl_cpp._core import Tokenizer
from owl_export.vocab import write_vocab

LLAMA_SIDE = r"""
import json, sys
from llama_cpp import Llama
jobs = json.load(open(sys.argv[1]))
out = {}
for name, (path, texts) in jobs.items():
    try:
        m = Llama(model_path=path, vocab_only=True, verbose=False)
        out[name] = [m.tokenize(t.encode(), add_bos=False, special=False) for t in texts]
    except Exception as e:  # an unknown pre-tokenizer, say
        out[name] = repr(e)
json.dump(out, open(sys.argv[2], "w"))
"""


def write_llama_gguf(hf, pre: str, path: Path) -> None:
    """The vocabulary plus the few llama hyper-parameters a vocab_only load reads."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    write_vocab(w, T.vocab_of(hf, pre))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-python", required=True, help="a Python with llama_cpp installed")
    args = ap.parse_args()
    texts = T.AWKWARD + ["".join(T.AWKWARD)]
    tmp = Path(tempfile.mkdtemp(prefix="pretok-llama-"))
    jobs, ours, hfs = {}, {}, {}
    for name in T.CASES:
        hf = T.hf_tokenizer(name, None)
        path = tmp / f"{name}.gguf"
        write_llama_gguf(hf, name, path)
        owl = Tokenizer.from_gguf(str(path))
        jobs[name] = (str(path), texts)
        ours[name] = [owl.encode(t, False, False) for t in texts]
        hfs[name] = [hf.encode(t, add_special_tokens=False).ids for t in texts]
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    (tmp / "side.py").write_text(LLAMA_SIDE)
    subprocess.run([args.llama_python, str(tmp / "side.py"), str(tmp / "jobs.json"), str(tmp / "out.json")], check=True)
    theirs = json.loads((tmp / "out.json").read_text())
    print(f"{'pre':16} {'llama.cpp = owl':>16} {'llama.cpp = HF':>15} {'owl = HF':>9}  first difference")
    for name in T.CASES:
        got = theirs[name]
        if isinstance(got, str):
            print(f"{name:16} llama.cpp refuses it: {got[:80]}")
            continue
        same_owl = sum(a == b for a, b in zip(got, ours[name]))
        same_hf = sum(a == b for a, b in zip(got, hfs[name]))
        owl_hf = sum(a == b for a, b in zip(ours[name], hfs[name]))
        first = next((t for t, a, b in zip(texts, got, ours[name]) if a != b), None)
        print(f"{name:16} {same_owl:>10}/{len(texts):<5} {same_hf:>9}/{len(texts):<5} {owl_hf:>5}/{len(texts):<3}"
              f"  {first[:60]!r}" if first is not None else f"{name:16} {same_owl:>10}/{len(texts):<5} "
              f"{same_hf:>9}/{len(texts):<5} {owl_hf:>5}/{len(texts):<3}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
