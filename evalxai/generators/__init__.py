"""Generative models whose decoder g(z) maps a code to an input: the generator of code-space activation
maximization (``evalxai.maximize``). ``get_generator("vae_mnist")`` trains a small VAE once and caches it."""
from evalxai.generators.cache import available, generator_config, generator_key, get_generator
from evalxai.generators.vae import VAE, Generator, train_vae

__all__ = ["VAE", "Generator", "available", "generator_config", "generator_key", "get_generator", "train_vae"]
