"""Class weights in the cross-entropy (``train --class-weights``, issue 15 part 2): what each choice puts in the loss,
the prior the card then says the probabilities assume, and where the choice is refused or kept."""

from __future__ import annotations

import numpy as np
import pytest

from phenotyping.analysis.prior import (
    CLASS_WEIGHTINGS, SQRT_PREFIX, class_weight_power, class_weighting_text, posterior_prior,
)
from phenotyping.training.data import class_weights


def test_power_runs_from_unweighted_to_balanced():
    y = np.array([0] * 8 + [1] * 2)                     # class 2 absent
    balanced = class_weights(y, 3)
    assert balanced.tolist() == pytest.approx([10 / 24, 10 / 6, 0.0])
    assert class_weights(y, 3, 0.5).tolist() == pytest.approx(np.sqrt(balanced).tolist())
    assert class_weights(y, 3, 0.0).tolist() == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("kind", sorted(CLASS_WEIGHTINGS))
def test_the_card_prior_is_the_training_counts_times_the_loss_weights(kind):
    """Weighted cross-entropy fits posteriors under a prior proportional to n_k · w_k: the card must say so, or EM
    "corrects" a composition that never shifted."""
    counts = np.array([72, 18, 2, 0])
    y = np.repeat(np.arange(4), counts)
    w = class_weights(y, 4, class_weight_power(kind))
    expect = counts * w / (counts * w).sum()
    prior = posterior_prior(list("abcd"), counts, class_weighting_text(kind))
    assert list(prior["classes"].values()) == pytest.approx(expect.tolist())


def test_an_unknown_weighting_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="'focal' is not one of balanced, sqrt, none"):
        class_weighting_text("focal")
    with pytest.raises(ValueError, match="is not one of"):
        class_weight_power("focal")


def test_train_puts_the_chosen_weights_in_the_loss_and_the_card(tmp_path, monkeypatch):
    import phenotyping.training.losses as losses
    from phenotyping.training.train import TrainConfig, train
    from test_adapt import write_site

    labels = ["disc"] * 30 + ["ring"] * 10
    manifest = write_site(tmp_path / "a", 40, seed=0, labels=labels)
    seen = []
    real = losses.make_loss

    def spy(kind, num_targets, class_weight=None):
        seen.append(None if class_weight is None else class_weight.numpy().copy())
        return real(kind, num_targets, class_weight)

    monkeypatch.setattr(losses, "make_loss", spy)
    card = train(manifest, "cell_type", tmp_path / "m", config=TrainConfig(
        arch="test_hybrid", epochs=1, batch_size=16, class_weights="sqrt"), log=lambda m: None)
    n = np.array([card["training"]["class_proportions"][c] for c in card["classes"]])
    assert seen[0] == pytest.approx(np.sqrt(1 / (2 * n)), rel=1e-5)
    assert card["training"]["class_weighting"].startswith(SQRT_PREFIX)
    assert card["training"]["config"]["class_weights"] == "sqrt"
    prior = np.array([card["training"]["posterior_prior"]["classes"][c] for c in card["classes"]])
    assert prior == pytest.approx(np.sqrt(n) / np.sqrt(n).sum())


def test_cli_refuses_class_weights_for_a_classical_model(tmp_path, capsys):
    from phenotyping.__main__ import main
    from test_adapt import write_site

    manifest = write_site(tmp_path / "a", 12, seed=0)
    rc = main(["train", "--manifest", str(manifest), "--label-column", "cell_type", "--arch", "knn",
               "--class-weights", "none", "--out", str(tmp_path / "m")])
    assert rc != 0 and "--class-weights none is for neural models" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_fine_tuning_keeps_the_parents_weighting_and_refuses_another(tmp_path, capsys):
    from phenotyping.__main__ import main
    from phenotyping.models.checkpoint import load_model_dir
    from phenotyping.training.finetune import FinetuneConfig, _train_config
    from phenotyping.training.train import TrainConfig, train
    from test_adapt import write_site

    manifest = write_site(tmp_path / "a", 40, seed=0)
    parent = tmp_path / "parent"
    train(manifest, "cell_type", parent, config=TrainConfig(arch="test_hybrid", epochs=1, batch_size=16,
                                                            class_weights="none"), log=lambda m: None)
    assert _train_config(load_model_dir(parent), FinetuneConfig()).class_weights == "none"
    site_b = write_site(tmp_path / "b", 20, seed=1)
    rc = main(["train", "--init-from", str(parent), "--manifest", str(site_b), "--label-column", "cell_type",
               "--class-weights", "balanced", "--out", str(tmp_path / "child")])
    assert rc == 2 and "drop --class-weights" in capsys.readouterr().err
    assert not (tmp_path / "child").exists()
