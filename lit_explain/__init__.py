"""lit_explain: PyTorch Lightning training with explainability callbacks.

See the README for the recipes and ``lit_explain.explain`` for the explanation engine.
"""

__version__ = "0.1.0"
