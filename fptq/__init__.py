"""fptq: the reference implementation of FPTQ W4A8 post-training quantization.

``fptq.spec`` defines the math bit-exactly; ``fptq.reference`` is the FPTQ
algorithm on top of it in NumPy; ``fptq.backends`` holds the interchangeable
implementations.
"""

__version__ = "0.1.0"
