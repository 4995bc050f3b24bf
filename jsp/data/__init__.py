"""Datasets: loaders return SegmentationData; patches.py turns it into tensors."""
from jsp.data.base import Sample, SegmentationData
from jsp.data.drive import load_drive
from jsp.data.patches import PatchDataset, Prepared, prepare
from jsp.data.synthetic import make_synthetic

__all__ = ["Sample", "SegmentationData", "load_drive", "make_synthetic", "PatchDataset", "Prepared", "prepare"]
