"""A reproducible study of vanishing gradients in deep fully-connected networks."""

from study import kernels

# Before anything can call MKL: a net's numbers must not depend on its group's memory layout.
kernels.request()
