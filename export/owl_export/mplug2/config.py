"""What an mPLUG-2 video-captioning checkpoint is (docs/owl2.md PART D).

A checkpoint directory holds what the official `video_caption_mplug2.py --evaluate` run needs:

  *.pth                       torch.save({"model": state_dict, ...}) (the loader also accepts "module"); the
                              official training loop saves "config" (the YAML dict) beside it
  config_bert_large_text.json the BERT config the captioning YAML names (`bert_config`); config_bert.json is
                              the base-size file the large model does not use
  vocab.txt                   the bert-large-uncased WordPiece vocabulary

Sizes come from the tensors where the tensors carry them (vision width, patch, grid, layer counts, latents,
vocabulary) and from the BERT json otherwise (heads, eps, activation); the json's layer counts are checked
against the tensors. Captioning options (prompt, beam size, lengths) come from the checkpoint's "config" when
present, else from the official defaults (configs_video/VideoCaption_msrvtt_large.yaml and the argparse
defaults of video_caption_mplug2.py: min_length 4, max_length 20, beam_size 5, prompt "a video of").
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

BERT_JSON_NAMES = ("config_bert_large_text.json", "config_bert.json")
CHECKPOINT_NAMES = ("mplug2_caption.pth", "checkpoint_best.pth", "pytorch_model.pth")

CAPTION_DEFAULTS = {"prompt": "a video of", "beam_size": 5, "min_length": 4, "max_length": 20,
                    "model_num_frames": 16, "image_res": 224, "clip_name": "ViT-L-14"}

# BertConfig fields the official code reads, with transformers' BertConfig defaults
_BERT_DEFAULTS = {"hidden_act": "gelu", "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
                  "type_vocab_size": 2, "pad_token_id": 0, "position_embedding_type": "absolute"}

VIDEO = "visual_encoder.visual."
TEXT_ENCODER = "text_encoder."
DECODER = "text_decoder."


class Mplug2CheckpointError(ValueError):
    pass


@dataclass(frozen=True)
class Mplug2Config:
    # video ViT (clip_video.VideoFormer)
    vision_width: int
    vision_layers: int
    vision_heads: int          # vision_width // 64, hard-coded in XCLIP
    patch_size: int
    grid: int                  # image_res // patch_size
    # BERT stacks (one json for all three)
    text_width: int
    text_heads: int
    text_intermediate: int
    text_eps: float
    hidden_act: str
    vocab_size: int
    max_positions: int
    encoder_width: int
    text_encoder_layers: int
    num_uni_layer: int
    num_latents: int
    decoder_layers: int
    has_visn_fc: bool          # vision width != text width: visn_fc + visn_layer_norm before the universal layers
    # captioning
    num_frames: int = 16
    prompt: str = "a video of"
    beam_size: int = 5
    min_length: int = 4
    max_length: int = 20
    bos_id: int = 101          # predictor.py start_token ([CLS])
    eos_id: int = 102          # predictor.py end_token ([SEP])
    pad_id: int = 0
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def image_size(self) -> int:
        return self.grid * self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        return self.grid * self.grid

    def video_tokens(self, frames: int) -> int:
        return 1 + frames * self.tokens_per_frame

    @property
    def universal_layers(self) -> list[int]:
        return list(range(self.text_encoder_layers - self.num_uni_layer, self.text_encoder_layers))

    @classmethod
    def from_state_dict(cls, sd: dict, bert: dict, caption: dict | None = None) -> "Mplug2Config":
        caption = {**CAPTION_DEFAULTS, **(caption or {})}
        need = [VIDEO + "conv1.weight", VIDEO + "positional_embedding", "visn_emb_norm.weight",
                DECODER + "bert.embeddings.word_embeddings.weight", DECODER + "cls.predictions.decoder.weight"]
        missing = [k for k in need if k not in sd]
        if missing:
            raise Mplug2CheckpointError(f"not an mPLUG-2 captioning state dict: missing {missing}")
        conv = sd[VIDEO + "conv1.weight"]
        if conv.dim() != 5 or conv.shape[2] != 1:
            raise Mplug2CheckpointError(f"conv1 must be a Conv3d with temporal kernel 1 (temporal_downsampling is "
                                        f"off in the release), got {tuple(conv.shape)}")
        width, patch = conv.shape[0], conv.shape[-1]
        pos = sd[VIDEO + "positional_embedding"].shape[-2]
        grid = round((pos - 1) ** 0.5)
        if grid * grid + 1 != pos:
            raise Mplug2CheckpointError(f"positional_embedding has {pos} rows, not 1 + a square")
        vlayers = _count(sd, re.escape(VIDEO) + r"transformer\.resblocks\.(\d+)\.attn\.in_proj_weight")
        if width % 64:
            raise Mplug2CheckpointError(f"vision width {width} is not a multiple of 64 (heads = width / 64)")
        text_width = int(bert["hidden_size"])
        heads = int(bert["num_attention_heads"])
        enc_layers = _count(sd, re.escape(TEXT_ENCODER) + r"encoder\.layer\.(\d+)\.attention\.self\.query\.weight")
        dec_layers = _count(sd, re.escape(DECODER) + r"bert\.encoder\.layer\.(\d+)\.attention\.self\.query\.weight")
        for name, got in (("text_encoder_layers", enc_layers), ("text_decode_layers", dec_layers)):
            if name in bert and int(bert[name]) != got:
                raise Mplug2CheckpointError(f"{name} is {bert[name]} in the BERT json but the tensors have {got}")
        uni = int(bert.get("num_uni_layer", 2))
        lat_key = f"{TEXT_ENCODER}encoder.layer.{enc_layers - uni}.latents"
        if lat_key not in sd:
            raise Mplug2CheckpointError(f"missing {lat_key} (universal layers = the last {uni} encoder layers)")
        word = sd[DECODER + "bert.embeddings.word_embeddings.weight"]
        if word.shape[1] != text_width or sd["visn_emb_norm.weight"].shape[0] != text_width:
            raise Mplug2CheckpointError(f"text width {text_width} (json) disagrees with the tensors")
        has_fc = "visn_fc.weight" in sd
        if has_fc != (width != text_width):
            raise Mplug2CheckpointError("visn_fc must be present exactly when vision width != text width")
        enc_w = int(bert.get("encoder_width", text_width))
        k = sd[f"{DECODER}bert.encoder.layer.0.crossattention.self.key.weight"]
        if k.shape[1] != enc_w:
            raise Mplug2CheckpointError(f"encoder_width {enc_w} disagrees with the cross-attention keys "
                                        f"{tuple(k.shape)}")
        b = {**_BERT_DEFAULTS, **bert}
        return cls(vision_width=width, vision_layers=vlayers, vision_heads=width // 64, patch_size=patch, grid=grid,
                   text_width=text_width, text_heads=heads, text_intermediate=int(b["intermediate_size"]),
                   text_eps=float(b["layer_norm_eps"]), hidden_act=str(b["hidden_act"]),
                   vocab_size=word.shape[0],
                   max_positions=sd[DECODER + "bert.embeddings.position_embeddings.weight"].shape[0],
                   encoder_width=enc_w, text_encoder_layers=enc_layers, num_uni_layer=uni,
                   num_latents=sd[lat_key].shape[0], decoder_layers=dec_layers, has_visn_fc=has_fc,
                   num_frames=int(caption["model_num_frames"]), prompt=str(caption["prompt"]),
                   beam_size=int(caption["beam_size"]), min_length=int(caption["min_length"]),
                   max_length=int(caption["max_length"]))


def _count(sd: dict, pattern: str) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.fullmatch(pattern, k))}
    if not idx:
        return 0
    if idx != set(range(max(idx) + 1)):
        raise Mplug2CheckpointError(f"layer indices {sorted(idx)} are not contiguous for {pattern}")
    return max(idx) + 1


def find_checkpoint(ckpt_dir: str | Path) -> Path:
    d = Path(ckpt_dir)
    for name in CHECKPOINT_NAMES:
        if (d / name).is_file():
            return d / name
    pths = sorted(d.glob("*.pth"))
    if len(pths) == 1:
        return pths[0]
    raise FileNotFoundError(f"{d}: expected one .pth checkpoint, found {[p.name for p in pths]}")


def load_checkpoint(ckpt_dir: str | Path) -> tuple[dict, Mplug2Config]:
    """(state dict, config) as video_caption_mplug2.py loads them: checkpoint["model"], else ["module"]."""
    d = Path(ckpt_dir)
    obj = torch.load(find_checkpoint(d), map_location="cpu", weights_only=False)
    sd = obj.get("model", obj.get("module")) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise Mplug2CheckpointError("the checkpoint holds neither 'model' nor 'module'")
    bert = None
    for name in BERT_JSON_NAMES:
        if (d / name).is_file():
            bert = json.loads((d / name).read_text())
            break
    if bert is None:
        raise FileNotFoundError(f"{d}: no BERT config ({' or '.join(BERT_JSON_NAMES)})")
    caption = obj.get("config") if isinstance(obj.get("config"), dict) else None
    return sd, Mplug2Config.from_state_dict(sd, bert, caption)
