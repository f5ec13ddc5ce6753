"""Encoders: registry, shapes, determinism, safe weight loading."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from models import EncoderError, create_encoder, encoder_card, list_encoders
from pipeline.imagery.embedding import embed_chips

NAMES = ["spectral", "vit_tiny", "resnet_tiny", "regnet_tiny"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bands", [3, 6])
@pytest.mark.parametrize("size", [8, 32])
def test_every_encoder_embeds(name, bands, size):
    enc = create_encoder(name, in_chans=bands, seed=1)
    chips = np.random.default_rng(0).uniform(0, 0.4, (5, bands, size, size)).astype(np.float32)
    chips[0, :, :2] = np.nan
    out = embed_chips(enc, chips, batch_size=2, device="cpu")
    assert out.shape == (5, enc.embed_dim)
    assert np.isfinite(out).all()
    again = embed_chips(create_encoder(name, in_chans=bands, seed=1), chips, batch_size=4, device="cpu")
    np.testing.assert_array_equal(out, again)  # deterministic on CPU, independent of batch size


def test_spectral_features_are_the_statistics():
    enc = create_encoder("spectral", in_chans=6)
    chip = np.random.default_rng(1).uniform(0.05, 0.5, (1, 6, 10, 10)).astype(np.float32)
    out = embed_chips(enc, chip, device="cpu")[0]
    names = enc.feature_names()
    feats = dict(zip(names, out))
    assert feats["red_mean"] == pytest.approx(chip[0, 2].mean(), rel=1e-5)
    assert feats["nir_std"] == pytest.approx(chip[0, 3].std(), rel=1e-4)
    assert feats["swir1_q50"] == pytest.approx(np.quantile(chip[0, 4], 0.5), rel=1e-5)
    ndvi = (chip[0, 3] - chip[0, 2]) / (chip[0, 3] + chip[0, 2])
    assert feats["ndvi_mean"] == pytest.approx(ndvi.mean(), rel=1e-4)


def test_unknown_name_lists_close_matches():
    with pytest.raises(EncoderError) as exc:
        create_encoder("vit_tiyn", in_chans=3)
    assert "vit_tiny" in exc.value.fix
    assert "vit_tiny" in list_encoders()


def test_band_mismatch():
    enc = create_encoder("vit_tiny", in_chans=6)
    with pytest.raises(EncoderError) as exc:
        embed_chips(enc, np.zeros((2, 3, 32, 32), np.float32), device="cpu")
    assert "6 input bands" in exc.value.expected


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_weights_roundtrip(tmp_path, fmt):
    src = create_encoder("vit_tiny", in_chans=6, seed=5)
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(path))
    else:
        torch.save(src.model.state_dict(), path)
    dst = create_encoder("vit_tiny", in_chans=6, seed=99, weights=path)
    x = np.random.default_rng(2).uniform(0, 0.3, (3, 6, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(embed_chips(src, x, device="cpu"), embed_chips(dst, x, device="cpu"))
    card = encoder_card(dst)
    assert card["weights_file_sha256"] and len(card["weights_file_sha256"]) == 64
    assert card["state_sha256"] == encoder_card(src)["state_sha256"]


def test_rgb_checkpoint_adapted_to_six_bands(tmp_path):
    rgb = create_encoder("resnet_tiny", in_chans=3, seed=5)
    path = tmp_path / "rgb.pt"
    torch.save(rgb.model.state_dict(), path)
    six = create_encoder("resnet_tiny", in_chans=6, weights=path)
    w3 = rgb.model.conv1[0].weight  # the deep stem's first convolution
    w6 = six.model.conv1[0].weight
    assert w6.shape[1] == 6
    torch.testing.assert_close(w6.sum(dim=1), w3.sum(dim=1))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_object_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"weight": Evil()}, fh, protocol=2)
    with pytest.raises(EncoderError) as exc:
        create_encoder("vit_tiny", in_chans=6, weights=path)
    assert "loaded safely" in exc.value.got
    assert "pwned" not in capsys.readouterr().out  # the object's code never ran


def test_wrong_architecture_refused(tmp_path):
    other = create_encoder("resnet_tiny", in_chans=6)
    path = tmp_path / "resnet.pt"
    torch.save(other.model.state_dict(), path)
    with pytest.raises(EncoderError) as exc:
        create_encoder("vit_tiny", in_chans=6, weights=path)
    assert "same architecture" in exc.value.fix


def test_missing_weights_file(tmp_path):
    with pytest.raises(EncoderError):
        create_encoder("vit_tiny", in_chans=6, weights=tmp_path / "none.safetensors")


def test_hub_download_fails_clearly_offline(monkeypatch):
    from models.registry import from_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderError) as exc:
        from_hub("timm/vit_tiny_patch16_224.augreg_in21k", in_chans=6)
    assert "weights=PATH" in exc.value.fix


def test_iter_blocks_pinned_ring_matches_plain_reads():
    """The ring of reused (pinned, on a GPU) buffers yields exactly the chips, in order, also when the
    consumer runs in inference mode and more blocks than buffers pass through."""
    import zarr

    from pipeline.imagery.embedding import iter_blocks

    rng = np.random.default_rng(0)
    chips = rng.uniform(0, 0.4, (203, 3, 8, 8)).astype(np.float32)
    z = zarr.create_array(zarr.storage.MemoryStore(), shape=chips.shape, chunks=(16, 3, 8, 8), dtype="float32")
    z[:] = chips
    for threads in (1, 3):
        got = []
        with torch.inference_mode():
            for block in iter_blocks(z, 16, pin=True, read_threads=threads):
                got.append(block.clone())  # the buffer is reused once the next block is asked for
        np.testing.assert_array_equal(torch.cat(got).numpy(), chips)
        plain = torch.cat(list(iter_blocks(z, 16, pin=False, read_threads=threads))).numpy()
        np.testing.assert_array_equal(plain, chips)


def test_direct_chunk_decoding_equals_zarr_reads(tmp_path):
    """The reader that bypasses Zarr's event loop returns exactly Zarr's values: full and partial last
    chunks, a chunk never written (fill value, falls back to Zarr), pinned and plain blocks; other
    layouts are left to Zarr."""
    import zarr

    from pipeline.core.artifacts import chip_codec
    from pipeline.imagery.embedding import ChipBatches, DirectChunks, iter_blocks

    rng = np.random.default_rng(1)
    chips = rng.uniform(0, 0.4, (100, 3, 8, 8)).astype(np.float32)
    group = zarr.open_group(str(tmp_path / "chips.zarr"), mode="w")
    z = group.create_array("s", shape=chips.shape, chunks=(16, 3, 8, 8), dtype="float32",
                           compressors=chip_codec(), fill_value=np.nan)
    z[:48] = chips[:48]
    z[64:] = chips[64:]  # rows 48..63 (chunk 3) never written: NaN fill
    z = zarr.open_group(str(tmp_path / "chips.zarr"), mode="r")["s"]
    expected = z[:]
    assert np.isnan(expected[48:64]).all()
    ds = ChipBatches(z, 16)
    assert isinstance(ds.direct, DirectChunks)
    assert not ds.direct.read_into(3, np.empty((16, 3, 8, 8), np.float32))
    for pin in (False, True):
        got = torch.cat([b.clone() for b in iter_blocks(z, 16, pin=pin, read_threads=3)]).numpy()
        np.testing.assert_array_equal(got, expected)
    # blocks that are not single chunks, an uncompressed array and NumPy input use Zarr/NumPy reads
    assert ChipBatches(z, 32).direct is None
    plain = group.create_array("p", shape=chips.shape, chunks=(16, 3, 8, 8), dtype="float32", compressors=None)
    assert ChipBatches(plain, 16).direct is None and ChipBatches(chips, 16).direct is None
    np.testing.assert_array_equal(torch.cat(list(iter_blocks(z, 32, read_threads=2))).numpy(), expected)


# --- random convolutional features (MOSAIKS) ---------------------------------------------------------------

def _rcf(seed=3, **kw):
    from models import create_encoder

    rng = np.random.default_rng(0)
    chips = rng.gamma(2.0, 0.05, size=(120, 3, 12, 12)).astype(np.float32)
    enc = create_encoder("rcf", in_chans=3, seed=0, n_features=16, **kw).fit_patches(chips, seed=seed)
    return enc, chips


def test_rcf_is_deterministic_for_a_seed():
    a, chips = _rcf(seed=3)
    b, _ = _rcf(seed=3)
    c, _ = _rcf(seed=4)
    x = torch.from_numpy(chips[:10])
    assert torch.equal(a(x), b(x)) and not torch.equal(a(x), c(x))
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_rcf_equals_explicit_whitened_patch_products():
    """Brute force: feature k = mean over positions of ReLU(<A(x - mu), A(p_k - mu)> - bias) (and of the
    negative), with A the ZCA matrix of the patch sample, computed patch by patch."""
    enc, chips = _rcf(patch_size=2)
    x = chips[:2].astype(np.float64)
    w = enc.weight.double().numpy().reshape(enc.n_features // 2, -1)  # A A (p_k - mu)
    off = enc.offset.double().numpy()
    pos, neg = np.zeros((2, len(off))), np.zeros((2, len(off)))
    cells = [(i, j) for i in range(11) for j in range(11)]
    for n in range(2):
        for i, j in cells:
            z = w @ x[n, :, i:i + 2, j:j + 2].reshape(-1) - off
            pos[n] += np.maximum(z - enc.bias, 0) / len(cells)
            neg[n] += np.maximum(-z - enc.bias, 0) / len(cells)
    got = enc(torch.from_numpy(chips[:2])).double().numpy()
    np.testing.assert_allclose(got, np.hstack([pos, neg]), rtol=1e-4, atol=1e-5)


def test_rcf_sees_orientation_that_spectral_statistics_cannot():
    """Horizontal against vertical stripes of the same two reflectances: identical spectral statistics,
    different random-convolution features."""
    from models import create_encoder

    stripes = np.where((np.arange(16) // 2) % 2 == 0, 0.05, 0.3).astype(np.float32)
    horizontal = np.broadcast_to(stripes[:, None], (16, 16))
    chips = np.stack([np.stack([horizontal] * 3), np.stack([horizontal.T] * 3)])
    spectral = create_encoder("spectral", in_chans=3)(torch.from_numpy(chips))
    assert torch.allclose(spectral[0], spectral[1])
    rng = np.random.default_rng(1)
    sample = np.concatenate([chips, rng.uniform(0, 0.4, (60, 3, 16, 16)).astype(np.float32)])
    rcf = create_encoder("rcf", in_chans=3, n_features=64).fit_patches(sample, seed=0)(torch.from_numpy(chips))
    assert (rcf[0] - rcf[1]).abs().max() > 0.05


def test_rcf_refuses_use_before_fitting_and_odd_sizes():
    from models import EncoderError, create_encoder

    with pytest.raises(EncoderError):
        create_encoder("rcf", in_chans=3, n_features=15)
    enc = create_encoder("rcf", in_chans=3, n_features=8)
    with pytest.raises(EncoderError) as exc:
        enc(torch.zeros(1, 3, 8, 8))
    assert "fit_patches" in exc.value.fix
    with pytest.raises(EncoderError):
        enc.fit_patches(np.zeros((4, 3, 2, 2), np.float32))  # chips smaller than a patch
