"""Datasets: loaders return SegmentationData; patches.py turns it into tensors."""
from jsp.data.base import Sample, SegmentationData
from jsp.data.drive import load_drive
from jsp.data.multiclass import load_camvid, load_folder
from jsp.data.patches import PatchDataset, Prepared, prepare
from jsp.data.retina import load_chase_db1, load_hrf, load_stare
from jsp.data.synthetic import make_synthetic

__all__ = ["Sample", "SegmentationData", "load_drive", "load_chase_db1", "load_stare", "load_hrf", "load_camvid",
           "load_folder", "make_synthetic", "PatchDataset", "Prepared", "prepare"]
