"""MLP variational autoencoder (the MNIST VAE prior) and a decoder-prior wrapper.

The prior over images is the push-forward of ``N(z; 0, I)`` through a decoder;
posterior sampling happens in latent space, ``p(z | y) ∝ N(z; 0, I) · r(decode(z), y)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posterior.core.checks import check_no_nan, check_shape

_LOG_2PI = math.log(2.0 * math.pi)


class MLPVAE(nn.Module):
    """MLP VAE 784→400→(20, 20) with decoder 20→400→784 and a sigmoid output.

    Hidden activations are ReLU. The attribute names ``fc1, fc21, fc22, fc3, fc4``
    match the reference checkpoint ``reference_mnist_vae.safetensors``, which
    therefore loads with :meth:`load_state_dict` (or :meth:`from_safetensors`).

    Args:
        input_dim: Number of pixels P (784 for MNIST).
        hidden_dim: Width of the hidden layers.
        latent_dim: Dimension of z.
    """

    def __init__(self, input_dim: int = 784, hidden_dim: int = 400, latent_dim: int = 20) -> None:
        super().__init__()
        for name, v in (("input_dim", input_dim), ("hidden_dim", hidden_dim), ("latent_dim", latent_dim)):
            if not _is_integer(v) or int(v) < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.input_dim = int(input_dim)
        self.hidden_dim = int(hidden_dim)
        self.latent_dim = int(latent_dim)
        self.fc1 = nn.Linear(self.input_dim, self.hidden_dim)
        self.fc21 = nn.Linear(self.hidden_dim, self.latent_dim)
        self.fc22 = nn.Linear(self.hidden_dim, self.latent_dim)
        self.fc3 = nn.Linear(self.latent_dim, self.hidden_dim)
        self.fc4 = nn.Linear(self.hidden_dim, self.input_dim)

    # ---------------------------------------------------------------- encoder
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Parameters of q(z | x) = N(mu, exp(logvar)).

        Args:
            x: (B, input_dim) pixel intensities in [0, 1].

        Returns:
            ``(mu, logvar)``, each (B, latent_dim).
        """
        check_shape(x, (None, self.input_dim), "x")
        h = F.relu(self.fc1(x))
        return self.fc21(h), self.fc22(h)

    def proposal(self) -> "EncoderProposal":
        """The encoder as a proposal for `posterior.fit(..., proposal=)`: x -> (mu, log std) of q(z | x)."""
        return EncoderProposal(self)

    # ---------------------------------------------------------------- decoder
    def decode_logits(self, z: Tensor) -> Tensor:
        """Pre-sigmoid decoder output. z: (B, latent_dim) -> (B, input_dim) logits."""
        check_shape(z, (None, self.latent_dim), "z")
        return self.fc4(F.relu(self.fc3(z)))

    def decode_probs(self, z: Tensor) -> Tensor:
        """Bernoulli means. z: (B, latent_dim) -> (B, input_dim) in (0, 1)."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, z: Tensor) -> Tensor:
        """Alias of :meth:`decode_probs` so the module itself is a decoder z -> x."""
        return self.decode_probs(z)

    # ---------------------------------------------------------------- training
    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Negative ELBO with one reparameterized sample: BCE + KL.

        Both terms are summed over pixels / latent coordinates and averaged over
        the batch.

        Args:
            x: (B, input_dim) targets in [0, 1] (not necessarily binary).
            generator: Optional RNG for the reparameterization noise.

        Returns:
            Scalar loss.
        """
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = self.decode_logits(z)
        bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        kl = -0.5 * (1.0 + logvar - mu.square() - logvar.exp()).sum(-1)
        return (bce + kl).mean()

    # ---------------------------------------------------------------- loading
    def save_safetensors(self, path: str | Path) -> None:
        """Write the weights (keys fc1, fc21, fc22, fc3, fc4) atomically to ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(tmp))
        tmp.replace(path)

    @classmethod
    def from_safetensors(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "MLPVAE":
        """Build a VAE from a safetensors checkpoint (keys fc1, fc21, fc22, fc3, fc4).

        Layer sizes are read from the checkpoint.

        Raises:
            FileNotFoundError: if ``path`` does not exist (the message names it).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"VAE checkpoint not found: {path}")
        from safetensors.torch import load_file

        state = load_file(str(path), device=str(map_location))
        try:
            hidden_dim, input_dim = state["fc1.weight"].shape
            latent_dim = state["fc21.weight"].shape[0]
        except KeyError as exc:
            raise ValueError(f"{path} is not an MLPVAE checkpoint: missing key {exc}") from None
        vae = cls(input_dim=input_dim, hidden_dim=hidden_dim, latent_dim=latent_dim)
        vae.load_state_dict(state)
        return vae.to(map_location)


