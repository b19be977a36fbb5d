"""Self-paced clustering: k-reciprocal Jaccard distance, DBSCAN / k-means, pseudo labels."""

from mlc_tf.clustering.pseudo_labels import assign_pseudo_labels

__all__ = ["assign_pseudo_labels"]
