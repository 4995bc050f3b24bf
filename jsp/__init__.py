"""jsp: compress segmentation networks by joint sparsity promotion and redundancy reduction."""
import os

# Nothing goes to the network at run time: albumentations otherwise asks PyPI for its latest
# version on import (seen on an offline GPU machine as a name-resolution warning per job).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
