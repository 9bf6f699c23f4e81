"""Build the Cython kernels in ``_ext/`` as ``segstore._ext.*``."""

from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

SOURCES = sorted(Path("_ext").glob("*.pyx"))

extensions = [
    Extension(
        f"segstore._ext.{source.stem}",
        [str(source)],
        include_dirs=[numpy.get_include(), "_ext"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )
    for source in SOURCES
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
