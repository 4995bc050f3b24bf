"""jsp: compress segmentation networks by joint sparsity promotion and redundancy reduction."""

__version__ = "0.1.0"
