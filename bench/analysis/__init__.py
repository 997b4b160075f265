"""What a study folder says: statistics, transferability estimators, the report and its
diagnostics, source choice, plots. Imports neither torch nor Hydra (``transfer-bench report``
runs with the analysis dependencies alone)."""
