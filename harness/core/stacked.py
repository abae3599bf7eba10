"""The forward pass of K models stacked along a leading dimension, as the batched trainers and
the boundary renderer run it: each layer one batched matmul over the models.

Parameters are [W1, b1, W2, b2, ...] with W: (K, out, in) and b: (K, out, 1), the layers of
`model.build_mlp` with a model dimension in front.
"""

import torch

from harness.core.model import activation


def activate(pre: torch.Tensor, name: str) -> torch.Tensor:
    """The activation `name` of `model.build_mlp`, applied to a layer's output (in place for ReLU)."""
    return pre.relu_() if name == "relu" else activation(name)(pre)


def forward(params: list[torch.Tensor], xt: torch.Tensor, activation_name: str = "relu") -> list[torch.Tensor]:
    """Activations of all K models on the shared inputs xt (features, N), samples last:
    [hidden_1, ..., logits], each (K, width, N). Samples last keeps the reductions over the
    classes vectorized over the samples."""
    activations = []
    h = xt
    for i in range(0, len(params), 2):
        h = torch.matmul(params[i], h).add_(params[i + 1])
        if i + 2 < len(params):
            h = activate(h, activation_name)
        activations.append(h)
    return activations


def predicted_classes(logits: torch.Tensor) -> torch.Tensor:
    """argmax over the classes of (K, classes, N) logits, first of equals, as (K, N).
    Written out: torch.argmax over a middle dimension of size 3 is dozens of times slower here."""
    best = logits[:, 0]
    predicted = torch.zeros(best.shape, dtype=torch.long, device=logits.device)
    for c in range(1, logits.shape[1]):
        better = logits[:, c] > best
        best = torch.where(better, logits[:, c], best)
        predicted = torch.where(better, c, predicted)
    return predicted
