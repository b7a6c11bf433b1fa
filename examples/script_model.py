"""Scripts a small model with PyTorch and saves it for examples/train_torchscript.

    python3 examples/script_model.py model.pt
"""
import sys

import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.norm = torch.nn.BatchNorm1d(32)  # buffers, taken from rank 0 at each training forward
        self.fc2 = torch.nn.Linear(32, 1)
        self.unused = torch.nn.Linear(4, 4)  # never called: its .grad stays untouched

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.jit.script(Net()).save(sys.argv[1])
