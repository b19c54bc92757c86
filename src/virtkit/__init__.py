"""virtkit: a virtualization manager that drives QEMU directly.

The package is layered (see docs/architecture.md): ``model`` holds typed specs,
``qemu`` turns them into processes, ``runtime`` supervises those processes,
``service`` is the one command API, and ``api``/``cli``/``web`` are front ends.
"""

__version__ = "0.1.0"
