"""Measuring: classifier metrics, the exactness two-sample test, the benchmark, the model card."""
