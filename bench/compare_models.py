"""The models of bench/bench_models.h in PyTorch, for bench/compare_torch.py: the same
layers in the same registration order (DDP's bucket order follows it), each model's loss,
batch per rank and inputs."""

MODELS = ("mlp", "small", "convnet", "deepsup")  # "all"
EXTRA_MODELS = ("resnet", "sparse")           # on request only, as in ddp_bench
BATCH = {"mlp": 32, "small": 64, "convnet": 16, "deepsup": 32, "resnet": 8, "sparse": 32}
SPARSE_ROWS, SPARSE_DIM, SPARSE_BAG = 1000000, 64, 8  # bench_models.h kSparse*


def build_model(name, torch):
    """The models of bench/bench_models.h, registered in the same order (DDP's bucket
    order follows registration order), and each model's loss."""
    nn = torch.nn
    F = torch.nn.functional

    class Mlp(nn.Module):  # 8 x Linear(1024, 1024), ReLU between
        def __init__(self):
            super().__init__()
            self.layers = []
            for i in range(8):
                layer = nn.Linear(1024, 1024)
                self.add_module(f"fc{i}", layer)
                self.layers.append(layer)

        def forward(self, x):
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i + 1 < len(self.layers):
                    x = torch.relu(x)
            return x

    class Small(nn.Module):  # 400 x Linear(32, 32) with Tanh
        def __init__(self):
            super().__init__()
            self.layers = []
            for i in range(400):
                layer = nn.Linear(32, 32)
                self.add_module(f"l{i}", layer)
                self.layers.append(layer)

        def forward(self, x):
            for layer in self.layers:
                x = torch.tanh(layer(x))
            return x

    class ConvNet(nn.Module):
        def __init__(self):
            super().__init__()

            def conv(i, o, s):
                return nn.Conv2d(i, o, 3, stride=s, padding=1, bias=False)

            self.c1 = conv(3, 32, 1)
            self.b1 = nn.BatchNorm2d(32)
            self.c2 = conv(32, 64, 2)
            self.b2 = nn.BatchNorm2d(64)
            self.c3 = conv(64, 64, 2)
            self.b3 = nn.BatchNorm2d(64)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = torch.relu(self.b1(self.c1(x)))
            x = torch.relu(self.b2(self.c2(x)))
            x = torch.relu(self.b3(self.c3(x)))
            return self.fc(F.adaptive_avg_pool2d(x, (1, 1)).flatten(1))

    def conv(i, o, k, s):
        return nn.Conv2d(i, o, k, stride=s, padding=k // 2, bias=False)

    class BasicBlock(nn.Module):  # bench_models.h's BasicBlockImpl, same registration order
        def __init__(self, i, o, s):
            super().__init__()
            self.c1 = conv(i, o, 3, s)
            self.b1 = nn.BatchNorm2d(o)
            self.c2 = conv(o, o, 3, 1)
            self.b2 = nn.BatchNorm2d(o)
            self.down = self.bd = None
            if s != 1 or i != o:
                self.down = conv(i, o, 1, s)
                self.bd = nn.BatchNorm2d(o)

        def forward(self, x):
            y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            return torch.relu(y + (self.bd(self.down(x)) if self.down is not None else x))

    class ResNet(nn.Module):  # ResNet-18's shape at half width (bench_models.h)
        def __init__(self):
            super().__init__()
            self.stem = conv(3, 32, 3, 1)
            self.bn = nn.BatchNorm2d(32)
            self.blocks = []
            i = 32
            for stage in range(4):
                o = 32 << stage
                for b in range(2):
                    block = BasicBlock(i, o, 2 if b == 0 and stage > 0 else 1)
                    self.add_module(f"layer{stage + 1}_{b}", block)
                    self.blocks.append(block)
                    i = o
            self.fc = nn.Linear(i, 10)

        def forward(self, x):
            x = torch.relu(self.bn(self.stem(x)))
            for b in self.blocks:
                x = b(x)
            return self.fc(F.adaptive_avg_pool2d(x, (1, 1)).flatten(1))

    class DeepSup(nn.Module):  # trunk + a head per depth; `debug` is never called
        def __init__(self):
            super().__init__()
            self.trunk, self.heads = [], []
            for i in range(6):
                t, h = nn.Linear(256, 256), nn.Linear(256, 10)
                self.add_module(f"trunk{i}", t)
                self.add_module(f"head{i}", h)
                self.trunk.append(t)
                self.heads.append(h)
            self.debug = nn.Linear(256, 256)

        def forward(self, x):
            outs = []
            for t, h in zip(self.trunk, self.heads):
                x = torch.relu(t(x))
                outs.append(h(x))
            return outs

    def deepsup_loss(outs, y, i):
        # Heads 0..4 rotate in and out of the loss; head 5 is computed but never used.
        loss = F.cross_entropy(outs[4], y)
        for k in range(4):
            if (i + k) % 3 != 0:
                loss = loss + 0.3 * F.cross_entropy(outs[k], y)
        return loss

    class DeepSupWithLoss(nn.Module):
        """PyTorch DDP (even with find_unused_parameters=True) requires every output of
        forward to take part in the loss: it marks parameters used by walking the graph
        from the outputs, so a returned-but-unused head would be waited for forever
        ("Expected to have finished reduction in the prior iteration"). The loss is
        therefore computed inside forward; the computation is the same as the C++
        trainer's (all six heads run, the loss uses the scheduled ones)."""

        def __init__(self):
            super().__init__()
            self.net = DeepSup()

        def forward(self, x, y, i):
            return deepsup_loss(self.net(x), y, i)

    class SparseRec(nn.Module):  # bench_models.h's SparseRecImpl: DDP reduces its sparse gradient
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(SPARSE_ROWS, SPARSE_DIM, sparse=True)
            self.mlp = nn.Sequential(nn.Linear(SPARSE_DIM, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                                     nn.Linear(256, 10))

        def forward(self, ids):
            return self.mlp(self.embedding(ids).mean(1))

    if name == "mlp":
        return Mlp, lambda model, x, y, i: F.cross_entropy(model(x), y)
    if name == "small":
        return Small, lambda model, x, y, i: model(x).pow(2).mean()
    if name == "convnet":
        return ConvNet, lambda model, x, y, i: F.cross_entropy(model(x), y)
    if name == "resnet":
        return ResNet, lambda model, x, y, i: F.cross_entropy(model(x), y)
    if name == "sparse":
        return SparseRec, lambda model, x, y, i: F.cross_entropy(model(x), y)
    if name == "deepsup":
        return DeepSupWithLoss, lambda model, x, y, i: model(x, y, i)
    raise ValueError(f"unknown model {name!r}")


def make_inputs(name, batch, device, torch):
    """One batch of `name`'s inputs and targets (None where the loss needs none), drawn
    from torch's current generator: the caller seeds it per rank, as ddp_bench does."""
    if name == "mlp":
        x = torch.randn(batch, 1024, device=device)
        y = torch.randint(1024, (batch,), device=device)
    elif name == "small":
        x = torch.randn(batch, 32, device=device)
        y = None
    elif name == "sparse":
        x = torch.randint(SPARSE_ROWS, (batch, SPARSE_BAG), device=device)
        y = torch.randint(10, (batch,), device=device)
    elif name in ("convnet", "resnet"):
        x = torch.randn(batch, 3, 32, 32, device=device)
        y = torch.randint(10, (batch,), device=device)
    else:
        x = torch.randn(batch, 256, device=device)
        y = torch.randint(10, (batch,), device=device)
    return x, y
