"""Hyperparameter optimisation: search space, study, trials, reports, promote."""
