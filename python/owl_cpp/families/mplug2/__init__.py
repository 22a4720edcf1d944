"""mPLUG-2 (docs/owl2.md PART D): video preprocessing, the model."""
