"""The base/fine-tune diff: per-row change of tensors read from two checkpoints at once."""
