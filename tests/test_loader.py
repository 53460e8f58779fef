"""import fastdet: build information and a readable failure when torch does not match."""

import pytest
import torch

import fastdet
from fastdet import _build_config, _loader


def test_build_info_matches_the_running_torch():
    info = fastdet.build_info()
    assert info["version"] == fastdet.__version__ == _build_config.VERSION
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert isinstance(info["with_cuda"], bool)
    assert info["with_cuda"] == _build_config.WITH_CUDA
    if info["with_cuda"]:
        assert info["cuda_version"] and info["cuda_archs"]
    assert str(fastdet.LIBRARY_PATH) in torch.ops.loaded_libraries


def test_torch_mismatch_is_one_readable_sentence(monkeypatch):
    monkeypatch.setattr(_build_config, "TORCH_VERSION", "1.0.0")
    with pytest.raises(ImportError, match=r"fastdet 0\.\d+\.\d+ was built for torch 1\.0\.0, found \d+\.\d+") as e:
        _loader.load()
    assert "\n" not in str(e.value)


def test_missing_library_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(_loader, "LIBRARY_PATH", tmp_path / "libfastdet.so")
    with pytest.raises(ImportError, match=r"libfastdet\.so is missing"):
        _loader.load()
