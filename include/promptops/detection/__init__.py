"""Deciding what is wrong: threshold rules and their configuration (:mod:`.rules`,
:mod:`.thresholds`), learned baselines (:mod:`.baselines`), the anomaly model
(:mod:`.anomaly_model`) and root-cause localisation (:mod:`.root_cause`). Produces
findings; sends nothing.
"""
