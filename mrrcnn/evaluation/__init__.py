"""Scoring detections against ground truth: COCO AP (all / huddled / isolated / touching) and instance matching."""
