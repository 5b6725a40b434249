"""The one way the package draws: matplotlib's pyplot on the Agg backend, imported on first use."""


def pyplot():
    """pyplot, drawing to files: Agg needs no display (a server, CI, a training run over ssh), and
    matplotlib is imported only by the commands that draw, not by every `alexnet` start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
