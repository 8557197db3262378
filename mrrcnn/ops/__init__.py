"""Shape-aware RoIAlign (paper section 3.1) and its plain-RoIAlign and FPN forms."""

from .poolers import MultiScaleShapeAwareRoIAlign
from .shape_aware_roi_align import ShapeAwareRoIAlign, roi_align, shape_aware_roi_align

__all__ = ["MultiScaleShapeAwareRoIAlign", "ShapeAwareRoIAlign", "roi_align", "shape_aware_roi_align"]
