"""The LayerSkip training recipe: layer dropout + early-exit loss (Elhoushi et al. 2024, section 3)."""
