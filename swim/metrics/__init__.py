"""Metrics below both the model and evaluation: the attention-grounding scores.

They build on ``swim.losses`` (pairing, normalisation, resizing) and on the batch contract, so the
arrows stay one-directional: data -> model -> metrics -> losses, with eval and train above.
"""
