"""arena: train, export and serve Chatbot Arena preference classifiers (model_a / model_b / tie)."""

__version__ = "0.1.0"

LABELS = ("winner_model_a", "winner_model_b", "winner_tie")
"""Kaggle's probability columns, in the class order used everywhere: 0 = a wins, 1 = b wins, 2 = tie."""
