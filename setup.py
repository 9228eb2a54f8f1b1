"""Packaging for rcnn_det: ``pip install -e .`` (add ``[tests]`` for the test suite)."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements(name: str) -> list[str]:
    """Requirement lines of ``name`` without comments or blank lines."""
    lines = (HERE / name).read_text().splitlines()
    return [line.split('#')[0].strip() for line in lines if line.split('#')[0].strip()]


DEPLOY = ['onnx>=1.16', 'onnxruntime>=1.18']


def read_version() -> str:
    namespace: dict = {}
    exec((HERE / 'rcnn_det' / 'version.py').read_text(), namespace)
    return namespace['__version__']


setup(
    name='rcnn_det',
    version=read_version(),
    description='Config-driven object detection (Faster R-CNN, Mask R-CNN, Co-DETR) on plain PyTorch',
    long_description=(HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['rcnn_det', 'rcnn_det.*']),
    install_requires=read_requirements('requirements.txt'),
    # deploy: ONNX export (onnx) and inference of the exported files (onnxruntime); the tests
    # exercise both, so the tests extra includes them.
    extras_require={'deploy': DEPLOY, 'tests': ['pytest>=7', 'pytest-timeout', *DEPLOY]},
    license='Apache-2.0',
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
