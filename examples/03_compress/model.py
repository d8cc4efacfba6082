"""The model of example 03: a wider digits CNN (438k parameters) whose trained weights ship beside this file.

Compression needs the nn.Module, so the CLI gets a factory: run.sh puts this folder on PYTHONPATH and passes
`model:make_net`. `python model.py` re-creates the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "digits_cnn_wide.pt"


def make_net() -> torch.nn.Module:
    import sys

    sys.path.insert(0, str(HERE.parent.parent))
    from examples.digits import DigitsCNN

    model = DigitsCNN(width=48, hidden=256)
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()


if __name__ == "__main__":  # re-create the shipped weights
    import sys

    sys.path.insert(0, str(HERE.parent.parent))
    from examples.digits import accuracy, train_digits_cnn

    net, data = train_digits_cnn(width=48, hidden=256, seed=0)
    torch.save(net.state_dict(), WEIGHTS)
    print(f"{WEIGHTS.name}: eval accuracy {accuracy(net, data['x_eval'], data['y_eval']):.4f}")
