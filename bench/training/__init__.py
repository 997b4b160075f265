"""Training one fit: the Lightning module and loop, strategies, LR schedules, source
pretraining, the baseline, the protocol. Knows nothing of Hydra's composed config."""
