"""Development-side evaluation: the competition metric, scoring a submission, the timing projection and its report.

Never bundled: the Kaggle kernel (`inference/`) neither scores nor plots.
"""
