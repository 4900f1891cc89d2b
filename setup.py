"""Packaging for tf_dynhp: everything is in pyproject.toml. This shim stays for tools
that still call setup.py; `pip install -e ".[cpu,tools,test]"` for development."""

from setuptools import setup

setup()
