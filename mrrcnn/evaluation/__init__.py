"""Scoring detections against ground truth: COCO AP (all / huddled / isolated / touching / separate) and
instance matching."""

from .score import score

__all__ = ["score"]
