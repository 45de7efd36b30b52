"""Install skd. No torch import here: the build must not pull a CUDA torch into an isolated env.

The C++/CUDA extension in libs/ is built by ninja on first use (or `python libs/build.py`),
not by this file, so installing never needs a compiler.
"""
from setuptools import find_packages, setup

setup(
    name="skd",
    version="0.1.0",
    description="Structured Knowledge Distillation for Dense Prediction, on modern PyTorch",
    python_requires=">=3.10",
    packages=find_packages(include=["skd", "skd.*"]),
    package_data={"skd": ["../libs/src/*"]},
    install_requires=[
        "torch>=2.1",
        "numpy",
        "opencv-python-headless",
        "pillow",
        "tqdm",
        "ninja",
    ],
    # Optional features; `pip install -e .` needs none of them (docs/tools.md).
    extras_require={
        "test": ["pytest"],
        "config": ["pyyaml"],                           # --config FILE.yaml (JSON needs nothing)
        "tensorboard": ["tensorboard"],                 # --tensorboard
        "plot": ["matplotlib"],                         # skd-plot
        "onnx": ["onnx", "onnxscript", "onnxruntime"],  # skd-export --format onnx and its check
    },
    entry_points={
        "console_scripts": [
            "skd-train=skd.train:main",
            "skd-eval=skd.evaluate:main",
            "skd-test=skd.predict:main",
            "skd-make-synthetic=skd.data.synthetic:main",
            "skd-plot=skd.plot:main",
            "skd-profile=skd.profile:main",
            "skd-export=skd.export:main",
        ]
    },
)
