"""Regenerate ``images/matrix.json`` from the real metadata of torch wheels: a maintainer's tool.

It never runs in a build, so it lives outside ``pytorch_cuda`` (which must not import it); it reads
``pytorch_cuda.matrix`` for the file's schema. Every value in the matrix comes from an index or a
wheel, never from memory:

* the torch releases and their CPython tags: the simple API project page (PEP 691 JSON, or
  PEP 503 HTML for indexes such as https://download.pytorch.org/whl/cu121);
* the CUDA library pins: ``Requires-Dist`` of the wheel's core metadata (PEP 658, else the
  wheel's ``METADATA`` read by HTTP Range requests), evaluated for Linux x86_64. CUDA 13
  builds pin ``cuda-toolkit[...]`` instead of ``nvidia-*-cu12`` packages; that meta-package's
  own metadata is expanded for the requested extras;
* the GPU architectures: the string behind ``torch._C._cuda_getArchFlags()``, which is
  compiled into ``torch/lib/libtorch_python.so``; only that member is read, by Range requests;
* ``torch/version.py`` (also read by Range) cross-checks the CUDA version;
* the ``arm64`` key: the same three readings of the release's Linux aarch64 wheels on the same
  index (markers evaluated with ``platform_machine == "aarch64"``); ``null`` where those pin no
  NVIDIA package or do not exist, and an error where their CUDA is not the entry's;
* the drivers: ``images/cuda_drivers.json``, transcribed from NVIDIA's release notes: the driver
  of each CUDA release, and the floor of each CUDA major (minor version compatibility).

Modules: ``wheelmeta`` (HTTP, index pages, Range reads), ``pins`` (pure reading of metadata),
``crosschecks`` (what must agree), ``entries`` (one matrix entry per release), ``__main__`` (the
command line and the file). Run ``python -m tools.matrixgen --help``.
"""


class RefreshError(Exception):
    """The matrix could not be regenerated; the message says which release and why."""
