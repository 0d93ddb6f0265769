"""fptq: the reference implementation of FPTQ W4A8 post-training quantization.

``fptq.spec`` defines the math bit-exactly; ``fptq.reference`` is the FPTQ
algorithm on top of it in NumPy; ``fptq.backends`` holds the interchangeable
implementations.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # ``fptq.load`` without importing torch/transformers at ``import fptq`` time
    if name == "load":
        from .generate import load

        return load
    raise AttributeError(f"module 'fptq' has no attribute {name!r}")
