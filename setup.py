"""cleaner-jax: CLEANER (self-purified trajectories via SAAR) for agentic RL in JAX/Flax."""

from setuptools import find_packages, setup

# Exact pins for reproducibility; jax/jaxlib/flax admit the next minor release because the GPU
# machines ship jax 0.11 on Python 3.12 and the code supports both.
RUNTIME = [
    "jax>=0.10.2,<0.12",
    "jaxlib>=0.10.2,<0.12",
    "flax>=0.12.8,<0.13",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "transformers==5.23.0",
    "tokenizers==0.23.3",
    "sentencepiece==0.2.3",
    "safetensors==0.8.0",
    "numpy>=2.0,<2.5",
    "absl-py==2.5.1",
    "ml-collections==1.1.0",
    "math-verify==0.9.0",
    "json-repair==0.64.5",
    "pyarrow==26.0.1",
    "tensorboardX==2.6.5",
    "matplotlib==3.11.2",
    "tqdm==4.70.1",
    "sympy==1.14.0",
    "scipy>=1.14,<2",  # study/stats.py (t and noncentral-t); jax requires it too
]

setup(
    name="cleaner-jax",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    # third_party ships too: its adapters import as `third_party.<name>` from any directory.
    packages=find_packages(
        include=["cleaner_jax", "cleaner_jax.*", "third_party", "third_party.*"]
    ),
    package_data={
        "cleaner_jax": ["saar/README.md", "agent/*.jinja"],
        "third_party.tunix_saar": ["README.md", "requirements.txt"],
    },
    install_requires=RUNTIME,
    extras_require={
        "test": [
            "pytest==9.2.0",
            "pytest-xdist==3.8.0",
            "pytest-timeout==2.4.0",
            "hypothesis==6.170.15",
            "chex==0.1.92",
            "ruff==0.17.6",
        ],
        # CPU wheel on these machines; any other spec pulls a multi-GB CUDA build.
        "torch": ["torch==2.13.0"],
    },
)
