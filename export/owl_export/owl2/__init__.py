"""mPLUG-Owl2, mPLUG-Owl2.1 and mPLUG-Owl (v1) on the PyTorch side (docs/owl2.md PART A, B, C): the
checkpoint's configuration, the reference vision + abstractor and language model (the oracle the runtime is
tested against), the exporters, and tiny random checkpoints in the published layouts.

  config      Owl2Config.from_checkpoint(hf_dir) / from_dict(config): variant, sizes, tensor-name prefixes
  language    Owl2LanguageReference(weights, cfg): the LLM with the modality-adaptive module (v1: plain LLaMA),
              forward(embeds, modality, past) -> (logits, past); splice(ids with -200, image_embeds)
  convert     convert_owl2_decoder(hf_dir, out_path, quant): the decoder GGUF (general.architecture "owl2")
  fixtures    make_tiny_owl2_checkpoint(out_dir, variant="owl2" | "owl1")   (imported on demand)
"""
