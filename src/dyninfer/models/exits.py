"""The early-exit network protocol: backbone segments, one head per exit, stages for the runtime.

An :class:`EarlyExitNetwork` is a chain of P backbone *segments* and P *heads*. Segment p maps the
carry (the features the next segment continues from) to a new carry; head p maps that carry to
logits (N, K). Exit p therefore costs segments 0..p plus head p, and the last head is the backbone's
own classifier. The plain ``forward`` is the *baseline*: all segments and the last head only.
:class:`dyninfer.paths.StagedNetwork` turns the segments and heads into runtime stages.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..runtime.validate import check_batch

Carry = torch.Tensor | tuple[torch.Tensor, ...]


class EarlyExitNetwork(nn.Module):
    """Base class of networks with an exit after each segment.

    Subclasses fill ``self.segments`` (``nn.ModuleList`` of P modules ``carry -> carry``; segment 0
    takes the image batch) and ``self.heads`` (P modules ``carry -> logits``).

    Attributes:
        input_shape: (C, H, W) the network expects, or None when unknown.
        exit_names: P human-readable names of the exits (e.g. ``column0``, ``layer2``).
    """

    segments: nn.ModuleList
    heads: nn.ModuleList
    input_shape: tuple[int, int, int] | None = None
    exit_names: list[str]

    # ------------------------------------------------------------------ forward passes
    @property
    def n_exits(self) -> int:
        return len(self.heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The baseline network: every segment, then the final head only. x: (N, C, H, W) -> (N, K)."""
        carry: Carry = x
        for seg in self.segments:
            carry = seg(carry)
        return self.heads[-1](carry)

    def forward_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit: a list of P tensors (N, K), exit 0 first."""
        out = []
        carry: Carry = x
        for seg, head in zip(self.segments, self.heads):
            carry = seg(carry)
            out.append(head(carry))
        return out

    def forward_to(self, x: torch.Tensor, exit: int, *, all_heads: bool = True) -> torch.Tensor:
        """Logits of fixed exit ``exit``; with ``all_heads`` the earlier heads run too (their cost, as in
        the paper's Table 1), their outputs are discarded."""
        self._check_exit(exit)
        carry: Carry = x
        for p in range(exit + 1):
            carry = self.segments[p](carry)
            if all_heads and p < exit:
                self.heads[p](carry)
        return self.heads[exit](carry)

    def exit_module(self, exit: int, *, all_heads: bool = True) -> nn.Module:
        """A module computing fixed exit ``exit`` (for FLOP counting and latency measurement)."""
        return _FixedExit(self, exit, all_heads)

    def stage_module(self, p: int) -> nn.Module:
        """A module computing segment ``p`` and head ``p`` on a carry (the *incremental* cost of exit p)."""
        return _StageModule(self, p)

    # ------------------------------------------------------------------ parameters
    def head_parameters(self, exits: Sequence[int] | None = None) -> Iterator[nn.Parameter]:
        for p in (range(self.n_exits) if exits is None else exits):
            yield from self.heads[p].parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.segments.parameters()

    def freeze_backbone(self) -> "EarlyExitNetwork":
        """Stop gradients to the backbone (segments); heads stay trainable."""
        for prm in self.backbone_parameters():
            prm.requires_grad_(False)
        return self

    def head_state(self, exits: Sequence[int] | None = None) -> dict[int, dict[str, torch.Tensor]]:
        """Deep copy of the weights of the given heads (default: all), keyed by exit index."""
        exits = range(self.n_exits) if exits is None else exits
        return {int(p): {k: v.detach().clone() for k, v in self.heads[p].state_dict().items()} for p in exits}

    def load_head_state(self, state: dict[int, dict[str, torch.Tensor]]) -> None:
        """Restore heads from :meth:`head_state` (in place, so optimisers keep their parameter objects)."""
        for p, sd in state.items():
            self._check_exit(int(p))
            own = self.heads[int(p)].state_dict()
            if set(own) != set(sd) or any(own[k].shape != sd[k].shape for k in own):
                raise ConfigError(f"head state for exit {p} does not fit this network's head {p}")
            with torch.no_grad():
                for k, v in own.items():
                    v.copy_(sd[k])

    def check_input(self, x: object, where: str = "early-exit network") -> torch.Tensor:
        """Validate an image batch against ``input_shape`` (raises :class:`InputError`)."""
        return check_batch(x, self.input_shape, where=where)

    def _check_exit(self, p: int) -> None:
        if not 0 <= int(p) < self.n_exits:
            raise ConfigError(f"exit {p} does not exist; this network has exits 0..{self.n_exits - 1}")


class _FixedExit(nn.Module):
    def __init__(self, net: EarlyExitNetwork, exit: int, all_heads: bool) -> None:
        super().__init__()
        self.net, self.exit, self.all_heads = net, exit, all_heads
        self.training = net.training  # a wrapper must not flip the network's mode (count_flops restores it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_to(x, self.exit, all_heads=self.all_heads)


class _StageModule(nn.Module):
    def __init__(self, net: EarlyExitNetwork, p: int) -> None:
        super().__init__()
        self.seg, self.head = net.segments[p], net.heads[p]
        self.training = net.training

    def forward(self, carry: Carry) -> torch.Tensor:
        return self.head(self.seg(carry))

