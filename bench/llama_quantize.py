"""Quantize a GGUF with llama.cpp's own quantizer (llama-cpp-python's llama_model_quantize), run by the Python of
an environment that has llama-cpp-python (bench/make_random_gguf.py calls it through --llama-python).

    ~/llama-env/bin/python bench/llama_quantize.py SRC.gguf DST.gguf q4_k_m [--threads 2] [--allow-requantize]
"""
import argparse
import ctypes

import llama_cpp

# llama.cpp's file types by the names its llama-quantize tool takes (lower case).
FTYPES = ["q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k", "q4_0", "q8_0"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("ftype", choices=FTYPES)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--allow-requantize", action="store_true", help="the source is already quantized (e.g. Q8_0)")
    a = ap.parse_args()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{a.ftype.upper()}")
    params.nthread = a.threads
    params.allow_requantize = a.allow_requantize
    rc = llama_cpp.llama_model_quantize(a.src.encode(), a.dst.encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed ({rc}) on {a.src} -> {a.ftype}")


if __name__ == "__main__":
    main()
