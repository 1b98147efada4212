"""Triton kernels, each beside a plain-torch reference that defines its math and serves as its oracle."""
