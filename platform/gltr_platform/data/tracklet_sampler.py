"""Every training tracklet once per epoch, shuffled, split across DDP ranks: the official GLTR epoch.

The official code trains with `DataLoader(shuffle=True, batch_size=10)` over all MARS training tracklets
(docs/paper-recipe.md), so an epoch is 8,298 clips, 830 steps. This sampler is that epoch made
distributed and resumable: every rank computes the same permutation from (seed, epoch) and keeps every
num_replicas-th index from its rank on, so the shares are disjoint and equal in length (the last
`len % num_replicas` tracklets of the permutation sit the epoch out; a new permutation picks others next
epoch). Nothing is communicated. Use it as `DataLoader(dataset, batch_size=B, sampler=sampler)`: every
rank then keeps the official short last batch, and all ranks take the same number of steps
(loaders.build_train_loader drops a last batch of one clip, on every rank alike).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class DistributedTrackletSampler(Sampler[int]):
    """Yield this rank's share of a shuffled epoch over all `num_tracklets` training tracklets."""

    def __init__(self, num_tracklets: int, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas), got rank={rank} of {num_replicas}")
        if num_tracklets < num_replicas:
            raise ValueError(
                f"{num_tracklets} training tracklets cannot be shared by {num_replicas} ranks: use fewer ranks"
            )
        self.num_tracklets = num_tracklets
        self.num_replicas, self.rank = num_replicas, rank
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch`; call before iterating, with the same epoch on every rank."""
        self.epoch = epoch

    def indices(self) -> list[int]:
        """This rank's tracklet indices for the current epoch, in the order they are trained on."""
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_tracklets)
        return order[self.rank : len(self) * self.num_replicas : self.num_replicas].tolist()

    def __iter__(self) -> Iterator[int]:
        yield from self.indices()

    def __len__(self) -> int:
        return self.num_tracklets // self.num_replicas

    def state_dict(self) -> dict[str, int]:
        """The epoch and seed, enough to resume the exact sample order from a checkpoint."""
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore what `state_dict` saved."""
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])
