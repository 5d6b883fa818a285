"""Build the Kaggle submission: a dataset (runtime package, weights, vendored libraries, wheels) and a kernel.

`build_kernel.py` is the command line over this package:
    options.py          BuildOptions, BuildError and the Kaggle naming rules
    modules.py          which `inference` modules the kernel needs (import walk, forbidden imports), vendoring
    wheels.py           offline wheels (pip download or a folder) and their requirements.txt
    checks.py           the weights: manifest, hashes, every fold run in onnxruntime, opsets vs onnxruntime
    notebook.py         the notebook and its .py twin, from kernel_template.py
    build.py            build(): every check first, then dataset/ and kernel/ written through a staging folder
"""
from __future__ import annotations

from .build import BuildResult, build
from .options import BuildError, BuildOptions

__all__ = ["build", "BuildOptions", "BuildResult", "BuildError"]
