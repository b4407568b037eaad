from conftest import SEED
from test_arch import SEED_COUNTS

from nas.arch.costs import DEFINITIONS
from nas.arch.spec import costs, load_arch
from nas.arch.summary import summary_table
from nas.data.datasets import MNIST


def test_summary_table_lists_seed_numbers():
    table = summary_table(load_arch(SEED))
    assert "Total params: 9,274" in table
    for count in SEED_COUNTS:
        assert f" {count:,} " in table
    assert table.count("Conv2d-") == 8 and "Linear" not in table


def test_summary_shows_costs_per_layer_and_totals_with_definitions():
    arch = load_arch(SEED)
    c, table = costs(arch), summary_table(arch)
    rows = [line for line in table.splitlines() if "Conv2d-" in line]
    for row, step in zip(rows, [s for s in c.steps if s.macs], strict=True):
        assert f" {step.macs:,} " in row and f" {step.activation:,}" in row
    assert "9,408*" in rows[2]  # the peak is marked on its layer
    assert "MACs per image: 1,217,160" in table
    assert "int8 9,408 B (9.41 KB), fp32 37,632 B (37.63 KB)" in table
    assert f"int8 {c.model_int8:,} B" in table and f"fp32 {c.model_fp32:,} B" in table
    flat = " ".join(table.split())
    for definition in DEFINITIONS:
        assert " ".join(definition.split()) in flat
    assert "folded" not in table.split("=" * 20)[1]  # the seed's BatchNorms follow ReLUs


def test_model_card_lists_the_costs():
    from nas.ship.export import model_card

    arch = load_arch(SEED)
    run = {"test_acc": 0.995}
    metrics = dict(
        params=9274,
        receptive_field=38,
        seeds=[run],
        test_acc_mean=0.995,
        test_acc_min=0.995,
        test_acc_max=0.995,
        epochs=20,
        train_images=60_000,
        train_seconds=60.0,
        device="cpu",
        torchscript="scripted",
        dataset=MNIST.to_dict(),
        background="dark",
        **run,
    )
    card, c = model_card(arch, metrics), costs(arch)
    assert "| MACs per image | 1,217,160 |" in card
    assert f"| peak activation memory | {c.activation_int8:,} B at int8, {c.activation_fp32:,} B at fp32 |" in card
    assert f"| model bytes (deployed) | {c.model_int8:,} B at int8, {c.model_fp32:,} B at fp32 |" in card


def flat(text: str) -> str:
    """Text with its line wrapping undone."""
    return " ".join(text.split())


def test_summary_and_card_say_which_batchnorms_fold():
    from dataclasses import replace

    from nas.arch.spec import Conv
    from nas.ship.export import model_card

    seed = load_arch(SEED)
    folded = replace(
        seed, layers=[replace(layer, order="bn_relu") if isinstance(layer, Conv) else layer for layer in seed.layers]
    )
    assert (
        "BatchNorm as deployed: 0 of 7 directly after a conv, folded into it (order bn_relu); "
        "7 after a ReLU, kept as a scale and shift (relu_bn)" in flat(summary_table(seed))
    )
    assert "7 of 7 directly after a conv, folded into it (order bn_relu); 0 after a ReLU" in flat(summary_table(folded))
    run = {"test_acc": 0.99}
    metrics = dict(
        params=9274,
        receptive_field=38,
        seeds=[run],
        test_acc_mean=0.99,
        test_acc_min=0.99,
        test_acc_max=0.99,
        epochs=1,
        train_images=1000,
        train_seconds=1.0,
        device="cpu",
        torchscript="script",
        onnx=None,
        dataset=MNIST.to_dict(),
        background="dark",
        **run,
    )
    card = flat(model_card(folded, metrics))
    assert (
        "7 of 7 directly after a conv, folded into it" in card
        and "No ONNX files: the onnx extra was not installed at export" in card
    )
