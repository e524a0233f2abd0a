"""Identity-balanced batches for metric learning: P identities x K tracklets, split across DDP ranks.

An epoch visits every identity once (as the RandomIdentitySampler of the video re-ID code GLTR builds
on): identities are shuffled, cut into batches of P, and each identity brings K of its tracklets (drawn
with replacement when it has fewer than K). Batches are dealt round-robin to the ranks, so ranks never
share an identity-batch and all get the same number of batches, which keeps DDP's collectives in step.

Every rank computes the same global permutation from (seed, epoch) and keeps its own share; nothing is
communicated. Use it as `DataLoader(dataset, batch_size=sampler.batch_size, sampler=sampler,
drop_last=True)`; `batches()` gives the same epoch already grouped, for a `batch_sampler` or tests.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class DistributedPKSampler(Sampler[int]):
    """Yield this rank's tracklet indices, P identities x K tracklets per consecutive batch."""

    def __init__(
        self,
        labels: Sequence[int],
        p: int,
        k: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        drop_last: bool = True,
    ):
        if p < 1 or k < 1:
            raise ValueError(f"P and K must be at least 1, got p={p}, k={k}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas), got rank={rank} of {num_replicas}")
        by_label: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            by_label[int(label)].append(index)
        self.identities = sorted(by_label)
        self._tracklets = [np.asarray(by_label[label], dtype=np.int64) for label in self.identities]
        num_ids = len(self.identities)
        if p * num_replicas > num_ids:
            raise ValueError(
                f"P x num_replicas = {p} x {num_replicas} = {p * num_replicas} identities per step, "
                f"but only {num_ids} identities to sample from: lower P or use fewer ranks"
            )
        self.p, self.k = p, k
        self.num_replicas, self.rank = num_replicas, rank
        self.seed, self.epoch = seed, 0
        self.drop_last = drop_last
        step = p * num_replicas
        # Without drop_last the last round is filled with identities from the start of the permutation
        # (like DistributedSampler's padding), so a few identities are seen twice that epoch.
        rounds = num_ids // step if drop_last else -(-num_ids // step)
        self.num_batches = rounds  # per rank, per epoch

    @property
    def batch_size(self) -> int:
        """P x K: the DataLoader batch size that makes every batch one P x K group."""
        return self.p * self.k

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch`; call before iterating, with the same epoch on every rank."""
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch, each P x K tracklet indices (identity-major)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        num_ids = len(self.identities)
        order = rng.permutation(num_ids)
        step = self.p * self.num_replicas
        needed = self.num_batches * step
        order = np.concatenate([order, order[: max(0, needed - num_ids)]])[:needed]
        # Draw K tracklets for every identity in `order`, on every rank, so the generator advances the
        # same way everywhere and the ranks' shares come from one global epoch.
        groups = [self._draw_k(rng, int(i)) for i in order]
        all_batches = [np.concatenate(groups[start : start + self.p]).tolist() for start in range(0, needed, self.p)]
        return all_batches[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch

    def __len__(self) -> int:
        return self.num_batches * self.p * self.k

    def state_dict(self) -> dict[str, int]:
        """The epoch and seed, enough to resume the exact sample order from a checkpoint."""
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore what `state_dict` saved."""
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])

    def _draw_k(self, rng: np.random.Generator, identity: int) -> np.ndarray:
        tracklets = self._tracklets[identity]
        return rng.choice(tracklets, size=self.k, replace=len(tracklets) < self.k)
