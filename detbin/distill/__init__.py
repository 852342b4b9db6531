"""Reusable distillation helpers: the FGFI and DeFeat masks, the masked imitation loss, adaptation convs."""
