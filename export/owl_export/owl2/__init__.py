"""mPLUG-Owl2, mPLUG-Owl2.1 and mPLUG-Owl (v1) on the PyTorch side (docs/owl2.md PART A, B, C): the
checkpoint's configuration, the reference vision + abstractor and language model (the oracle the runtime is
tested against), the exporters, and tiny random checkpoints in the published layouts.

  config      Owl2Config.from_checkpoint(hf_dir) / from_dict(config): variant, sizes, tensor-name prefixes
  language    Owl2LanguageReference(weights, cfg): the LLM with the modality-adaptive module (v1: plain LLaMA;
              2.1: Qwen-7B whose fused c_attn is per modality), forward(embeds, modality, past) ->
              (logits, past); splice(ids with -200, image_embeds)
  convert     convert_owl2_decoder(hf_dir, out_path, quant): the decoder GGUF (general.architecture "owl2";
              2.1: owl2.variant "owl2_1", image Q/K/V + biases as blk.N.img.attn_{q,k,v}, the tokenizer
              from qwen.tiktoken)
  vision      Owl2VisionReference(weights, cfg): pixels -> ViT -> abstractor -> visual_fc + vit_eos
              [N, Q+1, n_embd] (docs/owl2.md A3, A4, PART C); sincos_position_tables   (imported on demand)
  onnx_export export_owl2_vision_onnx(hf_dir, out_path, dtype=, quant=) -> vision.onnx, checked
              (imported on demand)
  export      export_owl2(hf_dir, out_dir, quant): the model directory (decoder.gguf + vision.onnx)
  fixtures    make_tiny_owl2_checkpoint(out_dir, variant="owl2" | "owl2_1" | "owl1")   (imported on demand)
"""