def _is_integer(value: object) -> bool:
    """An int (or NumPy / torch integer scalar), not a bool, a float or a string."""
    import numbers

    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return isinstance(value, Tensor) and value.ndim == 0 and not value.is_floating_point() and value.dtype != torch.bool


def _module_of(decoder: Callable[[Tensor], Tensor]) -> nn.Module | None:
    """The nn.Module holding the decoder's parameters (module, or bound method of one)."""
    if isinstance(decoder, nn.Module):
        return decoder
    owner = getattr(decoder, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def _decoder_name(decoder: Callable[[Tensor], Tensor]) -> str:
    owner = getattr(decoder, "__self__", None)
    if owner is not None and hasattr(decoder, "__name__"):
        return f"decoder {type(owner).__name__}.{decoder.__name__}"
    if isinstance(decoder, nn.Module):
        return f"decoder {type(decoder).__name__}"
    return f"decoder {getattr(decoder, '__name__', type(decoder).__name__)}"


class EncoderProposal(nn.Module):
    """A VAE's encoder q(z | x) = N(mu(x), exp(logvar(x))) as a Gaussian proposal y -> (mean, log_std).

    Args:
        vae: the :class:`MLPVAE` whose encoder it is (kept by reference: its weights are neither trained
            nor saved with a posterior).

    Attributes:
        latent_dim: the size of z.
    """

    def __init__(self, vae: MLPVAE) -> None:
        super().__init__()
        if not isinstance(vae, MLPVAE):
            raise TypeError(f"vae must be an MLPVAE, got {type(vae).__name__}")
        self._vae = (vae,)
        self.latent_dim = vae.latent_dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, input_dim) -> (mu, log_std), each (B, latent_dim)."""
        mu, logvar = self._vae[0].encode(x)
        return mu, 0.5 * logvar


class VAEDecoderPrior(nn.Module):
    """Prior ``N(z; 0, I)`` on a latent space, pushed through a decoder z -> x.

    Args:
        decoder: An ``nn.Module`` or callable mapping (B, latent_dim) -> (B, *event_shape).
            An :class:`MLPVAE` is accepted directly (its :meth:`MLPVAE.decode_probs`
            is used and ``latent_dim`` defaults to its own).
        latent_dim: Dimension of z; required unless ``decoder`` is an MLPVAE.

    Attributes:
        latent_dim: Dimension of z (``dim`` is an alias).
    """

    def __init__(self, decoder: Callable[[Tensor], Tensor], latent_dim: int | None = None) -> None:
        super().__init__()
        if isinstance(decoder, MLPVAE):
            if latent_dim is None:
                latent_dim = decoder.latent_dim
            elif not _is_integer(latent_dim) or int(latent_dim) != decoder.latent_dim:
                raise ValueError(f"latent_dim={latent_dim} disagrees with the MLPVAE's latent_dim={decoder.latent_dim}")
            fn: Callable[[Tensor], Tensor] = decoder.decode_probs
        elif callable(decoder):
            fn = decoder
        else:
            raise TypeError(f"decoder must be an nn.Module or callable, got {type(decoder).__name__}")
        if latent_dim is None:
            raise ValueError("latent_dim must be given when decoder is not an MLPVAE")
        if not _is_integer(latent_dim) or int(latent_dim) < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        self.latent_dim = int(latent_dim)
        self._decode_fn = fn
        self._name = _decoder_name(fn)
        module = _module_of(fn)
        # Registered as a submodule so .to()/.eval() reach the decoder's parameters.
        self.decoder = module
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    @property
    def dim(self) -> int:
        """Alias of :attr:`latent_dim` (the sampler's state dimension)."""
        return self.latent_dim

    @property
    def device(self) -> torch.device:
        """Device of the decoder's parameters (or of the prior's buffer if it has none)."""
        p = self._first_tensor()
        return p.device if p is not None else self._anchor.device

    def _first_tensor(self) -> Tensor | None:
        if self.decoder is None:
            return None
        for t in self.decoder.parameters():
            return t
        for t in self.decoder.buffers():
            return t
        return None

    # -------------------------------------------------------------- validation
    def check_latent(self, z: Tensor) -> None:
        """Raise ValueError unless z is a (B, latent_dim) floating tensor on the decoder's device."""
        if not isinstance(z, Tensor):
            raise ValueError(f"z must be a torch.Tensor of shape (B, latent_dim) = (B, {self.latent_dim}), "
                             f"got {type(z).__name__}")
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (B, latent_dim) = (B, {self.latent_dim}), got {tuple(z.shape)}")
        if not z.is_floating_point():
            raise ValueError(f"z must be a floating-point tensor, got dtype {z.dtype}")

    def _check_device(self, z: Tensor) -> None:
        p = self._first_tensor()
        if p is not None and p.device != z.device:
            raise ValueError(f"decoder is on device {p.device} but z is on device {z.device}; "
                             f"move the prior with .to({str(z.device)!r}) or z with .to({str(p.device)!r})")

    # -------------------------------------------------------------- interface
    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype | None = None) -> Tensor:
        """(n, latent_dim) draws from N(0, I) on the decoder's device."""
        if int(n) < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        p = self._first_tensor()
        if dtype is None:
            dtype = p.dtype if p is not None and p.is_floating_point() else torch.get_default_dtype()
        return torch.randn(int(n), self.latent_dim, generator=generator, device=self.device, dtype=dtype)

    def log_prob(self, z: Tensor) -> Tensor:
        """log N(z; 0, I). z: (B, latent_dim) -> (B,)."""
        self.check_latent(z)
        return -0.5 * z.square().sum(-1) - 0.5 * self.latent_dim * _LOG_2PI

    def grad_log_prob(self, z: Tensor) -> Tensor:
        """∇_z log N(z; 0, I) = -z. z: (B, latent_dim) -> (B, latent_dim)."""
        self.check_latent(z)
        return -z

    def decode(self, z: Tensor) -> Tensor:
        """Decoder output. z: (B, latent_dim) -> (B, *event_shape).

        Raises:
            ValueError: on a wrong z shape, a device mismatch, an output whose batch
                size is not B, or NaN in the output (named after the decoder).
        """
        self.check_latent(z)
        self._check_device(z)
        x = self._decode_fn(z)
        if not isinstance(x, Tensor):
            raise ValueError(f"{self._name} must return a torch.Tensor, got {type(x).__name__}")
        if x.ndim < 1 or x.shape[0] != z.shape[0]:
            raise ValueError(f"{self._name} must return shape (B, ...) with B = {z.shape[0]}, got {tuple(x.shape)}")
        return check_no_nan(x, self._name)

    def forward(self, z: Tensor) -> Tensor:
        """Alias of :meth:`decode`."""
        return self.decode(z)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, decoder={self._name!r}"


