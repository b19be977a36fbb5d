"""mlc_tf: unsupervised person re-ID by Multi-label Learning guided self-paced Clustering."""

__version__ = "0.1.0"
