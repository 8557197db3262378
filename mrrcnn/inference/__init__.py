"""From an image (file or tensor) to detections, and what is written from them: COCO results, label images, overlays."""
