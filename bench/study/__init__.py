"""Running a study: preparation, methods (a strategy or baseline as something to tune), the
study loop, tuning, Pareto fronts, workers, claiming the folder, records and estimates."""
