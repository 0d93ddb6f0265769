"""fptq: the reference implementation of FPTQ W4A8 post-training quantization.

``fptq.spec`` defines the math bit-exactly; ``fptq.reference`` is the FPTQ
algorithm on top of it in NumPy; ``fptq.backends`` holds the interchangeable
implementations; ``fptq.defaults`` what runs when a caller names nothing.

``fptq.load(model=None, backend=None)`` (:func:`fptq.generate.load`) gives a
transformers model and its tokenizer; without a backend a W4A8 checkpoint runs on
the fastest measured CPU backend (:func:`fptq.defaults.default_backend`). It is
imported on first use, so ``import fptq`` loads neither torch nor transformers.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # ``fptq.load`` without importing torch/transformers at ``import fptq`` time
    if name == "load":
        from .generate import load

        return load
    raise AttributeError(f"module 'fptq' has no attribute {name!r}")
