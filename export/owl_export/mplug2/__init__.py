"""mPLUG-2 video captioning on the PyTorch side (docs/owl2.md PART D): the checkpoint's configuration, the
reference implementation (the oracle the runtime is tested against), the WordPiece tokenizer as the official
code calls it, and tiny random checkpoints in the official .pth layout.

  config     Mplug2Config.from_state_dict(sd, bert_json, caption_cfg); load_checkpoint(dir) -> (sd, cfg)
  reference  Mplug2CaptionReference.from_dir(dir): encode_video, decoder_logits (cached / re-run), greedy,
             beam_search (predictor.py's), caption; preprocess_frames, sample_frame_indices
  tokenizer  BertWordPiece: encode ([CLS] + pieces, no [SEP]), decode, caption_text
  fixtures   make_tiny_mplug2_checkpoint(out_dir, seed=0)
"""
