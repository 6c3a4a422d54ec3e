"""oialr-search: OIALR training and hyperparameter search."""

__version__ = "0.1.0"
