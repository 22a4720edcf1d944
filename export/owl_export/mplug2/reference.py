"""mPLUG-2 video captioning in plain PyTorch: the oracle the runtime is tested against (docs/owl2.md PART D).

  encode_video(frames [T,3,S,S])  -> video tokens [1 + T*grid^2, text width]: the video ViT (per-frame
                                     attention, local temporal convolutions), ln_post, [visn_fc +
                                     visn_layer_norm], the universal layers, visn_emb_norm(video + out)
  decoder_logits(video, ids)      -> [len(ids), V]: the 12-layer BERT decoder (causal self-attention,
                                     cross-attention to the video, tied MLM head); cache=True runs token by token
                                     over a K/V cache (cross K/V computed once), cache=False re-runs the whole
                                     prefix as the official predictor does
  greedy(video, max_len)          -> ids after [CLS]
  beam_search(video)              -> (ids incl. [CLS], score) of predictor.py's _fast_translate_batch, with its
                                     quirks: log(softmax), eos blocked by -1e20 before min_length, GNMT penalty
                                     ((5 + step + 1) / 6)^0.6 divided in and multiplied back out, every beam that
                                     emits [SEP] recorded (and kept alive), stop when the top beam ends
  caption(frames)                 -> text as video_caption_mplug2.evaluation produces it

Everything runs at batch 1 (beams are the batch) in the weights' dtype (float32) unless dtype= says otherwise.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import CLIP_MEAN, CLIP_STD, DECODER, TEXT_ENCODER, VIDEO, Mplug2Config, load_checkpoint
from .tokenizer import BertWordPiece

NEG_MASK = -10000.0          # get_extended_attention_mask: (1 - mask) * -10000


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def _act(name):
    if name == "gelu":
        return lambda x: F.gelu(x)          # transformers ACT2FN["gelu"]: the exact erf GELU
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"unsupported hidden_act {name!r}")


def sample_frame_indices(num_video_frames: int, num_frames: int = 16) -> list[int]:
    """'middle' sampling: the middle frame of each of num_frames equal slices (docs/owl2.md PART D)."""
    edges = [round(i * num_video_frames / num_frames) for i in range(num_frames + 1)]
    return [(edges[i] + edges[i + 1] - 1) // 2 for i in range(num_frames)]


def preprocess_frames(frames_uint8: torch.Tensor, size: int = 224) -> torch.Tensor:
    """[T,H,W,3] uint8 -> [T,3,size,size]: nearest-neighbour resize (F.interpolate's default), /255, CLIP norm."""
    x = frames_uint8.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="nearest") / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class Mplug2CaptionReference:
    def __init__(self, sd: dict, cfg: Mplug2Config, tokenizer: BertWordPiece | None = None,
                 dtype: torch.dtype = torch.float32):
        self.cfg, self.tok, self.dtype = cfg, tokenizer, dtype
        self.w = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
        self.act = _act(cfg.hidden_act)
        # load_state_dict copies both tied keys into one tensor; the later one (cls.predictions.decoder.*) wins
        self.head_w = self.w[DECODER + "cls.predictions.decoder.weight"]
        self.head_b = self.w.get(DECODER + "cls.predictions.decoder.bias", self.w[DECODER + "cls.predictions.bias"])
        self.word_emb = self.head_w

    @classmethod
    def from_dir(cls, ckpt_dir: str | Path, dtype: torch.dtype = torch.float32) -> "Mplug2CaptionReference":
        sd, cfg = load_checkpoint(ckpt_dir)
        vocab = Path(ckpt_dir) / "vocab.txt"
        tok = BertWordPiece.from_file(vocab) if vocab.is_file() else None
        return cls(sd, cfg, tok, dtype)

    # ----------------------------------------------------------------------------------------- video
    def _ln(self, x, p, eps):
        # the normalised shape from the weight as plain ints: x.shape would be traced as a graph value, which
        # the ONNX exporter cannot turn into LayerNormalization (mplug2/onnx_export.py traces this code)
        w = self.w[p + "weight"]
        return F.layer_norm(x, (int(w.shape[0]),), w, self.w[p + "bias"], eps)

    def _lin(self, x, p):
        return F.linear(x, self.w[p + "weight"], self.w.get(p + "bias"))

    def local_temporal(self, x, p):
        """LocalTemporal over patches x [T, L, C]: LN -> 1x1x1 down -> depthwise (3,1,1) conv over T (zero
        padded) -> QuickGELU -> 1x1x1 up. Returns the residual branch [T, L, C]."""
        w = self.w
        h = self._ln(x, p + "ln.", 1e-5)
        h = F.linear(h, w[p + "down_proj.weight"].flatten(1), w[p + "down_proj.bias"])
        k = w[p + "conv.weight"].reshape(-1, 3)                     # [Cb, 3]: taps for t-1, t, t+1
        pad = F.pad(h, (0, 0, 0, 0, 1, 1))                          # zero frames before and after
        h = pad[:-2] * k[:, 0] + pad[1:-1] * k[:, 1] + pad[2:] * k[:, 2] + w[p + "conv.bias"]
        h = quick_gelu(h)
        return F.linear(h, w[p + "up_proj.weight"].flatten(1), w[p + "up_proj.bias"])

    def frame_attention(self, x, p):
        """nn.MultiheadAttention over each frame on its own; x [T, N, C]."""
        T, N, C = x.shape
        nh = self.cfg.vision_heads
        qkv = F.linear(x, self.w[p + "in_proj_weight"], self.w[p + "in_proj_bias"])
        q, k, v = qkv.view(T, N, 3, nh, C // nh).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)
        return F.linear(o.transpose(1, 2).reshape(T, N, C), self.w[p + "out_proj.weight"],
                        self.w[p + "out_proj.bias"])

    def video_block(self, x, i):
        p = f"{VIDEO}transformer.resblocks.{i}."
        x = torch.cat([x[:, :1], x[:, 1:] + self.local_temporal(x[:, 1:], p + "lmhra1.")], 1)
        x = x + self.frame_attention(self._ln(x, p + "ln_1.", 1e-5), p + "attn.")
        x = torch.cat([x[:, :1], x[:, 1:] + self.local_temporal(x[:, 1:], p + "lmhra2.")], 1)
        h = self._ln(x, p + "ln_2.", 1e-5)
        h = self._lin(quick_gelu(self._lin(h, p + "mlp.c_fc.")), p + "mlp.c_proj.")
        return x + h

    def video_vit(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [T,3,S,S] (normalised) -> [1 + T*grid^2, vision width] after ln_post."""
        w, cfg = self.w, self.cfg
        frames = frames.to(self.dtype)
        conv = w[VIDEO + "conv1.weight"][:, :, 0]                   # Conv3d (1,p,p) = a Conv2d per frame
        x = F.conv2d(frames, conv, stride=cfg.patch_size)           # [T, C, g, g]
        T, C = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)                            # [T, g*g, C] row-major patches
        cls = w[VIDEO + "class_embedding"].expand(T, 1, C)
        x = torch.cat([cls, x], 1) + w[VIDEO + "positional_embedding"]
        x = self._ln(x, VIDEO + "ln_pre.", 1e-5)
        for i in range(cfg.vision_layers):
            x = self.video_block(x, i)
        x = torch.cat([x[:, 0].mean(0, keepdim=True), x[:, 1:].reshape(-1, C)], 0)
        return self._ln(x, VIDEO + "ln_post.", 1e-5)

    def bert_attention(self, x, p, kv=None, mask=None):
        """BertAttention: multi-head attention of x over kv (self when None), + residual, LayerNorm."""
        nh, eps = self.cfg.text_heads, self.cfg.text_eps
        src = x if kv is None else kv
        q = self._heads(self._lin(x, p + "self.query."))
        k = self._heads(self._lin(src, p + "self.key."))
        v = self._heads(self._lin(src, p + "self.value."))
        o = self._attend(q, k, v, mask)
        return self._ln(self._lin(o, p + "output.dense.") + x, p + "output.LayerNorm.", eps)

    def _heads(self, x):                                            # [..., n, H] -> [..., nh, n, d]
        nh = self.cfg.text_heads
        return x.view(*x.shape[:-1], nh, x.shape[-1] // nh).transpose(-2, -3)

    def _attend(self, q, k, v, mask=None):
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if mask is not None:
            s = s + mask
        o = torch.matmul(torch.softmax(s, -1), v).transpose(-2, -3)
        return o.reshape(*o.shape[:-2], -1)

    def ffn(self, x, p):
        h = self.act(self._lin(x, p + "intermediate.dense."))
        return self._ln(self._lin(h, p + "output.dense.") + x, p + "output.LayerNorm.", self.cfg.text_eps)

    def universal(self, video: torch.Tensor) -> torch.Tensor:
        """BertEncoder mode 'v_module' (layers L-u .. L-1): the latents attend to the video, the last layer has
        the video attend to the latents; returns that layer's output (before the residual + visn_emb_norm)."""
        layers = self.cfg.universal_layers
        h = self.w[f"{TEXT_ENCODER}encoder.layer.{layers[0]}.latents"]
        for i in layers[:-1]:
            p = f"{TEXT_ENCODER}encoder.layer.{i}."
            h = self.ffn(self.bert_attention(self.bert_attention(h, p + "attention."), p + "crossattention.",
                                             kv=video), p)
        p = f"{TEXT_ENCODER}encoder.layer.{layers[-1]}."
        return self.ffn(self.bert_attention(self.bert_attention(video, p + "attention."), p + "crossattention.",
                                            kv=h), p)

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.video_vit(frames)
        if self.cfg.has_visn_fc:
            x = self._ln(self._lin(x, "visn_fc."), "visn_layer_norm.", 1e-12)
        return self._ln(x + self.universal(x), "visn_emb_norm.", 1e-12)

    # --------------------------------------------------------------------------------------- decoder
    def _dl(self, i):
        return f"{DECODER}bert.encoder.layer.{i}."

    def embed(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """ids [B, n] at positions start.. -> [B, n, H]: word + token type 0 + position, LayerNorm."""
        p = DECODER + "bert.embeddings."
        n = ids.shape[-1]
        x = (F.embedding(ids, self.word_emb) + self.w[p + "token_type_embeddings.weight"][0]
             + self.w[p + "position_embeddings.weight"][start:start + n])
        return self._ln(x, p + "LayerNorm.", self.cfg.text_eps)

    def head(self, h):
        p = DECODER + "cls.predictions."
        h = self._ln(self.act(self._lin(h, p + "transform.dense.")), p + "transform.LayerNorm.", self.cfg.text_eps)
        return F.linear(h, self.head_w, self.head_b)

    def cross_kv(self, video: torch.Tensor):
        """Per decoder layer, the cross-attention K and V over the video [nh, N, d]: computed once per video."""
        out = []
        for i in range(self.cfg.decoder_layers):
            p = self._dl(i) + "crossattention.self."
            out.append((self._heads(self._lin(video, p + "key.")), self._heads(self._lin(video, p + "value."))))
        return out

    def _decoder_layer(self, x, i, self_k, self_v, cross, mask):
        p = self._dl(i)
        a = p + "attention."
        q = self._heads(self._lin(x, a + "self.query."))
        o = self._attend(q, self_k, self_v, mask)
        x = self._ln(self._lin(o, a + "output.dense.") + x, a + "output.LayerNorm.", self.cfg.text_eps)
        c = p + "crossattention."
        q = self._heads(self._lin(x, c + "self.query."))
        o = self._attend(q, cross[0], cross[1])
        x = self._ln(self._lin(o, c + "output.dense.") + x, c + "output.LayerNorm.", self.cfg.text_eps)
        return self.ffn(x, p)

    @torch.no_grad()
    def decoder_full(self, ids: torch.Tensor, cross) -> torch.Tensor:
        """The official path: the whole prefix ids [B, n] at once, causal mask of -10000 -> logits [B, n, V]."""
        n = ids.shape[-1]
        mask = (1.0 - torch.ones(n, n).tril()).to(self.dtype) * NEG_MASK
        x = self.embed(ids, 0)
        for i in range(self.cfg.decoder_layers):
            a = self._dl(i) + "attention.self."
            k, v = self._heads(self._lin(x, a + "key.")), self._heads(self._lin(x, a + "value."))
            x = self._decoder_layer(x, i, k, v, cross[i], mask)
        return self.head(x)

    @torch.no_grad()
    def decoder_step(self, ids: torch.Tensor, cross, cache: list | None):
        """New tokens ids [B, m] on top of cache (per layer (K, V) [B, nh, t, d], or None) -> (logits [B, m, V],
        cache). Within the new tokens the mask is causal; all cached positions are visible."""
        t = 0 if cache is None else cache[0][0].shape[-2]
        m = ids.shape[-1]
        mask = None
        if m > 1:
            mask = torch.cat([torch.zeros(m, t), (1.0 - torch.ones(m, m).tril()) * NEG_MASK], 1).to(self.dtype)
        x = self.embed(ids, t)
        new = []
        for i in range(self.cfg.decoder_layers):
            a = self._dl(i) + "attention.self."
            k, v = self._heads(self._lin(x, a + "key.")), self._heads(self._lin(x, a + "value."))
            if cache is not None:
                k, v = torch.cat([cache[i][0], k], -2), torch.cat([cache[i][1], v], -2)
            new.append((k, v))
            x = self._decoder_layer(x, i, k, v, cross[i], mask)
        return self.head(x), new

    @torch.no_grad()
    def decoder_logits(self, video: torch.Tensor, ids, cache: bool = True) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long).view(1, -1)
        cross = self.cross_kv(video)
        if not cache:
            return self.decoder_full(ids, cross)[0]
        out, kv = [], None
        for j in range(ids.shape[1]):
            logits, kv = self.decoder_step(ids[:, j:j + 1], cross, kv)
            out.append(logits[0, 0])
        return torch.stack(out)

    @torch.no_grad()
    def greedy(self, video: torch.Tensor, max_len: int = 20, cache: bool = True, stop_at_eos: bool = True):
        cfg = self.cfg
        cross = self.cross_kv(video)
        ids, kv, out = torch.tensor([[cfg.bos_id]]), None, []
        for _ in range(max_len):
            if cache:
                logits, kv = self.decoder_step(ids[:, -1:], cross, kv)
            else:
                logits = self.decoder_full(ids, cross)
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
            if stop_at_eos and nxt == cfg.eos_id:
                break
        return out

    @torch.no_grad()
    def beam_search(self, video: torch.Tensor, cache: bool = True, beam_size: int | None = None,
                    min_length: int | None = None, max_length: int | None = None, return_all: bool = False):
        """predictor.TextGenerator._fast_translate_batch at batch 1 over this decoder (cache=False re-runs the
        prefix as the official code does). Returns (ids with the leading [CLS], score) of the best recorded
        hypothesis; return_all=True gives the sorted list of (score, ids) of the first beam_size."""
        cfg = self.cfg
        B = beam_size or cfg.beam_size
        cross = [(k.expand(B, *k.shape), v.expand(B, *v.shape)) for k, v in self.cross_kv(video)]
        state = {"kv": None}

        def step(alive, parents):
            if not cache:
                return self.decoder_full(alive, cross)[:, -1, :]
            if parents is not None:
                state["kv"] = [(k.index_select(0, parents), v.index_select(0, parents)) for k, v in state["kv"]]
            logits, state["kv"] = self.decoder_step(alive[:, -1:], cross, state["kv"])
            return logits[:, -1, :]

        return predictor_beam_search(step, cfg.bos_id, cfg.eos_id, B,
                                     cfg.min_length if min_length is None else min_length,
                                     max_length or cfg.max_length, return_all)

    @torch.no_grad()
    def caption(self, frames: torch.Tensor, cache: bool = True) -> str:
        if self.tok is None:
            raise ValueError("no vocab.txt: cannot decode")
        ids, _ = self.beam_search(self.encode_video(frames), cache=cache)
        return self.tok.caption_text(ids, self.cfg.prompt)


@torch.no_grad()
def predictor_beam_search(step, bos_id: int, eos_id: int, beam_size: int = 5, min_length: int = 4,
                          max_length: int = 20, return_all: bool = False, alpha: float = 0.6):
    """predictor.py _fast_translate_batch at batch 1, float op for float op. step(alive [B, n], parents [B] or
    None) -> next-token logits [B, V] (parents: which previous row each row of alive continues, for a cache).

    - scores are log(softmax(logits)) (not log_softmax); before step min_length [SEP] gets -1e20;
    - penalty ((5 + step + 1) / 6) ** alpha; the top-k runs on (log_probs + beam score) / penalty over all
      beams x vocabulary, and the beam score kept is that value * penalty again;
    - a beam whose new token is [SEP] is recorded as a hypothesis (score = the penalised value) but stays alive
      and keeps being extended; when the top beam emits [SEP], or at max_length, every beam is recorded and the
      search ends; the answer is the best recorded hypothesis (Python's stable sort, descending), which may be
      one that finished steps earlier.
    """
    B = beam_size
    alive = torch.full((B, 1), bos_id, dtype=torch.long)
    topk_log_probs = torch.tensor([0.0] + [float("-inf")] * (B - 1))
    hyps, parents = [], None
    for t in range(max_length):
        logits = step(alive, parents).float()
        V = logits.shape[-1]
        log_probs = torch.log(torch.softmax(logits, dim=-1))
        if t < min_length:
            log_probs[:, eos_id] = -1e20
        penalty = ((5.0 + (t + 1)) / 6.0) ** alpha
        log_probs += topk_log_probs.view(-1).unsqueeze(1)
        curr = (log_probs / penalty).reshape(-1, B * V)
        topk_scores, topk_ids = curr.topk(B, dim=-1)
        topk_log_probs = topk_scores * penalty
        parents = (topk_ids // V).view(-1)
        tok = topk_ids.fmod(V).view(-1)
        alive = torch.cat([alive.index_select(0, parents), tok.view(-1, 1)], -1)
        finished = tok.eq(eos_id)
        if t + 1 == max_length:
            finished.fill_(True)
        end = bool(finished[0])
        if finished.any():
            if end:
                finished.fill_(True)
            for j in finished.nonzero().view(-1).tolist():
                hyps.append((float(topk_scores[0, j]), alive[j].tolist()))
            if end:
                best = sorted(hyps, key=lambda h: h[0], reverse=True)[:B]
                return best if return_all else (best[0][1], best[0][0])
    raise AssertionError("unreachable: the last step finishes every beam")
