"""Hyperparameter tuning with Optuna: search spaces, studies, workers and their records.

``neqgen.commands.tune`` runs a study with these parts; each trial trains with the
regular training code.
"""
