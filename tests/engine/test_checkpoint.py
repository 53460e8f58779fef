import pytest
import torch

from fastdet.engine import checkpoint


class Tiny(torch.nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.fc = torch.nn.Linear(4, n)

    def forward(self, x):
        return self.fc(x)


def _save(path, model, **kw):
    args = dict(model=model, model_name="tiny", model_kwargs={"n": 3}, classes=["__background__", "a", "b"],
                label_to_cat_id={1: 1, 2: 7}, epoch=2)
    args.update(kw)
    return checkpoint.save(path, **args)


def test_round_trip_keeps_everything(tmp_path):
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = _save(tmp_path / "sub" / "last.pt", model, optimizer=opt, config={"lr": 0.1})
    assert not list(tmp_path.glob("sub/*.tmp"))
    state = checkpoint.load(path)
    assert state["model_name"] == "tiny" and state["epoch"] == 2 and state["config"] == {"lr": 0.1}
    assert state["label_to_cat_id"] == {1: 1, 2: 7}
    fresh = Tiny()
    checkpoint.load_model_state(fresh, state["model"], source="test")
    assert torch.equal(fresh.fc.weight, model.fc.weight)
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(state["optimizer"])
    assert torch.equal(opt2.state[fresh.fc.weight]["momentum_buffer"], opt.state[model.fc.weight]["momentum_buffer"])


def test_missing_file_and_foreign_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.pt")
    raw = tmp_path / "raw.pt"
    torch.save(Tiny().state_dict(), raw)
    with pytest.raises(ValueError, match="not a fastdet checkpoint"):
        checkpoint.load(raw)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="could not be read"):
        checkpoint.load(junk)


def test_mismatched_weights_name_the_keys(tmp_path):
    state = checkpoint.load(_save(tmp_path / "a.pt", Tiny(3)))
    with pytest.raises(ValueError, match=r"shape mismatches: fc.weight \(3, 4\) vs model \(5, 4\)"):
        checkpoint.load_model_state(Tiny(5), state["model"], source="test")
    state["model"]["extra"] = torch.zeros(1)
    del state["model"]["fc.bias"]
    with pytest.raises(ValueError, match="missing keys: fc.bias.*unexpected keys: extra"):
        checkpoint.load_model_state(Tiny(3), state["model"], source="test")


def test_build_model_checks_the_name(tmp_path):
    state = checkpoint.load(_save(tmp_path / "a.pt", Tiny()))
    with pytest.raises(ValueError, match="holds a 'tiny' model, not 'other'"):
        checkpoint.build_model(state, model_name="other")
