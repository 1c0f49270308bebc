"""Helpers shared by the pipeline's scripts: CSV conventions, BEIR reading, logging and model building."""
