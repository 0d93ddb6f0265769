"""File output and input that must not lose or silently change data.

* :mod:`fptq.io.atomic` -- directories written atomically, replaced all-or-nothing,
  SIGTERM handled like Ctrl-C, permissions that follow the umask;
* :mod:`fptq.io.outputs` -- output paths checked before any expensive work starts (never an input,
  never a file fptq did not write);
* :mod:`fptq.io.reading` -- bounded reads of config and text files (regular files only, size limits);
* :mod:`fptq.io.tensorfile` -- a strict, deterministic safetensors reader/writer
  with SHA-256 digests of every tensor.
"""
