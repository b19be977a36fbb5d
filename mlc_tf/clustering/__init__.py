"""Self-paced clustering: k-reciprocal Jaccard distance, DBSCAN / k-means, pseudo labels."""
