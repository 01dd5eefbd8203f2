"""Sequence-mixing kernels: each op is a package ``<op>/`` with a plain-PyTorch ``ref.py``
(the readable, differentiable definition) and, later, a ``triton.py`` kernel tested against it.

Imports nothing else from evalkit.
"""
