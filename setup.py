"""Packaging for tf_dynhp. `pip install -e ".[cpu,tools,test]"` for development."""

from setuptools import find_packages, setup

setup(
    name="tf_dynhp",
    version="0.1.0",
    description="Dynamic Hard Pruning (DynHP) for Keras 3: train MLPs already compressed under a memory budget",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tf_dynhp", "tf_dynhp.*"]),
    # The fused gate kernel's source, compiled on first use (tf_dynhp/fused.py).
    package_data={"tf_dynhp": ["csrc/*.cc"]},
    python_requires=">=3.10",
    install_requires=["keras>=3.5", "numpy>=1.26"],
    extras_require={
        # TensorFlow is the Keras backend; pick the CPU wheel or the full one.
        "cpu": ["tensorflow-cpu>=2.16"],
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        "tools": ["absl-py>=1.0", "matplotlib>=3.7"],
        "deploy": ["numpy>=1.26", "ai-edge-litert>=1.0"],
        "ray": ["ray>=2.9"],
        "test": ["pytest>=7", "hypothesis>=6", "absl-py>=1.0", "matplotlib>=3.7", "ai-edge-litert>=1.0", "ray>=2.9"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
