"""The chapter's own cells run with only the import line changed."""

import torch
from torch import nn

from alexnet import d2l


# ---- the chapter's cell, verbatim (D2L 8.1.2) ----
class AlexNet(d2l.Classifier):
    def __init__(self, lr=0.1, num_classes=10):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.LazyConv2d(96, kernel_size=11, stride=4, padding=1),
            nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
            nn.LazyConv2d(256, kernel_size=5, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.LazyConv2d(384, kernel_size=3, padding=1), nn.ReLU(),
            nn.LazyConv2d(384, kernel_size=3, padding=1), nn.ReLU(),
            nn.LazyConv2d(256, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2), nn.Flatten(),
            nn.LazyLinear(4096), nn.ReLU(), nn.Dropout(p=0.5),
            nn.LazyLinear(4096), nn.ReLU(),nn.Dropout(p=0.5),
            nn.LazyLinear(num_classes))
        self.net.apply(d2l.init_cnn)
# ---- end of the chapter's cell ----  # fmt: skip


def test_chapter_layer_summary_cell_prints_the_chapter_shapes(capsys):
    AlexNet().layer_summary((1, 1, 224, 224))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Conv2d output shape:\t torch.Size([1, 96, 54, 54])"
    assert lines[12] == "MaxPool2d output shape:\t torch.Size([1, 256, 5, 5])"
    assert lines[13] == "Flatten output shape:\t torch.Size([1, 6400])"
    assert lines[-1] == "Linear output shape:\t torch.Size([1, 10])"


def test_chapter_class_ends_up_xavier_initialised():
    torch.manual_seed(0)
    model = AlexNet(lr=0.01)
    assert model.lr == 0.01 and model.num_classes == 10  # save_hyperparameters
    model(torch.zeros(1, 1, 224, 224))
    for layer in model.net:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
            bound = (6 / (fan_in + fan_out)) ** 0.5
            # PyTorch's default (kaiming_uniform with a=sqrt(5)) has bound 1/sqrt(fan_in): for
            # conv2 0.0289 against Xavier's 0.0221. The maximum tells which one ran.
            assert layer.weight.abs().max() <= bound
            assert layer.weight.abs().max() > 0.95 * bound


def test_chapter_training_cell_runs_on_the_fast_pipeline(fashion_dir):
    # The chapter's cell, with the data cut down so that AlexNet at 224x224 trains in seconds on a CPU.
    model = AlexNet(lr=0.01)
    data = d2l.FashionMNIST(batch_size=128, resize=(224, 224))
    data.train, data.val = data.train.subset(256), data.val.subset(128)
    trainer = d2l.Trainer(max_epochs=1, num_gpus=1)
    trainer.fit(model, data)
    row = trainer.history[-1]
    assert set(row) >= {"train_loss", "val_loss", "val_acc"} and 0 < row["train_loss"] < 10
    X, y = next(iter(data.train_dataloader()))
    assert X.shape == (128, 1, 224, 224) and X.dtype == torch.float32 and 0 <= X.min() and X.max() <= 1
    assert data.text_labels(y[:2].tolist())[0] in data.classes
