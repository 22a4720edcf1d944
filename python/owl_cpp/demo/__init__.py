"""The demo model that ships inside the package, and the synthetic task it was trained on.

  scenes.py     random pictures of 1-3 coloured shapes in a 3x3 layout (Pillow only)
  questions.py  questions and answers about a scene, in several phrasings
  model_dir.py  where the shipped model directory is, and how "demo" / no model resolves to it
Training lives in owl_export.demo (it needs torch); nothing here does.
"""
