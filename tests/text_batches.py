"""Right-padded batches of token ids shared by the text tests."""
import torch


def padded_batch(lengths=(8, 5, 3), vocab: int = 30, seed: int = 1):
    """(ids (N, T) with padding id 0 past each length, attention mask (N, T), targets 0..N-1) for sequences of the
    given ``lengths`` (T = the first, the longest), ids drawn from 1..vocab-1."""
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    ids = torch.randint(1, vocab, (len(lengths), t), generator=g)
    mask = (torch.arange(t)[None] < torch.tensor(lengths)[:, None]).long()
    ids[mask == 0] = 0
    return ids, mask, torch.arange(len(lengths))
