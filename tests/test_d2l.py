"""The facade's own promises: init_cnn on lazy layers, datasets and loaders, the trainer's
precision, devices and board, and the helpers the chapters call. The chapters themselves are in
test_d2l_chapters.py, the notebook in test_d2l_notebook.py."""

import copy
import io
import math
import types

import numpy as np
import pytest
import torch
from conftest import resize_reference
from PIL import Image
from torch import nn

from alexnet import d2l
from alexnet.device import bf16_autocast


@pytest.fixture(autouse=True)
def _board_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_D2L_BOARD_DIR", str(tmp_path))
    torch.manual_seed(0)


def xavier_bound(weight):
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    return math.sqrt(6 / (fan_in + fan_out))


def lazy_net():
    net = nn.Sequential(
        nn.LazyConv2d(64, kernel_size=3), nn.LazyBatchNorm2d(), nn.ReLU(), nn.Flatten(), nn.LazyLinear(32)
    )
    net.apply(d2l.init_cnn)
    return net


# ---------------------------------------------------------------------------------------------
# init_cnn


def test_init_cnn_on_lazy_layers_gives_xavier_at_the_first_forward():
    net = lazy_net()
    net(torch.zeros(2, 16, 6, 6))
    for layer in (net[0], net[4]):
        bound = xavier_bound(layer.weight)
        # PyTorch's default bound here is 1/sqrt(fan_in): 0.083 for the conv, against Xavier's 0.091
        assert 0.95 * bound < layer.weight.abs().max() <= bound


def test_init_cnn_leaves_batch_norm_alone_lazy_or_not():
    net = lazy_net()
    net.append(nn.BatchNorm1d(32)).apply(d2l.init_cnn)  # a materialised one too
    net(torch.zeros(2, 16, 6, 6))  # d2l.init_cnn on lazy batch norm used to raise here
    for bn in (net[1], net[5]):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))


