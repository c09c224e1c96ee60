"""Multitask Prompt Tuning (MPT) on Ray, tracked in MLflow."""
