"""muse_jax: Muse-style text-to-image models (VQGAN + masked transformers) in JAX/Flax."""
import setuptools

# Pinned for reproducibility: these are the versions the suite is run against.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "array-record==0.8.6",
    "ml-collections==1.1.0",
    # TFDS sources read TensorFlow datasets; the CPU build is enough for them.
    "tensorflow-cpu==2.21.0",
    # TensorBoard event files are written with its record format (muse_jax/metrics.py).
    "tensorboard==2.21.0",
    "tensorflow-datasets==4.9.10",
    "transformers==5.23.0",
    "safetensors==0.8.0",
    "einops==0.8.2",
    "pillow==13.0.0",
    "numpy==2.4.6",
    # 0.6.0, not 0.7.0: 0.7.0 registers its numpy casts and ufunc loops one by one against
    # every loop before (a linear search each), 0.7 s of CPU in every process that imports JAX,
    # 6 ms with 0.6.0 (benchmarks/startup.py). JAX 0.10.2 asks for >= 0.5.0.
    "ml-dtypes==0.6.0",
    "absl-py==2.5.1",
    "tqdm==4.70.1",
    # The demo's report: training curves (matplotlib) and its one-page HTML (Markdown).
    "matplotlib==3.10.7",
    "markdown==3.11.3",
    # T5 tokenizers (spiece.model) load through transformers with it.
    "sentencepiece==0.2.3",
]

EXTRAS_REQUIRE = {
    # TPU VMs: `pip install -e .[tpu]` (libtpu wheels come from Google's index, see launch/).
    "tpu": ["jax[tpu]==0.10.2"],
    # Test-only: PyTorch references (transformers / diffusers) and the runner.
    # torch==2.13.0 (CPU) is installed by the Makefile from the local wheel.
    # nbclient/nbformat/ipykernel run notebooks/muse_jax_colab.ipynb (tests/test_notebook.py).
    # diffusers (aMUSEd UVit2DModel / VQModel), lpips and pytorch-fid are the references that
    # imported and reimplemented networks are checked against; peft makes the aMUSEd LoRA
    # files that tests/test_amused_lora.py imports (transformers 5.23 needs peft >= 0.20).
    "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "nbclient==0.11.0", "nbformat==5.11.1",
             "ipykernel==7.4.0", "diffusers==0.42.1", "lpips==0.1.4", "pytorch-fid==0.3.0",
             "peft==0.21.2"],
    # benchmarks/: the PyTorch peers they compare against. muse-maskgit-pytorch (the
    # MaskGitTransformer of benchmarks/base_step.py) is not listed: its requirements pull
    # torchvision, whose PyPI wheels are CUDA builds pinned to another torch. Install it with
    #   pip install --no-deps muse-maskgit-pytorch==0.3.5
    # beartype and memory-efficient-attention-pytorch below are what its transformer imports;
    # base_step.py stubs its VQGAN/trainer-only imports (torchvision, vector-quantize-pytorch,
    # accelerate, ema-pytorch) when they are missing.
    # scikit-image: the real sample photos benchmarks/input_pipeline.py converts and reads.
    "bench": ["beartype==0.23.1", "memory-efficient-attention-pytorch==0.1.6",
              "scikit-image==0.26.0"],
}

setuptools.setup(
    name="muse_jax",
    version="0.1.0",
    description=__doc__,
    packages=setuptools.find_packages(include=["muse_jax", "muse_jax.*"]),
    # The shapes tokenizer `make demo` installs (muse_jax/shipped_tokenizer.py).
    package_data={"muse_jax": ["assets/vqgan_shapes_demo/*"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
