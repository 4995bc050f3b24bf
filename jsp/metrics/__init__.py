"""Segmentation quality and network cost."""
from jsp.metrics.cost import cost_report, count_macs, count_params, weight_mb
from jsp.metrics.segmentation import (SegmentationMeter, auc_from_histograms, confusion_matrix,
                                      metrics_from_confusion)

__all__ = ["cost_report", "count_macs", "count_params", "weight_mb", "SegmentationMeter",
           "auc_from_histograms", "confusion_matrix", "metrics_from_confusion"]
