"""The demo mPLUG-Owl3 that ships inside owl_cpp: a tiny model of the real architecture trained by us on the
synthetic shapes task of owl_cpp.demo (scenes.py, questions.py).

  config.py    its sizes, as an official-layout config.json
  model.py     a batched, trainable PyTorch version of the Owl3 240728 architecture, parameters under the
               official checkpoint names (checked against owl_export.owl3's reference in the tests)
  data.py      task samples -> token ids, labels and pixel views, through owl_cpp's own prompt building and
               image preprocessing, so training sees exactly what the runtime feeds
  train.py     `python -m owl_export.demo.train -o DIR`: tokenizer, training, evaluation, checkpoint, export
  evaluate.py  held-out exact match per question kind, through PyTorch or through the owl_cpp runtime
"""
