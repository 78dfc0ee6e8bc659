"""Data: preprocessing, dataset layouts and splits, the slice cache, training datasets, augmentation, the phantom."""
