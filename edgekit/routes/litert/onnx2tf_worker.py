"""Runs onnx2tf in its own process (TensorFlow's start-up, logging and memory stay out of the caller).

Usage: python onnx2tf_worker.py spec.json (needs only onnx2tf, not edgekit, on the path)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time


def watch_parent() -> None:
    """onnx2tf starts programs of its own (onnxsim): when edgekit is gone, take the whole process group with us."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def main(spec_path: str) -> int:
    watch_parent()
    with open(spec_path) as handle:
        spec = json.load(handle)
    import onnx2tf

    onnx2tf.convert(
        input_onnx_file_path=spec["onnx"],
        output_folder_path=spec["out"],
        output_integer_quantized_tflite=spec["int8"],
        quant_type="per-channel",
        custom_input_op_name_np_data_path=spec["calibration"],
        copy_onnx_input_output_names_to_tflite=True,
        non_verbose=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
