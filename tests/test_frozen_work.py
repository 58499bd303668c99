"""Frozen work done once: finetune-local's replay of the layers below its site, Defense-Prefix's learning
rates trained in one batched pass, and scene sets rendered once (the on-disk render cache)."""
from __future__ import annotations

import copy

import pytest
import torch

from clipedit.core.api import EditRequest
from clipedit.core.nethook import FrozenBelow, get_module
from clipedit.errors import SiteError
from clipedit.methods.finetune import FinetuneHParams, finetune
from clipedit.settings.defaults import default_layer


def _request(bundle, n: int = 3) -> EditRequest:
    size = bundle.model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    gen = torch.Generator().manual_seed(1)
    attacked = torch.randn(n, 3, size, size, generator=gen)
    return EditRequest(attacked, attacked + 0.3 * torch.randn(attacked.shape, generator=gen),
                       torch.ones(n, size, size))


@pytest.mark.parametrize("name", ["tiny_rn", "tiny_vit"])
def test_finetune_local_replay_trains_the_same_weights(name, request):
    """The replayed path (layers below the site run once) ends at the uncached run's weights and loss."""
    bundle = request.getfixturevalue(name)
    layer = default_layer(bundle)
    for n, m in bundle.model.named_modules():  # open_clip starts each residual branch's last norm at 0
        if n.endswith("bn3"):
            torch.nn.init.ones_(m.weight)
    req, hp = _request(bundle), FinetuneHParams(steps=6, lr=1e-2)
    twin = copy.deepcopy(bundle.model)
    before = get_module(twin, layer).weight.detach().clone()
    plain = finetune(twin, [get_module(twin, layer).weight], req, hp, forward=twin.encode_image)
    cached = finetune(bundle.model, [get_module(bundle.model, layer).weight], req, hp,
                      forward=bundle.model.encode_image, frozen_below=layer)
    torch.testing.assert_close(get_module(bundle.model, layer).weight, get_module(twin, layer).weight,
                               rtol=1e-5, atol=1e-6)
    assert not torch.allclose(get_module(twin, layer).weight, before)  # it trained at all
    assert cached == pytest.approx(plain, rel=1e-4, abs=1e-6)
    for (n, a), (_, b) in zip(bundle.model.named_parameters(), twin.named_parameters()):
        if n != f"{layer}.weight":
            assert torch.equal(a, b), n


def test_frozen_below_skips_the_layers_below_and_restores_them(tiny_rn):
    """After the first pass layer1's convolutions do not run; after the block they do again."""
    model, layer = tiny_rn.model, default_layer(tiny_rn)
    x = torch.randn(2, 3, 64, 64)
    runs = {"stem": 0, "above": 0}
    h1 = model.visual.layer1[0].conv1.register_forward_hook(lambda *a: runs.__setitem__("stem", runs["stem"] + 1))
    h2 = model.visual.layer4.register_forward_hook(lambda *a: runs.__setitem__("above", runs["above"] + 1))
    with torch.no_grad():
        expected = model.encode_image(x)
        runs.update(stem=0, above=0)
        with FrozenBelow(model, layer, lambda: model.encode_image(x)) as replay:
            outs = [replay() for _ in range(4)]
            assert "visual.layer1" in replay.frozen and "visual.layer4" not in replay.frozen
            assert not any(n.startswith("visual.layer3.0.conv3") for n in replay.frozen)
        assert runs == {"stem": 1, "above": 4}  # the first pass only; layer4 ran at every pass
        for out in outs:
            torch.testing.assert_close(out, expected)
        model.encode_image(x)
    h1.remove(), h2.remove()
    assert runs["stem"] == 2 and "forward" not in model.visual.layer1.__dict__


def test_frozen_below_refuses_a_trained_parameter_below_and_a_site_that_never_runs(tiny_rn):
    model, x = tiny_rn.model, torch.randn(1, 3, 64, 64)
    with pytest.raises(SiteError, match="holds a trained parameter"), \
            FrozenBelow(model, default_layer(tiny_rn), lambda: model.encode_image(x),
                        trained=[model.visual.conv1.weight]) as replay:
        replay()
    with pytest.raises(SiteError, match="does not run"), \
            FrozenBelow(model, "transformer.resblocks.0.mlp.c_proj", lambda: model.encode_image(x)) as replay:
        replay()
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_defense_prefix_batched_lrs_learn_the_separate_runs_tokens(tiny_vit):
    """One batched pass over K learning rates gives each lr the token (and loss) of its own run."""
    from clipedit.core.prompt_edits import placeholder_token_id, token_embedding_name
    from clipedit.data.prepare.typo_train import TypoSet
    from clipedit.methods.defense_prefix import DefensePrefixHParams, train_prefix, train_prefixes

    gen = torch.Generator().manual_seed(3)
    clean = torch.randn(10, 3, 64, 64, generator=gen)
    train = TypoSet(clean, clean + torch.randn(clean.shape, generator=gen), torch.arange(10) % 3,
                    ["dog"] * 10, ["cat", "dog", "car"])
    hp = DefensePrefixHParams(lrs=(0.002, 0.2, 5.0), steps=7, batch_size=4, n_train=10)
    layer, token = token_embedding_name(tiny_vit.model), placeholder_token_id(tiny_vit.tokenizer)
    templates = ["a photo of a {}.", "a {}."]
    weights = {k: v.clone() for k, v in tiny_vit.model.state_dict().items()}
    batched = train_prefixes(tiny_vit, train, templates, hp.lrs, hp, layer, token)
    separate = [train_prefix(tiny_vit, train, templates, lr, hp, layer, token) for lr in hp.lrs]
    init = torch.empty(1, 64).normal_(0.0, hp.init_std, generator=torch.Generator().manual_seed(hp.seed))
    for (vb, lb), (vs, ls) in zip(batched, separate):
        # float rounding of the wider batch only: within 1e-5 of how far the token moved (measured ~1e-6)
        assert float((vb - vs).abs().max()) <= 1e-5 * float((vs - init).abs().max())
        assert lb == pytest.approx(ls, rel=1e-5, abs=1e-6)
    assert not torch.allclose(batched[0][0], batched[2][0])  # each lr learnt its own token
    assert all(torch.equal(v, weights[k]) for k, v in tiny_vit.model.state_dict().items())
    assert all(p.requires_grad for p in tiny_vit.model.parameters())


