"""The three-head network, training, evaluation and export."""
