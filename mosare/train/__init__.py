"""Training: folds and missing-modality scenarios, the training loop with validation-based selection, metrics,
and the experiment runner behind ``mosare experiment``."""
