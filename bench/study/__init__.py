"""Running a study: preparation, the study loop, tuning, Pareto fronts, workers, claiming the
folder, records and transferability estimates."""
