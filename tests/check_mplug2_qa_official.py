"""One-off check of the VideoQA reference (owl_export/mplug2/qa_reference.py) against the official modules.

Not collected by pytest: it needs the official repository's models/ (modeling_mplug2.py, predictor.py,
tokenization_bert.py @ a46aa97) and transformers 4.x (4.30.2 works; 4.14.1 is what the repo pins) importable:

  python tests/check_mplug2_qa_official.py OFFICIAL_ROOT [EXTRA_SITE_DIR]

OFFICIAL_ROOT holds models/; EXTRA_SITE_DIR (optional) goes first on sys.path (a `pip install --target` with
transformers). MPLUG2 itself cannot be built offline (it loads CLIP and bert-large-uncased weights), so this
builds its three BERT stacks from the tiny checkpoint's json as module_setting does, loads the checkpoint's
sub-dicts strictly, and runs the eval branch of MPLUG2.forward (models/model_videoqa_mplug.py) line for line on
video tokens from the reference's video encoder (checked against the official video encoder for captioning).
The questions go through the official BertTokenizer with padding='longest', as video_qa_mplug2.evaluate does.
Compared: the memory [video ; fused question], and the beam-search answer ids and score (TextGenerator, beam 5,
min 1, max 10), for the published stride (1000) and for stride 1 (the merged fusion layer).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch


def main(official: str, extra: str | None = None) -> int:
    if extra:
        sys.path.insert(0, extra)
    sys.path.insert(0, official)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))
    import models.modeling_mplug2 as M
    from models.predictor import TextGenerator
    from models.tokenization_bert import BertTokenizer
    from owl_export.mplug2.fixtures import make_tiny_mplug2_qa_checkpoint
    from owl_export.mplug2.qa_reference import Mplug2QAReference, pre_question

    questions = ["What is the man doing?", "who is singing a song", "How many people are there in the video?",
                 "what-is on the table/desk"]
    worst = 0.0
    for stride in (1000, 1):
        with tempfile.TemporaryDirectory() as tmp:
            d = make_tiny_mplug2_qa_checkpoint(Path(tmp) / "qa", seed=3 + stride, stride_layer=stride)
            ref = Mplug2QAReference.from_dir(d)
            sd = ref.w
            bert_json = d / "config_bert_large_text.json"
            enc_cfg = M.BertConfig.from_json_file(str(bert_json))
            enc_cfg.num_hidden_layers = enc_cfg.text_encoder_layers
            fus_cfg = M.BertConfig.from_json_file(str(bert_json))
            dec_cfg = M.BertConfig.from_json_file(str(bert_json))
            dec_cfg.add_cross_attention = True
            dec_cfg.num_hidden_layers = dec_cfg.text_decode_layers
            text_encoder = M.BertModel(enc_cfg, add_pooling_layer=False)
            fusion_encoder = M.FusionModel(fus_cfg, add_pooling_layer=False)
            text_decoder = M.BertLMHeadModel(dec_cfg)
            for mod, prefix in ((text_encoder, "text_encoder."), (fusion_encoder, "fusion_encoder."),
                                (text_decoder, "text_decoder.")):
                sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
                mod.load_state_dict(sub, strict=True)
                mod.eval()
            gen = TextGenerator({"beam_size": ref.cfg.beam_size, "min_length": ref.cfg.min_length,
                                 "max_length": ref.cfg.max_length}, text_decoder)
            tok = BertTokenizer(str(d / "vocab.txt"))
            for qi, question in enumerate(questions):
                g = torch.Generator().manual_seed(qi)
                video = ref.encode_video(torch.randn(ref.cfg.num_frames, 3, 224, 224, generator=g))
                with torch.no_grad():
                    image_embeds = video[None]
                    image_atts = torch.ones(image_embeds.size()[:-1], dtype=torch.long)
                    q = tok([pre_question(question)], padding="longest", return_tensors="pt")
                    text_embeds = text_encoder(q.input_ids, attention_mask=q.attention_mask,
                                               return_dict=True).last_hidden_state
                    image_output, question_output = fusion_encoder(
                        encoder_embeds=text_embeds, attention_mask=q.attention_mask,
                        encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts, return_dict=False)
                    question_output = torch.cat([image_output, question_output], 1)
                    merge = torch.cat([image_atts, q.attention_mask], 1)
                    topk_ids, topk_scores = gen.translate_batch([question_output, merge])
                ids = ref.question_ids(question)
                assert q.input_ids[0].tolist() == ids, (q.input_ids[0].tolist(), ids)
                mem = ref.memory(video, ids)
                err = float((mem - question_output[0]).abs().max() / question_output.abs().max())
                worst = max(worst, err)
                got_ids, got_score = ref.answer_ids(mem, cache=False)
                got_cached, _ = ref.answer_ids(mem, cache=True)
                want_ids, want_score = topk_ids[0][0].tolist(), float(topk_scores[0][0])
                ok = got_ids == want_ids == got_cached and abs(got_score - want_score) < 1e-4
                print(json.dumps({"stride": stride, "question": question, "ids": ids, "memory_rel_err": err,
                                  "answer": want_ids, "ours": got_ids, "score": [want_score, got_score],
                                  "ok": ok}))
                if not ok or err > 1e-5:
                    return 1
    print(f"all equal; worst memory relative error {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
