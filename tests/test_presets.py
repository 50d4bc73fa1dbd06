"""``lcbench list``'s preset table (:mod:`harness.report.presets`): parameter counts without
building any weights."""
from __future__ import annotations

from harness.api import registry
from harness.report.presets import count_params, preset_table


def test_the_table_has_the_asked_architectures_presets_and_counts():
    table = preset_table(["full_attention"])
    assert table["arch"].unique().tolist() == ["full_attention"]
    assert table["preset"].tolist() == registry.preset_names("full_attention")
    row = table.set_index("preset").loc["125m"]
    # tied embeddings: the total adds one vocab x d_model matrix (128256 x 768 = 98.50M)
    assert (row["layers"], row["d_model"], row["vocab"]) == (12, 768, 128256)
    assert (row["params_non_embedding"], row["params_total"]) == ("84.97M", "183.47M")


def test_counting_a_presets_parameters_allocates_no_weights(monkeypatch):
    """The 1.3b presets, built for real, take gigabytes just to be counted by ``lcbench list``."""
    built = []
    build = registry.build_model
    monkeypatch.setattr(registry, "build_model", lambda config: built.append(build(config)) or built[-1])
    non_embedding, total = count_params("swa", "tiny")
    assert 0 < non_embedding < total
    assert {p.device.type for p in built[0].parameters()} == {"meta"}
