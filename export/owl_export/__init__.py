"""owl_export: turn Hugging Face checkpoints into owl_cpp / llama.cpp GGUF files.

Needs the `export` extra (torch, gguf, safetensors, tokenizers, sentencepiece, onnx). Submodules are
imported on demand so that `import owl_export` stays cheap, and `owl-export --help` works without the extra:

  checkpoint    read config.json + safetensors / .bin weights exactly as published
  reference     plain PyTorch reference models (the oracle the runtime is tested against)
  quantize      per-tensor storage type rules (f32/f16/bf16/q8_0/q4_0, and the K mixes via quant_mix)
  quant_mix     llama.cpp's K-quant mixes (q2_k .. q6_k): the type of each tensor
  kquants       our numpy quantizers/decoders for Q2_K..Q6_K and IQ4_NL (ggml block layouts)
  requantize    an F32/F16 GGUF -> the same file under another --quant
  convert_text  qwen2 / llama checkpoint -> one GGUF file in llama.cpp's conventions
  fixtures      tiny random checkpoints in the official layouts, for tests
  cli           the `owl-export` command
"""
