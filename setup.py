"""Build the Cython fast path; everything else is declared in pyproject.toml."""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

# Bounds are checked by hand in the codec (every read is length-checked
# against the frame), so Cython's own checks would only cost time.
DIRECTIVES = {
    "language_level": "3",
    "boundscheck": False,
    "wraparound": False,
    "initializedcheck": False,
    "cdivision": True,
    "embedsignature": True,
}

MODULES = sorted(p.stem for p in Path("fastpath").glob("*.pyx"))

extensions = [
    Extension(
        f"fastpath.{name}",
        [f"fastpath/{name}.pyx"],
        include_dirs=["fastpath"],
        extra_compile_args=["-O3"],
    )
    for name in MODULES
]

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES))
