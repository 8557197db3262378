"""Mask Refining R-CNN and Shape-aware RoIAlign on torchvision's Mask R-CNN."""

__version__ = "0.1.0"
