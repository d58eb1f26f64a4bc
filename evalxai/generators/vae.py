"""A small variational autoencoder on images in pixel space ([0, 1]), and the generator built from its decoder.

Kingma & Welling 2014: encoder q(z|x) = N(mu(x), diag sigma^2(x)), prior p(z) = N(0, I), Bernoulli decoder
p(x|z) with pixel means sigmoid(dec(z)). The loss is the negative ELBO per image,
``-ELBO(x) = BCE(x, dec(z)) + KL(q(z|x) || p(z))``, z drawn by reparameterisation, in nats summed over pixels.
``Generator`` wraps the decoder for code-space activation maximization (Nguyen et al. 2016; Montavon, Samek &
Mueller 2018, eq. 3): ``g(z)`` is the decoded image mapped into the model's input space.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm


class VAE(nn.Module):
    """Dense encoder and decoder (ReLU hidden layers, mirrored), latent code of ``latent_dim`` numbers."""

    def __init__(self, input_shape, latent_dim: int = 10, hidden=(512, 256)):
        super().__init__()
        self.input_shape, self.latent_dim = tuple(int(s) for s in input_shape), int(latent_dim)
        dims = [math.prod(self.input_shape), *[int(h) for h in hidden]]
        enc: list[nn.Module] = [nn.Flatten()]
        for i, o in zip(dims[:-1], dims[1:]):
            enc += [nn.Linear(i, o), nn.ReLU()]
        self.encoder = nn.Sequential(*enc)
        self.to_mu, self.to_logvar = nn.Linear(dims[-1], latent_dim), nn.Linear(dims[-1], latent_dim)
        dec: list[nn.Module] = []
        back = [latent_dim, *dims[:0:-1]]
        for i, o in zip(back[:-1], back[1:]):
            dec += [nn.Linear(i, o), nn.ReLU()]
        dec.append(nn.Linear(back[-1], dims[0]))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2) of q(z|x), x in pixel space (N, *input_shape)."""
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(len(z), *self.input_shape)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel means sigmoid(dec(z)) in [0, 1], shape (N, *input_shape)."""
        return torch.sigmoid(self.decode_logits(z))

    def neg_elbo(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """-ELBO per image (nats): BCE of x under the decoded means at z = mu + sigma * eps, plus the analytic KL.
        ``eps`` (N, latent_dim) standard normal; None: eps = 0 (z = mu, the deterministic reconstruction)."""
        mu, logvar = self.encode(x)
        z = mu if eps is None else mu + (0.5 * logvar).exp() * eps
        bce = F.binary_cross_entropy_with_logits(self.decode_logits(z), x, reduction="none").flatten(1).sum(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return bce + kl


def train_vae(vae: VAE, x: torch.Tensor, epochs: int = 30, batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
              progress: bool = True) -> VAE:
    """Minimise the mean -ELBO with Adam on shuffled mini-batches of pixel-space images ``x``; all randomness
    (initialisation is the caller's, shuffling and reparameterisation noise here) follows ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    vae.train()
    for _ in tqdm(range(epochs), desc="train vae", disable=not progress, leave=False):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            xb = x[perm[i:i + batch_size]]
            eps = torch.randn(len(xb), vae.latent_dim, generator=gen)
            opt.zero_grad(set_to_none=True)
            vae.neg_elbo(xb, eps).mean().backward()
            opt.step()
    vae.eval()
    return vae


class Generator(nn.Module):
    """g(z): the VAE's decoder, its pixels mapped into the model's input space ((p - mean) / std per channel when
    the dataset is normalised). ``encode``-based scores take model-space images and map them back."""

    def __init__(self, vae: VAE, mean=None, std=None):
        super().__init__()
        self.vae = vae
        self.latent_dim = vae.latent_dim
        self.input_shape = vae.input_shape
        self.register_buffer("mean", None if mean is None else torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", None if std is None else torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mean is None else x * self.std + self.mean

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        p = self.vae.decode(z)
        return p if self.mean is None else (p - self.mean) / self.std

    @torch.no_grad()
    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared pixel error between x and its reconstruction g(mu(x)), in pixel space, per image."""
        p = self.to_pixels(x).clamp(0, 1)
        rec = self.vae.decode(self.vae.encode(p)[0])
        return (rec - p).pow(2).flatten(1).mean(1)

    @torch.no_grad()
    def neg_elbo(self, x: torch.Tensor, samples: int = 16, seed: int = 0) -> torch.Tensor:
        """-ELBO per image (nats, an upper bound on -log p(x) under the VAE), averaged over ``samples`` draws of
        the reparameterisation noise; draw k is the same for every image (seeded), so it does not depend on the
        batch."""
        p = self.to_pixels(x).clamp(0, 1)
        gen = torch.Generator().manual_seed(seed)
        eps = torch.randn(samples, 1, self.latent_dim, generator=gen).to(p)
        return torch.stack([self.vae.neg_elbo(p, e.expand(len(p), -1)) for e in eps]).mean(0)
