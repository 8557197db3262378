"""Data: COCO-format datasets, detection transforms and the synthetic huddled-instance benchmark."""

from .coco import CocoDetection, collate_fn
from .huddle import HUDDLE_IOU, huddled
from .synthetic import CLASSES, make_synthetic
from .transforms import Compose, RandomHorizontalFlip

__all__ = [
    "CLASSES",
    "HUDDLE_IOU",
    "CocoDetection",
    "Compose",
    "RandomHorizontalFlip",
    "collate_fn",
    "huddled",
    "make_synthetic",
]
