"""Samplers over ranks: a resumable, seeded training sampler and an exact, unpadded evaluation sampler.

Training items carry their own augmentation seed: the sampler yields ``(index, seed)`` with the seed a function
of (run seed, epoch, position in the epoch). What a clip looks like then depends neither on which loader worker
decodes it nor on whether the run was resumed mid-epoch, which is what makes a killed and resumed run end with
the same weights as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def _item_seed(seed: int, epoch: int, position: int) -> int:
    # SplitMix-style mixing: neighbouring (epoch, position) pairs get unrelated seeds.
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + position * 0x94D049BB133111EB) % 2**64
    x ^= x >> 31
    return (x * 0xD6E8FEB86659FD93 % 2**64) >> 1


class TrainSampler(torch.utils.data.Sampler):
    """This rank's share of a seeded shuffle, the same length on every rank (the tail that does not divide is
    dropped, so ranks step together), each index paired with its augmentation seed.

    ``set_epoch(epoch, skip=n)`` starts the epoch after this rank's first ``n`` items (resume mid-epoch)."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True) -> None:
        if size < world_size:
            raise ValueError(f"{size} training videos cannot be shared by {world_size} ranks")
        self.size, self.rank, self.world_size, self.seed, self.shuffle = size, rank, world_size, seed, shuffle
        self.epoch, self.skip = 0, 0

    @property
    def per_rank(self) -> int:
        return self.size // self.world_size

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        if not 0 <= skip <= self.per_rank:
            raise ValueError(f"cannot skip {skip} of {self.per_rank} items")
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return self.per_rank - self.skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        used = self.per_rank * self.world_size
        for position in range(self.rank + self.skip * self.world_size, used, self.world_size):
            yield order[position], _item_seed(self.seed, self.epoch, position)


class ShardSampler(torch.utils.data.Sampler):
    """Indices ``rank, rank + world, ...``: every item on exactly one rank, no padding, uneven counts allowed
    (evaluation gathers results per index, so nothing is counted twice and nothing is dropped)."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.rank, self.world_size = size, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))
