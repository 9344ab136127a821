#!/usr/bin/env python3
"""Render, build and tag PyTorch+CUDA images: `python build.py --help`."""
import sys

from pytorch_cuda.cli import main

if __name__ == "__main__":
    sys.exit(main())