def train_vae(
    images: Tensor,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    hidden_dim: int = 400,
    latent_dim: int = 20,
    log_every: int = 0,
) -> MLPVAE:
    """Train an :class:`MLPVAE` with Adam on BCE + KL.

    Deterministic for a given seed (on the same device): the initial weights,
    the shuffling and the reparameterization noise come from ``seed``.

    Args:
        images: (N, P) float pixel intensities in [0, 1].
        epochs: Passes over the data.
        batch_size: Minibatch size (the last partial batch is kept).
        lr: Adam learning rate.
        seed: Seed of every random choice.
        device: Where to train.
        hidden_dim, latent_dim: Architecture.
        log_every: Print the mean loss every this many epochs (0: silent).

    Returns:
        The trained VAE in eval mode, on ``device``; ``vae.loss_history`` holds the
        mean loss of each epoch.
    """
    check_shape(images, (None, None), "images")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in [0, 1], got dtype {images.dtype}")
    if images.shape[0] < 1:
        raise ValueError("images must hold at least one image")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"images must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    if int(epochs) < 0 or int(batch_size) < 1:
        raise ValueError(f"epochs must be >= 0 and batch_size >= 1, got {epochs}, {batch_size}")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):  # seeded initial weights; global RNG untouched
        torch.manual_seed(seed)
        vae = MLPVAE(images.shape[1], hidden_dim, latent_dim)
    vae = vae.to(device)
    data = images.to(device=device, dtype=torch.float32)
    shuffle_gen = torch.Generator(device="cpu").manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    history: list[float] = []
    n = data.shape[0]
    vae.train()
    for epoch in range(int(epochs)):
        perm = torch.randperm(n, generator=shuffle_gen).to(device)
        total = 0.0
        for start in range(0, n, batch_size):
            batch = data[perm[start:start + batch_size]]
            loss = vae.loss(batch, generator=noise_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * batch.shape[0]
        history.append(total / n)
        if log_every and (epoch + 1) % log_every == 0:
            print(f"epoch {epoch + 1}/{epochs}: loss {history[-1]:.3f}")
    vae.eval()
    vae.loss_history = history
    return vae
