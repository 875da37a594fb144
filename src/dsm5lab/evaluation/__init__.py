"""Evaluation: evidence metrics, the report's views and the evaluate stage (core metrics: dsm5lab.metrics)."""
