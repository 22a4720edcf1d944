"""Runs inside the llama-cpp-python environment (kept outside this repo, see README): answers one JSON
request on stdin with llama.cpp's tokenization, greedy tokens and last-position logits for a GGUF file.

Request: {"model": path, "text": str, "ids": [int] | null, "n_new": int, "threads": int, "n_ctx": int}
"""
import json
import sys

import numpy as np
from llama_cpp import Llama


def main() -> None:
    req = json.load(sys.stdin)
    llm = Llama(model_path=req["model"], n_ctx=req.get("n_ctx", 512), n_threads=req.get("threads", 2),
                n_batch=512, logits_all=True, verbose=False,
                type_k=0, type_v=0)  # F32 KV cache, as owl_cpp's (llama.cpp's default F16 adds ~5e-4 error)
    out = {"tokenized": llm.tokenize(req["text"].encode("utf-8"), add_bos=True, special=True)}
    ids = req.get("ids") or out["tokenized"]
    llm.reset()
    llm.eval(ids)
    out["prompt_logits"] = np.asarray(llm.scores[llm.n_tokens - 1], np.float64).tolist()
    greedy = []
    for _ in range(req.get("n_new", 0)):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(tok)
        llm.eval([tok])
    out["greedy"] = greedy
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
