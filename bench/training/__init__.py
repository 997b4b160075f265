"""Training one fit: the Lightning module and loop, strategies, LR schedules, source
pretraining, methods (a strategy or baseline as something to tune), the baseline, the protocol."""
