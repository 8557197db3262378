"""Data: COCO-format datasets, detection transforms, the synthetic huddled-instance benchmark, and instance
label images converted to COCO."""

from .coco import CocoDetection, collate_fn
from .huddle import HUDDLE_IOU, huddled, huddled_xywh, most_huddled
from .labels import convert_label_images
from .synthetic import CLASSES, make_synthetic
from .transforms import Compose, RandomCrop, RandomHorizontalFlip

__all__ = [
    "CLASSES",
    "HUDDLE_IOU",
    "CocoDetection",
    "Compose",
    "RandomCrop",
    "RandomHorizontalFlip",
    "collate_fn",
    "convert_label_images",
    "huddled",
    "huddled_xywh",
    "make_synthetic",
    "most_huddled",
]
