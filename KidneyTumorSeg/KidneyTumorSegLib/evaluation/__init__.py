"""Scoring predictions against reference labels: Dice and the KiTS19 metrics, per case and over folders."""
