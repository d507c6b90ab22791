"""GAE across a whole conversation: a chat rollout has one row per (conversation, turn), and the advantage of a token
of turn 1 must see the rewards of turns 2 and 3 (the prompt it wrote is the one turn 2 edits).

`ConversationPacking` lays each conversation's turns one after the other in a `[conversations, L]` tensor (the
real tokens of its rows, in turn order) and back; `conversation_gae` runs the single-turn `integrity_aware_gae`
(and so `compute_gae`) once on that layout. So V(s) of a turn's last token bootstraps from V of the next turn's
first token (whose context already holds the prompt just written), each turn's reward sits on its last token,
and only a conversation's last token ends it. A conversation of one turn is exactly single-turn GAE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from promptgym.agents.integrity_value import integrity_aware_gae


@dataclass(frozen=True)
class ConversationPacking:
    """Where each real token of a right-padded `[rows, T]` batch goes in the `[conversations, L]` layout.

    Token (`rows[j]`, `cols[j]`) goes to (`conversation[j]`, `position[j]`); conversations are numbered in the
    order of their `episode` ids (`episodes`), L is the longest conversation in tokens.
    """

    rows: torch.Tensor  # [N] long
    cols: torch.Tensor  # [N] long
    conversation: torch.Tensor  # [N] long
    position: torch.Tensor  # [N] long
    episodes: torch.Tensor  # [E] long: the episode id of each packed conversation
    packed_shape: tuple[int, int]
    row_shape: tuple[int, int]

    @classmethod
    def of(cls, episode: torch.Tensor, turn: torch.Tensor, mask: torch.Tensor) -> ConversationPacking:
        """The packing of rows `mask[B, T]` (right-padded), row b being turn `turn[b]` of conversation
        `episode[b]`; each (episode, turn) may appear once."""
        mask = _check_rows(episode, turn, mask)
        episode, turn = episode.long().cpu(), turn.long().cpu()
        lengths = mask.sum(1)
        order = sorted(range(len(episode)), key=lambda b: (int(episode[b]), int(turn[b])))
        episodes, conversation_of_row = torch.unique(episode, return_inverse=True)
        offset = torch.zeros(len(episode), dtype=torch.long)
        used = torch.zeros(len(episodes), dtype=torch.long)  # tokens placed so far in each conversation
        for b in order:
            e = conversation_of_row[b]
            offset[b] = used[e]
            used[e] += lengths[b]
        rows, cols = torch.nonzero(mask, as_tuple=True)
        width = int(used.max()) if len(used) else 0
        return cls(rows, cols, conversation_of_row[rows], offset[rows] + cols, episodes,
                   (len(episodes), width), tuple(mask.shape))

    @property
    def mask(self) -> torch.Tensor:
        """`[E, L]` bool: True on the packed real tokens (each conversation right-padded)."""
        return self.pack(torch.ones(self.row_shape, dtype=torch.bool))

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """`x[B, T]` per row -> `[E, L]` per conversation (0 / False on padding)."""
        out = torch.zeros(self.packed_shape, dtype=x.dtype, device=x.device)
        out[self.conversation.to(x.device), self.position.to(x.device)] = x[self.rows.to(x.device),
                                                                             self.cols.to(x.device)]
        return out

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """`y[E, L]` per conversation -> `[B, T]` per row (0 on padding)."""
        out = torch.zeros(self.row_shape, dtype=y.dtype, device=y.device)
        out[self.rows.to(y.device), self.cols.to(y.device)] = y[self.conversation.to(y.device),
                                                                 self.position.to(y.device)]
        return out


def conversation_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    episode: torch.Tensor,
    turn: torch.Tensor,
    gamma: float,
    lam: float,
    integrity: torch.Tensor | None = None,
    coef: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, critic targets) `[B, T]` of rows that are turns of conversations: `integrity_aware_gae` (GAE
    on V' = values + coef * integrity, targets for V) over each conversation's tokens in turn order.

    rewards, values, mask, integrity: `[B, T]` per row as in `compute_gae`; `episode[B]`, `turn[B]`: the
    conversation and turn of each row. Every conversation ends after its last turn (no bootstrap)."""
    packing = ConversationPacking.of(episode, turn, mask)
    packed_integrity = None if integrity is None else packing.pack(integrity)
    advantages, targets = integrity_aware_gae(packing.pack(rewards), packing.pack(values), packed_integrity, coef,
                                              packing.mask.to(rewards.device), gamma, lam)
    return packing.unpack(advantages), packing.unpack(targets)


def _check_rows(episode: torch.Tensor, turn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The bool mask, after checking shapes, right padding and that no (episode, turn) repeats."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise ValueError(f"mask must be a [B, T] tensor, got {getattr(mask, 'shape', type(mask).__name__)}")
    for name, tensor in (("episode", episode), ("turn", turn)):
        if not isinstance(tensor, torch.Tensor) or tensor.shape != mask.shape[:1] or tensor.is_floating_point():
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{name} must be an integer tensor of shape [B] = ({mask.shape[0]},), got {got}")
    mask = mask.cpu() != 0
    if mask.shape[1] > 1 and torch.any(mask[:, 1:] & ~mask[:, :-1]):
        raise ValueError("mask must be right-padded (1s then 0s in every row)")
    pairs = list(zip(episode.tolist(), turn.tolist()))
    if len(set(pairs)) != len(pairs):
        repeated = next(p for p in pairs if pairs.count(p) > 1)
        raise ValueError(f"(episode, turn)={repeated} appears in more than one row; expected one row per turn")
    return mask
