"""Your own model, loss and data set, trained data-parallel (README.md: "Your own model, from Python")."""

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  before init_process_group, or its defaults pin the group
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class Rings(Dataset):
    """Points in the plane, labelled by which of four rings around the origin holds them."""

    def __init__(self, n: int = 2048):
        self.x = 1.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
        self.y = self.x.norm(dim=1).long().clamp(max=3)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(2, 64), nn.Linear(64, 64), nn.Linear(64, 4)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.out(h + torch.relu(self.mid(h)))


def ring_loss(logits, y):
    return F.cross_entropy(logits, y) + 1e-3 * logits.pow(2).mean()  # the penalty keeps logits bounded


dist.init_process_group()  # from torchrun's variables; Gloo for CPU tensors, NCCL for GPU ones
rank, world = dist.get_rank(), dist.get_world_size()
device = torch.device(f"cuda:{dist.get_node_local_rank()}" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)
model = nn.parallel.DistributedDataParallel(Net().to(device))
sampler = DistributedSampler(Rings(), seed=0, drop_last=True)
loader = DataLoader(sampler.dataset, batch_size=32, sampler=sampler, drop_last=True)  # 32 per rank
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
for epoch in range(5):
    sampler.set_epoch(epoch)  # else every epoch repeats the first one's order
    losses = []
    for x, y in loader:
        loss = ring_loss(model(x.to(device)), y.to(device))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.detach())  # no .item() here: it would wait for the device every step
    mean = torch.stack(losses).mean()
    if world > 1:
        dist.all_reduce(mean)  # every rank ran as many steps, so the mean of means is the mean
        mean /= world
    if rank == 0:
        print(f"epoch {epoch} loss {mean.item():.4f}")
del model  # it holds the process group, whose Gloo threads must end before the interpreter does
dist.destroy_process_group()  # joins those threads, now that nothing else holds the group