def test_a_copy_made_before_the_first_forward_initialises_once():
    # (torch itself cannot deepcopy a lazy batch norm's uninitialised buffers; AlexNet has none)
    original = nn.Sequential(nn.LazyConv2d(64, kernel_size=3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(32))
    original.apply(d2l.init_cnn)
    twin = copy.deepcopy(original)
    x = torch.zeros(2, 16, 6, 6)
    twin(x)
    with torch.no_grad():
        twin[0].weight.fill_(0.5)  # stands for training
    twin(x)
    assert torch.equal(twin[0].weight, torch.full_like(twin[0].weight, 0.5))
    original(x)  # the original keeps its own deferred init
    assert original[0].weight.abs().max() <= xavier_bound(original[0].weight)
    assert not original[0]._forward_pre_hooks and not twin[0]._forward_pre_hooks


def test_a_pickled_lazy_model_keeps_its_deferred_init(tmp_path):
    torch.save(lazy_net(), tmp_path / "m.pt")
    net = torch.load(tmp_path / "m.pt", weights_only=False)
    net(torch.zeros(2, 16, 6, 6))
    bound = xavier_bound(net[0].weight)
    assert 0.95 * bound < net[0].weight.abs().max() <= bound


def test_applying_init_cnn_twice_before_the_forward_registers_one_hook():
    net = lazy_net()
    net.apply(d2l.init_cnn)
    assert len(net[0]._forward_pre_hooks) == 2  # the lazy layer's own, and ours


# ---------------------------------------------------------------------------------------------
# FashionMNIST: datasets, sizes, loaders


@pytest.fixture(scope="module")
def fmnist():
    from alexnet import data as D

    if not D.has_idx(D.DEBIAN_FASHION_DIR):
        pytest.skip("Fashion-MNIST not installed")
    return d2l.FashionMNIST(batch_size=16)


def test_train_and_val_are_datasets(fmnist):
    assert (len(fmnist.train), len(fmnist.val)) == (60000, 10000)
    X, y = fmnist.train[0]
    assert X.shape == (1, 28, 28) and X.dtype == torch.float32 and isinstance(y, int)
    assert fmnist.text_labels([y]) == ["ankle boot"]
    assert torch.equal(X, fmnist.train.images[0].float() / 255)
    assert torch.equal(fmnist.val[-1][0], fmnist.val[9999][0])
    with pytest.raises(IndexError):
        fmnist.val[10000]


@pytest.mark.parametrize(
    "resize, shape", [(32, (32, 32)), ((28, 56), (28, 56)), ([40, 24], (40, 24)), ((16, 16), (16, 16))]
)
def test_resize_as_int_or_any_pair(fashion_dir, resize, shape):
    data = d2l.FashionMNIST(batch_size=8, resize=resize)
    assert data.train[3][0].shape == (1, *shape)
    X, y = next(iter(data.val_dataloader()))
    assert X.shape == (8, 1, *shape) and y.shape == (8,)


@pytest.mark.parametrize("resize", ["big", (28,), (0, 28)])
def test_a_bad_resize_is_refused_in_one_line(fashion_dir, resize):
    with pytest.raises((TypeError, ValueError), match="resize="):
        d2l.FashionMNIST(resize=resize)


def test_upsampling_matches_pillow_within_a_grey_level(fmnist):
    """What torchvision's Resize((224, 224)) + ToTensor do to a PIL image, per image."""
    ds = d2l.ImageDataset(fmnist.val.images[:4], fmnist.val.labels[:4], (224, 160))
    for i in range(4):
        pil = Image.fromarray(fmnist.val.images[i, 0].numpy(), mode="L").resize((160, 224), Image.BILINEAR)
        reference = torch.from_numpy(np.array(pil)).float() / 255
        assert (ds[i][0][0] - reference).abs().max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("size", [(224, 160), (16, 16), (40, 20)], ids=["upsampled", "shrunk", "both"])
def test_images_are_scaled_and_resized_as_pillow_does_in_floats(fmnist, size):
    """A batch of the device loader, and each image of the dataset, against Pillow's float-mode
    bilinear resize of x / 255: antialiased where a side shrinks, as torchvision's Resize on a PIL
    image is (the training runs' transform does not antialias). No normalisation, as the chapter."""
    images, labels = fmnist.val.images[:5], fmnist.val.labels[:5]
    ds = d2l.ImageDataset(images, labels, size)
    reference = resize_reference(images.float() / 255, size, antialias=True)
    X, y = next(iter(d2l.DeviceLoader(ds, None, 5, shuffle=False)))
    assert X.shape == (5, 1, *size) and X.dtype == torch.float32 and torch.equal(y, labels)
    torch.testing.assert_close(X, reference, atol=2e-6, rtol=0)
    torch.testing.assert_close(torch.stack([ds[i][0] for i in range(5)]), reference, atol=2e-6, rtol=0)


def test_a_subset_keeps_the_fast_path_and_gives_the_same_batches(fmnist):
    data = d2l.FashionMNIST(batch_size=16, resize=40)
    data.val = torch.utils.data.Subset(torch.utils.data.Subset(data.val, range(100, 200)), range(10, 50))
    fast = data.val_dataloader()
    assert isinstance(fast, d2l.DeviceLoader) and len(fast) == 3  # 40 images: 16 + 16 + 8
    slow = torch.utils.data.DataLoader(data.val, batch_size=16)  # the d2l way, image by image
    for (X, y), (X_ref, y_ref) in zip(fast, slow, strict=True):
        assert torch.equal(y, y_ref)
        torch.testing.assert_close(X, X_ref, atol=1e-6, rtol=0)
    assert torch.equal(next(iter(fast))[1], fmnist.val.labels[110:126])


def test_training_order_is_a_new_shuffle_each_pass_and_follows_the_seed(fashion_dir):
    data = d2l.FashionMNIST(batch_size=64)
    data.train = torch.utils.data.Subset(data.train, range(64))
    loader = data.train_dataloader()
    torch.manual_seed(1)
    a, b = (next(iter(loader))[1] for _ in range(2))
    torch.manual_seed(1)
    assert torch.equal(next(iter(loader))[1], a) and not torch.equal(a, b)
    assert torch.equal(a.sort().values, data.train.dataset.labels[:64].sort().values)


class Flipped(torch.utils.data.Dataset):
    """A dataset that is not ours: the loader must fall back to a DataLoader."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return 96

    def __getitem__(self, i):
        X, y = self.base[i]
        return X.flip(-1), y


def test_a_foreign_dataset_goes_through_a_dataloader_and_trains(fashion_dir, capsys):
    data = d2l.FashionMNIST(batch_size=32, num_workers=0)
    data.train, data.val = Flipped(data.train), Flipped(data.val)
    loader = data.train_dataloader()
    assert isinstance(loader, torch.utils.data.DataLoader) and loader.num_workers == 0
    model = d2l.LeNet(lr=0.1)
    d2l.Trainer(max_epochs=1).fit(model, data)
    assert "epoch 1/1  train_loss" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Trainer


class Lazy(d2l.Classifier):
    def __init__(self, lr=0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.LazyConv2d(32, kernel_size=3, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
        self.net.apply(d2l.init_cnn)

    def training_step(self, batch):
        # a one-channel image is channels_last and contiguous at once: the first activation tells
        first = self.net[0](batch[0])
        self.seen = (first.dtype, first.is_contiguous(memory_format=torch.channels_last) and first.stride(1) == 1)
        loss = super().training_step(batch)
        self.loss_dtype = loss.dtype
        return loss


def tiny(data, n=64):
    data.train = torch.utils.data.Subset(data.train, range(n))
    data.val = torch.utils.data.Subset(data.val, range(n))
    return data


def test_the_trainer_shapes_lazy_layers_with_xavier(fashion_dir):
    model = Lazy(lr=0.0)  # no learning: the weights after fit are the initial ones
    d2l.Trainer(max_epochs=1, verbose=False).fit(model, tiny(d2l.FashionMNIST(batch_size=32)))
    for layer in (model.net[0], model.net[3]):
        bound = xavier_bound(layer.weight)
        assert 0.95 * bound < layer.weight.abs().max() <= bound


def test_fp32_by_default(fashion_dir):
    model = Lazy()
    d2l.Trainer(max_epochs=1, verbose=False).fit(model, tiny(d2l.FashionMNIST(batch_size=32)))
    assert model.seen == (torch.float32, False) and model.loss_dtype == torch.float32
    assert model(torch.zeros(1, 1, 28, 28)).dtype == torch.float32


def test_fast_mode_is_channels_last_and_bf16_where_it_pays(fashion_dir, monkeypatch):
    monkeypatch.setattr(d2l, "speed", d2l.Speed())
    d2l.fast_mode()
    assert d2l.speed == d2l.Speed(bf16=True, channels_last=True)
    model = Lazy()
    trainer = d2l.Trainer(max_epochs=1, verbose=False)
    trainer.fit(model, tiny(d2l.FashionMNIST(batch_size=32)))
    bf16 = bf16_autocast("auto", torch.device("cpu"))
    assert model.seen == (torch.float32, True) or (bf16 and model.seen == (torch.bfloat16, True))
    with trainer._autocast():
        dtype = model(torch.zeros(2, 1, 28, 28)).dtype
    assert dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert model.loss_dtype == torch.float32  # the loss is taken in fp32 either way


def test_one_line_per_epoch_a_saved_board_and_no_window(fashion_dir, tmp_path, capsys):
    import matplotlib.pyplot as plt

    model = Lazy()
    trainer = d2l.Trainer(max_epochs=2)
    history = trainer.fit(model, tiny(d2l.FashionMNIST(batch_size=16)))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert f"(board: {tmp_path / 'd2l-board-Lazy.png'})" in lines[0]
    assert Image.open(trainer.board_path).size[0] > 100
    assert plt.get_fignums() == []  # nothing opened through pyplot
    assert [h["epoch"] for h in history] == [1, 2] and history[1]["images_per_s"] > 0
    # d2l's board: 2 train points per epoch (4 batches: x = mean of 0/4 and 1/4, ...), 1 validation point
    assert [p.x for p in model.board.data["train_loss"]] == [0.125, 0.625, 1.125, 1.625]
    assert [p.x for p in model.board.data["val_acc"]] == [1, 2]
    assert history[1]["val_acc"] == pytest.approx(model.board.data["val_acc"][1].y)


class LinearRegression(d2l.Module):
    """The book's §3 style: a Module with its own loss, trained on a user's DataModule."""

    def __init__(self, lr):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.LazyLinear(1)

    def loss(self, y_hat, y):
        return nn.functional.mse_loss(y_hat, y)


class Synthetic(d2l.DataModule):
    def __init__(self, batch_size=32, with_val=True):
        super().__init__()
        self.save_hyperparameters()
        self.X = d2l.randn(256, 2)
        self.y = d2l.matmul(self.X, d2l.tensor([[2.0], [-3.4]])) + 4.2

    def get_dataloader(self, train):
        if not train and not self.with_val:
            return None
        i = slice(0, 192) if train else slice(192, None)
        return self.get_tensorloader((self.X, self.y), train, i)


@pytest.mark.parametrize("with_val", [True, False])
def test_a_users_datamodule_with_plain_dataloaders_or_no_validation(with_val):
    model = LinearRegression(lr=0.05)
    trainer = d2l.Trainer(max_epochs=3, verbose=False)
    history = trainer.fit(model, Synthetic(with_val=with_val))
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 4
    assert ("val_loss" in history[-1]) == with_val and trainer.num_val_batches == (2 if with_val else 0)


def test_gradient_clipping_caps_the_global_norm():
    model = LinearRegression(lr=0.1)
    model(torch.ones(4, 2))
    (model(torch.ones(4, 2)) * 100).sum().backward()
    d2l.Trainer(max_epochs=1).clip_gradients(1.0, model)
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert norm.item() == pytest.approx(1.0, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Helpers


def test_save_hyperparameters_and_add_to_class():
    class Net(d2l.Module):
        def __init__(self, width, lr=0.1, _private=1, skip=2):
            super().__init__()
            self.save_hyperparameters(ignore=["skip"])

    @d2l.add_to_class(Net)
    def double(self):
        return 2 * self.width

    net = Net(3)
    assert net.hparams == {"width": 3, "lr": 0.1} and not hasattr(net, "skip") and net.double() == 6


def test_helpers_the_chapters_call():
    assert d2l.cpu() == torch.device("cpu") and d2l.gpu(1) == torch.device("cuda:1")
    assert d2l.num_gpus() == torch.cuda.device_count()
    assert d2l.try_gpu() == (torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu"))
    assert d2l.try_all_gpus() == ([d2l.gpu(i) for i in range(d2l.num_gpus())] or [d2l.cpu()])
    x = d2l.arange(6, dtype=d2l.float32)
    assert d2l.reshape(x, (2, 3)).shape == (2, 3) and d2l.size(x) == 6
    assert d2l.reduce_sum(x) == 15 and d2l.reduce_mean(x) == 2.5 and d2l.argmax(x) == 5
    assert d2l.numpy(d2l.expand_dims(x, 0)).shape == (1, 6) and d2l.astype(x, d2l.int64).dtype == torch.int64
    assert d2l.transpose(d2l.reshape(x, (2, 3))).shape == (3, 2) and d2l.concat([x, x]).shape == (12,)
    assert d2l.randn(2, 3).shape == (2, 3) and d2l.plt.__name__ == "matplotlib.pyplot"
    acc = d2l.Accumulator(2)
    acc.add(1, torch.tensor(2.0))
    acc.add(3, 4)
    assert acc[0] == 4 and acc[1] == 6


def test_timer_measures_from_its_last_start(monkeypatch):
    clock = iter([10.0, 10.5, 11.25, 12.0, 12.5])  # Timer() starts, stop, stop, start, stop
    monkeypatch.setattr(d2l, "time", types.SimpleNamespace(time=lambda: next(clock)))
    timer = d2l.Timer()
    assert timer.stop() == 0.5 and timer.stop() == 1.25  # stop() does not restart, as in d2l
    timer.start()
    timer.stop()
    assert timer.times == [0.5, 1.25, 0.5] and timer.sum() == 2.25 and timer.avg() == 0.75
    assert timer.cumsum() == [0.5, 1.75, 2.25]


def test_plot_and_the_board_draw_without_a_kernel(tmp_path):
    d2l.plot(d2l.arange(5), [d2l.arange(5) ** 2, d2l.arange(5)], legend=["square", "line"])
    board = d2l.ProgressBoard(xlabel="x")
    for i in range(6):
        board.draw(i, torch.tensor(float(i)), "y", every_n=2)
    assert [p.y for p in board.data["y"]] == [0.5, 2.5, 4.5]
    buf = io.BytesIO()
    board.render().savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"
    d2l.plt.close("all")


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: d2l.FashionMNIST(batch_size=0),
            r"FashionMNIST\(batch_size=0\): batch_size must be a whole number of at least 1",
        ),
        (
            lambda: d2l.Trainer(max_epochs=-1),
            r"Trainer\(max_epochs=-1\): max_epochs must be a whole number of at least 1",
        ),
        (lambda: d2l.Trainer(max_epochs=2.5), r"max_epochs must be a whole number"),
    ],
)
def test_a_batch_size_or_epoch_count_that_cannot_train_is_refused_where_it_is_given(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_loss_that_turns_nan_is_said_on_the_epoch_line(capsys):
    class Diverging(LinearRegression):
        def forward(self, X):
            return super().forward(X) * float("nan")

    history = d2l.Trainer(max_epochs=1).fit(Diverging(lr=0.05), Synthetic())
    assert math.isnan(history[0]["train_loss"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "(train_loss, val_loss not finite: training has diverged; lower the lr?)" in line
