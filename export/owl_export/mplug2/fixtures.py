"""Tiny random mPLUG-2 video-captioning checkpoints in the official layout (docs/owl2.md PART D).

The state dict has exactly the keys (and the order) of `MPLUG2(...).state_dict()` from
models/model_video_caption_mplug.py @ a46aa97, for a tiny BERT json:

  visn_emb_norm.*                       [visn_fc.*, visn_layer_norm.* only when vision width != text width]
  visual_encoder.*                      the whole XCLIP: positional_embedding, text_projection, logit_scale,
                                        visual.* (the VideoFormer), transformer.* (CLIP's unused text tower),
                                        token_embedding.weight, ln_final.*
  text_encoder.*                        BertModel(no pooler): embeddings (+ position_ids buffer), encoder.layer.N;
                                        the last num_uni_layer layers add crossattention.*,
                                        intermediate_vision.* / output_vision.* (unused) and the first of them
                                        `latents` [50, width]
  fusion_encoder.*                      FusionModel(no pooler): json num_hidden_layers FusionLayers (unused here)
  text_decoder.*                        BertPrefixModel: bert.* (every layer with crossattention; the
                                        uni-layer extras too, unused) and cls.predictions.* (decoder.weight is the
                                        word embedding matrix, decoder.bias is predictions.bias: tied)

saved as torch.save({"model": sd, "config": caption yaml dict}) like the official training loop, with the BERT
json under its official name and a WordPiece vocab.txt whose special tokens sit at bert-base/large-uncased's ids
([PAD] 0, [unused0..98] 1..99, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103).

Every parameter is random (norms near but not at 1, biases non-zero, up_proj not zero as at initialisation), so
a layout or ordering mistake changes the outputs.

make_tiny_mplug2_qa_checkpoint writes the VideoQA layout (models/model_videoqa_mplug.py): the same keys (its
decoder is a BertLMHeadModel, whose keys are BertPrefixModel's), then with distill (the published QA yaml) the
momentum copies visual_encoder_m.*, text_encoder_m.*, fusion_encoder_m.*, text_decoder_m.*, visn_emb_norm_m.*
(random too: no forward reads them); saved as mplug2_qa.pth with a QA run's config (answer_list, min_length 1,
max_length 10, no prompt). Its fusion stack has more layers than run (fusion_layers < the json's
num_hidden_layers), so running the wrong ones changes the answer.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import torch

CHECKPOINT_NAME = "mplug2_caption.pth"
QA_CHECKPOINT_NAME = "mplug2_qa.pth"
BERT_JSON_NAME = "config_bert_large_text.json"
NUM_LATENTS = 50        # hard-coded in modeling_mplug2.BertLayer

_WORDS = ("a video of man woman person people is are the and in on with to playing talking cooking car cat dog "
          "girl boy running singing song game show news about from there two some his her an it for by at "
          "un ##aff ##able play ##ing ##ed ##s ##er walk talk cook sing run ##ly very good don ' t n s "
          "caf ##e naive resume hello world what who how 2020 ##0 ##1 ##2 19 ##99").split()


def tiny_vocab() -> list[str]:
    """A BERT-uncased-shaped vocabulary: specials at the real ids, then characters, ## characters, words."""
    toks = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("!\"#$%&'()*+,-./0123456789:;<=>?@[\\]^_`{|}~abcdefghijklmnopqrstuvwxyz") + ["é", "ß", "中", "文"]
    toks += chars + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    for w in _WORDS:
        if w not in toks:
            toks.append(w)
    return toks


