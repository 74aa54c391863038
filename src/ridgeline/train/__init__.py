"""Training loops: uptraining after architecture transforms."""
