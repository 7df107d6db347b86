"""Deterministic batches: every random draw of a training step is a pure function of (seed, micro step).

Samples are read from an endless stream of per-epoch permutations; micro step m takes the global micro
batch at stream positions [m * B, (m + 1) * B) and each process keeps its own slice. Noise, timesteps,
label dropout and flips are drawn for the whole global micro batch from a generator seeded by (seed, m),
then sliced the same way. So a resumed run replays exactly, and N processes see the very same samples and
noise as one process with the same global batch.
"""

import torch


def step_generator(seed: int, micro_step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + micro_step * 7919 + 17)


class StreamBatchSampler(torch.utils.data.Sampler):
    """Yields this process's index list for micro steps start, start+1, ..., stop-1."""

    def __init__(self, dataset_size: int, global_micro_batch: int, seed: int, start: int, stop: int,
                 process_index: int = 0, num_processes: int = 1):
        if global_micro_batch % num_processes:
            raise ValueError(f"the micro batch ({global_micro_batch}) must split evenly over {num_processes} processes.")
        self.size, self.batch, self.seed = dataset_size, global_micro_batch, seed
        self.start, self.stop = start, stop
        self.local = global_micro_batch // num_processes
        self.offset = process_index * self.local
        self._epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 31 + epoch))
        return self._perm

    def global_indices(self, micro_step: int):
        positions = range(micro_step * self.batch, (micro_step + 1) * self.batch)
        return [int(self._permutation(p // self.size)[p % self.size]) for p in positions]

    def __iter__(self):
        for m in range(self.start, self.stop):
            yield self.global_indices(m)[self.offset : self.offset + self.local]

    def __len__(self):
        return self.stop - self.start