def make_tiny_mplug2_checkpoint(out_dir, seed: int = 0, *, vision_width: int = 64, vision_layers: int = 2,
                                num_frames: int = 3, patch_size: int = 14, image_res: int = 224,
                                text_width: int = 64, text_heads: int = 4, text_intermediate: int = 128,
                                text_encoder_layers: int = 3, num_uni_layer: int = 2, decoder_layers: int = 2,
                                fusion_hidden_layers: int = 2, fusion_layers: int = 1, max_positions: int = 40,
                                clip_text_width: int = 64, clip_text_layers: int = 1, clip_context: int = 8,
                                clip_vocab: int = 50, embed_dim: int = 32, min_length: int = 4,
                                max_length: int = 20, beam_size: int = 5, stride_layer: int = 1000,
                                task: str = "caption", distill: bool = False) -> Path:
    """Write a tiny random captioning (task "qa": VideoQA) checkpoint directory; returns its path."""
    if vision_width % 64:
        raise ValueError("vision_width must be a multiple of 64 (the video ViT has width / 64 heads)")
    if text_width % text_heads or clip_text_width % 64:
        raise ValueError("text_width must divide by text_heads, clip_text_width by 64")
    if not 1 <= num_uni_layer <= text_encoder_layers or num_uni_layer > decoder_layers:
        raise ValueError("num_uni_layer must fit in the encoder and the decoder")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    V = len(vocab)
    bert = {"architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": text_width, "initializer_range": 0.02,
            "intermediate_size": text_intermediate, "layer_norm_eps": 1e-12,
            "max_position_embeddings": max_positions, "model_type": "bert", "num_attention_heads": text_heads,
            "num_hidden_layers": fusion_hidden_layers, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": V,
            "encoder_width": text_width, "gradient_checkpointing": True, "use_cache": False,
            "text_encoder_layers": text_encoder_layers, "fusion_layers": fusion_layers,
            "text_decode_layers": decoder_layers, "stride_layer": stride_layer, "num_uni_layer": num_uni_layer}
    (out / BERT_JSON_NAME).write_text(json.dumps(bert, indent=2) + "\n")

    g = torch.Generator().manual_seed(seed)
    sd: "OrderedDict[str, torch.Tensor]" = OrderedDict()

    def mat(rows, cols, gain=1.0):
        return gain * torch.randn(rows, cols, generator=g) / math.sqrt(cols)

    def bias(n, scale=0.1):
        return scale * torch.randn(n, generator=g)

    def norm(p, n):
        sd[p + "weight"] = 1.0 + 0.1 * torch.randn(n, generator=g)
        sd[p + "bias"] = bias(n)

    def linear(p, n_out, n_in, gain=1.0, with_bias=True):
        sd[p + "weight"] = mat(n_out, n_in, gain)
        if with_bias:
            sd[p + "bias"] = bias(n_out)

    # MPLUG2.module_setting registers these before the towers
    norm("visn_emb_norm.", text_width)
    if vision_width != text_width:
        linear("visn_fc.", text_width, vision_width)
        norm("visn_layer_norm.", text_width)

    # XCLIP (clip_video.py): CLIP's own parameters first, then visual, transformer, token_embedding, ln_final
    D, grid = vision_width, image_res // patch_size
    p = "visual_encoder."
    sd[p + "positional_embedding"] = 0.01 * torch.randn(clip_context, clip_text_width, generator=g)
    sd[p + "text_projection"] = mat(clip_text_width, embed_dim)
    sd[p + "logit_scale"] = torch.tensor(math.log(1 / 0.07))
    v = p + "visual."
    sd[v + "class_embedding"] = 0.5 * torch.randn(D, generator=g)
    sd[v + "positional_embedding"] = 0.5 * torch.randn(grid * grid + 1, D, generator=g)
    sd[v + "proj"] = mat(D, embed_dim)
    sd[v + "conv1.weight"] = mat(D, 3 * patch_size * patch_size).view(D, 3, 1, patch_size, patch_size)
    norm(v + "ln_pre.", D)
    Db = D // 2
    for i in range(vision_layers):
        b = f"{v}transformer.resblocks.{i}."
        for t in ("lmhra1.", "lmhra2."):
            norm(b + t + "ln.", D)
            sd[b + t + "down_proj.weight"] = mat(Db, D).view(Db, D, 1, 1, 1)
            sd[b + t + "down_proj.bias"] = bias(Db)
            sd[b + t + "conv.weight"] = (0.6 * torch.randn(Db, 3, generator=g)).view(Db, 1, 3, 1, 1)
            sd[b + t + "conv.bias"] = bias(Db)
            sd[b + t + "up_proj.weight"] = mat(D, Db, 0.5).view(D, Db, 1, 1, 1)
            sd[b + t + "up_proj.bias"] = bias(D)
        sd[b + "attn.in_proj_weight"] = mat(3 * D, D)
        sd[b + "attn.in_proj_bias"] = bias(3 * D)
        linear(b + "attn.out_proj.", D, D, 0.5)
        norm(b + "ln_1.", D)
        linear(b + "mlp.c_fc.", 4 * D, D)
        linear(b + "mlp.c_proj.", D, 4 * D, 0.5)
        norm(b + "ln_2.", D)
    norm(v + "ln_post.", D)
    for i in range(clip_text_layers):                       # CLIP's text tower: in the checkpoint, never run
        b = f"{p}transformer.resblocks.{i}."
        sd[b + "attn.in_proj_weight"] = mat(3 * clip_text_width, clip_text_width)
        sd[b + "attn.in_proj_bias"] = bias(3 * clip_text_width)
        linear(b + "attn.out_proj.", clip_text_width, clip_text_width)
        norm(b + "ln_1.", clip_text_width)
        linear(b + "mlp.c_fc.", 4 * clip_text_width, clip_text_width)
        linear(b + "mlp.c_proj.", clip_text_width, 4 * clip_text_width)
        norm(b + "ln_2.", clip_text_width)
    sd[p + "token_embedding.weight"] = 0.02 * torch.randn(clip_vocab, clip_text_width, generator=g)
    norm(p + "ln_final.", clip_text_width)

    H = text_width

    def embeddings(p):
        sd[p + "position_ids"] = torch.arange(max_positions).expand((1, -1)).clone()
        sd[p + "word_embeddings.weight"] = 0.5 * torch.randn(V, H, generator=g)
        sd[p + "position_embeddings.weight"] = 0.3 * torch.randn(max_positions, H, generator=g)
        sd[p + "token_type_embeddings.weight"] = 0.3 * torch.randn(2, H, generator=g)
        norm(p + "LayerNorm.", H)

    def attention(p, kv_in):
        linear(p + "self.query.", H, H)
        linear(p + "self.key.", H, kv_in)
        linear(p + "self.value.", H, kv_in)
        linear(p + "output.dense.", H, H, 0.5)
        norm(p + "output.LayerNorm.", H)

    def ffn(p, name_i="intermediate.", name_o="output."):
        linear(p + name_i + "dense.", text_intermediate, H)
        linear(p + name_o + "dense.", H, text_intermediate, 0.5)
        norm(p + name_o + "LayerNorm.", H)

    def bert_layer(p, i, n_layers, cross_all):
        first_uni = n_layers - num_uni_layer
        if i == first_uni:                                  # BertLayer's own parameter precedes its children
            sd[p + "latents"] = torch.randn(NUM_LATENTS, H, generator=g)
        attention(p + "attention.", H)
        if cross_all or i >= first_uni:
            attention(p + "crossattention.", text_width)    # encoder_width = text width in the json
        ffn(p)
        if i >= first_uni:
            ffn(p, "intermediate_vision.", "output_vision.")

    embeddings("text_encoder.embeddings.")
    for i in range(text_encoder_layers):
        bert_layer(f"text_encoder.encoder.layer.{i}.", i, text_encoder_layers, cross_all=False)

    embeddings("fusion_encoder.embeddings.")
    for i in range(fusion_hidden_layers):
        q = f"fusion_encoder.encoder.layer.{i}."
        attention(q + "attention.", H)
        attention(q + "crossattention.", text_width)
        ffn(q)

    embeddings("text_decoder.bert.embeddings.")
    for i in range(decoder_layers):
        bert_layer(f"text_decoder.bert.encoder.layer.{i}.", i, decoder_layers, cross_all=True)
    c = "text_decoder.cls.predictions."
    sd[c + "bias"] = bias(V, 0.5)
    linear(c + "transform.dense.", H, H)
    norm(c + "transform.LayerNorm.", H)
    sd[c + "decoder.weight"] = sd["text_decoder.bert.embeddings.word_embeddings.weight"]   # tied
    sd[c + "decoder.bias"] = sd[c + "bias"]                                                 # tied

    if distill:                                         # init_distill registers the momentum models last
        for prefix in ("visual_encoder.", "text_encoder.", "fusion_encoder.", "text_decoder.", "visn_emb_norm."):
            for k in [k for k in sd if k.startswith(prefix)]:
                t = sd[k]
                m = prefix[:-1] + "_m." + k[len(prefix):]
                sd[m] = t + 0.1 * torch.randn(t.shape, generator=g) if t.is_floating_point() else t.clone()
    config = {"bert_config": f"configs/{BERT_JSON_NAME}", "clip_name": "ViT-L-14", "eos": "[SEP]",
              "beam_size": beam_size, "image_res": image_res, "model_num_frames": num_frames,
              "test_num_frames": num_frames, "vision_width": vision_width, "min_length": min_length,
              "max_length": max_length, "use_checkpoint": False, "distill": distill}
    if task == "qa":
        config.update({"answer_list": "datasets/annotations_all/msrvtt_qa/train_ans2label.json", "k_test": 128,
                       "add_ocr": True})
    else:
        config["prompt"] = "a video of"
    torch.save({"model": sd, "config": config}, out / (QA_CHECKPOINT_NAME if task == "qa" else CHECKPOINT_NAME))
    return out


def make_tiny_mplug2_qa_checkpoint(out_dir, seed: int = 0, *, fusion_hidden_layers: int = 3, fusion_layers: int = 2,
                                   min_length: int = 1, max_length: int = 10, distill: bool = True, **kw) -> Path:
    """A tiny random VideoQA checkpoint directory (the official QA .pth layout); options as the caption one."""
    return make_tiny_mplug2_checkpoint(out_dir, seed, fusion_hidden_layers=fusion_hidden_layers,
                                       fusion_layers=fusion_layers, min_length=min_length, max_length=max_length,
                                       task="qa", distill=distill, **kw)