def _same_attacks(a, b) -> bool:
    import numpy as np

    return len(a) == len(b) and all(
        np.array_equal(np.asarray(getattr(x, f)), np.asarray(getattr(y, f)))
        for x, y in zip(a, b) for f in ("clean", "attacked", "blank", "mask", "text_mask")) and all(
        (x.text, x.box, x.style, x.seed, x.font_px, x.rotation, x.perspective)
        == (y.text, y.box, y.style, y.seed, y.font_px, y.rotation, y.perspective)
        and (x.note_mask is None) == (y.note_mask is None) for x, y in zip(a, b))


def test_scene_sets_and_signs_render_once_then_come_from_the_cache(cache_dir, monkeypatch):
    """A second call reads the cache (the renderer raises if called) and returns the same pictures; a changed
    argument misses; the training split's preprocessed tensors are identical."""
    import numpy as np

    import clipedit.mini.world as world_module
    from clipedit.attacks import StyleSampler
    from clipedit.data.prepare.typo_train import typographic_training_set
    from clipedit.models.bundle import ModelBundle

    world = world_module.MiniWorld()
    first, labels = world.attack_set(6, 11, ["dog", "ipod"], split="validation")
    signs, sign_labels = world.signs(5, 4)
    bundle = ModelBundle(model=torch.nn.Identity(), preprocess=lambda im: torch.from_numpy(np.array(im)).float(),
                         tokenizer=None, name="stub", world=world)
    train = typographic_training_set(bundle, 4, 0)
    assert list((cache_dir / "scenes").glob("*.safetensors"))

    def refuse(*args, **kwargs):
        raise AssertionError("rendered again")

    monkeypatch.setattr(world_module, "render_attack", refuse)
    monkeypatch.setattr(world_module, "draw_scene", refuse)
    again, labels2 = world.attack_set(6, 11, ["dog", "ipod"], split="validation")
    assert labels2 == labels and _same_attacks(first, again)
    signs2, sign_labels2 = world.signs(5, 4)
    assert sign_labels2 == sign_labels and all(np.array_equal(np.asarray(a), np.asarray(b))
                                               for a, b in zip(signs, signs2))
    train2 = typographic_training_set(bundle, 4, 0)
    assert torch.equal(train.clean, train2.clean) and torch.equal(train.attacked, train2.attacked)
    assert torch.equal(train.labels, train2.labels) and train.words == train2.words
    for changed in (lambda: world.attack_set(6, 12, ["dog", "ipod"], split="validation"),
                    lambda: world.attack_set(7, 11, ["dog", "ipod"], split="validation"),
                    lambda: world.attack_set(6, 11, ["dog"], split="validation"),
                    lambda: world.attack_set(6, 11, ["dog", "ipod"], split="test"),
                    lambda: world.attack_set(6, 11, "other", sampler=StyleSampler.exemplar()),
                    lambda: world.signs(5, 5)):
        with pytest.raises(AssertionError, match="rendered again"):
            changed()
    monkeypatch.setenv("CLIPEDIT_SCENE_CACHE", "0")  # off: every call renders
    with pytest.raises(AssertionError, match="rendered again"):
        world.attack_set(6, 11, ["dog", "ipod"], split="validation")


def test_a_tampered_scene_entry_is_rendered_again(cache_dir):
    from safetensors.torch import load_file, save_file

    import clipedit.mini.world as world_module

    first, _ = world_module.attack_set(3, 2)
    (path,) = (cache_dir / "scenes").glob("*.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["attacked"][0] = 255 - tensors["attacked"][0]
    save_file(tensors, str(path), metadata=meta)
    again, _ = world_module.attack_set(3, 2)
    assert _same_attacks(first, again)


def test_frozen_below_copies_outputs_the_pass_changes_in_place():
    """A kept output changed in place by the glue after it is handed out as a copy at every replay; a forward
    hook on a replayed module acts on the replayed output once, as on the computed one."""

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

        def forward(self, x):
            h, g = self.a(x), self.b(x)
            h.add_(1.0)  # in place on a's output
            return self.c(h + g)

    torch.manual_seed(0)
    toy, x = Toy(), torch.randn(3, 4)
    toy.b.register_forward_hook(lambda mod, args, out: out + 1.0)  # an additive hook: applied once per pass
    with torch.no_grad():
        expected = toy(x)
        with FrozenBelow(toy, "c", lambda: toy(x)) as replay:
            outs = [replay() for _ in range(4)]
            assert replay.frozen == ["a", "b"] and replay._shared == {"b"}
    for out in outs:
        torch.testing.assert_close(out, expected)
