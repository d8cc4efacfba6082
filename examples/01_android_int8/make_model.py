"""Re-create the bundled example: a digits CNN saved as an ExportedProgram, with calibration and eval data.

    python examples/01_android_int8/make_model.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from examples.digits import accuracy, train_digits_cnn  # noqa: E402


def main() -> None:
    model, data = train_digits_cnn(seed=0)
    example = (torch.from_numpy(data["x_calib"][:1]),)
    torch.export.save(torch.export.export(model, example), HERE / "digits_cnn.pt2")
    np.savez_compressed(HERE / "calibration.npz", x=data["x_calib"], y=data["y_calib"])
    np.savez_compressed(HERE / "eval.npz", x=data["x_eval"], y=data["y_eval"])
    print(f"digits_cnn.pt2: eval accuracy {accuracy(model, data['x_eval'], data['y_eval']):.4f}")


if __name__ == "__main__":
    main()
