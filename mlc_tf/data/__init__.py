"""Re-ID datasets, the tf.data input pipeline and the PK sampler."""
