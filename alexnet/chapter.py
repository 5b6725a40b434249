"""The chapter's own figures explained: §8.1's "164 MB" and "81 MFLOPs" of the last two hidden
layers, the conv/FC split of the arithmetic, LeNet vs AlexNet (``alexnet analyze --chapter``)."""

from __future__ import annotations

from .tracing import meta_model, trace


def chapter_figures() -> dict:
    """§8.1: "the last two hidden layers require matrices of size 6400x4096 and 4096x4096 ...
    164 MB of memory and 81 MFLOPs"; the conv/FC FLOP split; LeNet vs AlexNet."""
    weights = 6400 * 4096 + 4096 * 4096
    biases = 4096 + 4096
    macs = weights  # one multiply-add per weight per image
    figs = {
        "fc_weights": weights,
        "fc_biases": biases,
        "fc_weight_bytes_fp32": 4 * weights,
        "fc_weight_MiB": 4 * weights / 2**20,
        "fc_weight_MB": 4 * weights / 1e6,
        "fc_with_bias_MiB": 4 * (weights + biases) / 2**20,
        "fc_multiply_adds": macs,
        "fc_flops": 2 * macs,
        "fc_MFLOPs": 2 * macs / 1e6,
        "fc_binary_MFLOPs": 2 * macs / 2**20,
    }

    def rows_of(name, shape):
        return trace(meta_model(name, shape[1]), shape, device="meta")

    for ch in (1, 3):
        rows = rows_of("alexnet", (1, ch, 224, 224))
        conv = sum(r.flops for r in rows if r.name == "Conv2d")
        fc = sum(r.flops for r in rows if r.name == "Linear")
        figs[f"conv_flops_{ch}ch"], figs[f"fc_flops_{ch}ch"], figs[f"conv_fc_ratio_{ch}ch"] = conv, fc, conv / fc
    lenet, alex = rows_of("lenet", (1, 1, 28, 28)), rows_of("alexnet", (1, 1, 224, 224))
    figs["lenet_flops"], figs["alexnet_flops"] = sum(r.flops for r in lenet), sum(r.flops for r in alex)
    figs["lenet_params"], figs["alexnet_params"] = sum(r.params for r in lenet), sum(r.params for r in alex)
    figs["flops_ratio"] = figs["alexnet_flops"] / figs["lenet_flops"]
    figs["params_ratio"] = figs["alexnet_params"] / figs["lenet_params"]
    return figs


def format_chapter(f: dict) -> str:
    return "\n".join(
        [
            "The chapter: 'the last two hidden layers (6400x4096 and 4096x4096) ... 164 MB of memory and 81 MFLOPs'",
            f"  weights          {f['fc_weights']:,} (+{f['fc_biases']:,} biases) = 25 Mi + 16 Mi = 41 Mi",
            (
                f"  fp32 bytes       {f['fc_weight_bytes_fp32']:,} = {f['fc_weight_MiB']:.2f} MiB = {f['fc_weight_MB']:.1f} MB "
                f"(with biases {f['fc_with_bias_MiB']:.2f} MiB): the chapter's '164 MB' is MiB"
            ),
            (
                f"  multiply-adds    {f['fc_multiply_adds']:,} per image = {f['fc_flops']:,} FLOPs "
                f"= {f['fc_MFLOPs']:.1f} MFLOPs (10^6) = {f['fc_binary_MFLOPs']:.1f} x 2^20 FLOPs"
            ),
            "  no unit gives 81: the nearest reading is 2 x 41 Mi = 82 x 2^20 FLOPs, the same binary prefix as '164 MB';",
            (
                f"  in the units used here (10^6, a multiply-add = 2 FLOPs) it is {f['fc_MFLOPs']:.1f} MFLOPs, "
                f"or {f['fc_multiply_adds'] / 1e6:.1f} M multiply-adds"
            ),
            "",
            "Convolution vs fully connected FLOPs, alexnet at 224x224, per image:",
            *(
                f"  {ch} input channel{'s' if ch > 1 else ''}: conv {f[f'conv_flops_{ch}ch']:,}  fc {f[f'fc_flops_{ch}ch']:,}  "
                f"ratio {f[f'conv_fc_ratio_{ch}ch']:.1f}"
                for ch in (1, 3)
            ),
            "",
            "LeNet (28x28) vs AlexNet (224x224), 1 channel, 10 classes, per image:",
            f"  FLOPs       lenet {f['lenet_flops']:,}  alexnet {f['alexnet_flops']:,}  ratio {f['flops_ratio']:,.0f}x",
            f"  parameters  lenet {f['lenet_params']:,}  alexnet {f['alexnet_params']:,}  ratio {f['params_ratio']:,.0f}x",
        ]
    )
