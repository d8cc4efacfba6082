"""check.py's reading of the host (edgekit/standalone/check.py): where onnxruntime's INT8 kernels cannot be trusted."""

from __future__ import annotations

import platform

from edgekit.standalone.check import saturating_host


def test_an_x86_cpu_without_vnni_is_known_to_saturate_and_arm_is_not(tmp_path, monkeypatch):
    """onnxruntime's U8S8 kernels saturate on x86-64 without VNNI (AVX2, AVX-512 without VNNI): edgekit and check.py
    then run the Q/DQ model as written. With VNNI (AVX-512 or AVX), and on ARM64, the kernels are exact."""
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    for flags, saturates in (("fpu sse4_2 avx2 fma", True), ("avx2 avx512f avx512bw", True),
                             ("avx2 avx512f avx512_vnni", False), ("avx2 avx_vnni", False)):
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        assert saturating_host(info) is saturates, flags
    assert saturating_host(tmp_path / "missing") is False  # unreadable: the runtime's own kernels
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    info.write_text("Features\t: fp asimd asimddp\n")
    assert saturating_host(info) is False
