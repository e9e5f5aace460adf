"""Labelled image collections on real FIRST PNGs and MiraBest FITS: every loader and its bad-data errors."""

import json
import shutil

import numpy as np
import pytest
from astropy.table import Table

from glue_astrovlm import AstroVLMError, LabelSet, Stretch
from glue_astrovlm.datasets import (ImageDataset, load_captions, load_dataset, load_fits_catalog, load_image_folders,
                                    load_image_table, load_llava_json)

CLASSES = ("FRI", "FRII", "Compact", "Bent")


@pytest.fixture(scope="module")
def first_train(shared_data):
    return shared_data / "first_radio_galaxies" / "train"


@pytest.fixture()
def small_folders(first_train, tmp_path):
    """Two real FIRST PNGs per class, copied into class folders."""
    root = tmp_path / "first"
    for label in CLASSES:
        (root / label).mkdir(parents=True)
        for path in sorted((first_train / label).glob("*.png"))[:2]:
            shutil.copy(path, root / label / path.name)
    return root


def mirabest_label(path) -> str:
    return "FRI" if path.name[0] == "1" else "FRII"


def test_class_folders(small_folders):
    (small_folders / "FRI" / "notes.txt").write_text("not an image")
    data = load_image_folders(small_folders)
    assert data.kind == "classification"
    assert data.labels == ("Bent", "Compact", "FRI", "FRII")  # sorted folder names
    assert data.class_counts() == {"Bent": 2, "Compact": 2, "FRI": 2, "FRII": 2}
    assert len(data) == 8 and all(item.path.suffix == ".png" for item in data)
    assert data[0].item_id.startswith("Bent/")
    chosen = load_image_folders(small_folders, labels=["FRII", "FRI"])
    assert chosen.labels == ("FRII", "FRI") and len(chosen) == 4


def test_folder_errors(small_folders, tmp_path):
    (small_folders / "Empty").mkdir()
    with pytest.raises(AstroVLMError, match=r"Class folder\(s\) \['Empty'\].*hold no"):
        load_image_folders(small_folders)
    with pytest.raises(AstroVLMError, match="no class folder for"):
        load_image_folders(small_folders, labels=["FRI", "Missing"])
    with pytest.raises(AstroVLMError, match="no class sub-folders"):
        load_image_folders(tmp_path / "first" / "FRI")
    with pytest.raises(AstroVLMError, match="No such folder"):
        load_image_folders(tmp_path / "nowhere")


def test_cutout_uses_engine_stretch_and_centre_crop(small_folders):
    item = load_image_folders(small_folders)[0]
    whole = item.cutout()
    assert whole.shape == (300, 300)
    assert whole.provenance.source_id == item.item_id
    assert whole.provenance.extra["true_label"] == item.label
    half = item.cutout(crop=0.5)
    assert half.shape == (150, 150)
    assert half.provenance.bbox == (75, 225, 75, 225)
    np.testing.assert_array_equal(half.data, whole.data[75:225, 75:225])
    assert half.stretch_text() == "as displayed"  # a PNG is already rendered: the model gets its pixels
    from PIL import Image

    file_pixels = np.asarray(Image.open(item.path).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(whole.to_image()), file_pixels)
    stretched = item.cutout(stretch=Stretch(), crop=0.5)  # asked for: the astronomer's stretch
    assert stretched.stretch_text() == "zscale(contrast=0.25)+linear"
    image = np.asarray(stretched.to_image())
    assert image.shape == (150, 150, 3) and image.max() == 255
    with pytest.raises(AstroVLMError, match="crop"):
        item.cutout(crop=1.5)


def test_table_of_files_and_labels(small_folders, tmp_path):
    data = load_image_folders(small_folders)
    rows = [(str(item.path.relative_to(small_folders)), item.label) for item in data]
    Table(rows=rows, names=["file", "label"]).write(small_folders / "labels.ecsv")
    Table(rows=rows, names=["filename", "class"]).write(small_folders / "labels.csv", format="ascii.csv")
    for name in ("labels.ecsv", "labels.csv"):
        table_data = load_dataset(small_folders / name)
        assert table_data.kind == "classification"
        assert [i.label for i in table_data] == [i.label for i in data]
        assert [i.path for i in table_data] == [i.path for i in data]
    # relative paths from another folder need --image-root
    shutil.copy(small_folders / "labels.ecsv", tmp_path / "elsewhere.ecsv")
    with pytest.raises(AstroVLMError, match="8 image.* do not exist"):
        load_image_table(tmp_path / "elsewhere.ecsv")
    assert len(load_image_table(tmp_path / "elsewhere.ecsv", image_root=small_folders)) == 8


def test_table_errors(small_folders):
    Table(rows=[("FRI/x.png", "FRI")], names=["name", "label"]).write(small_folders / "nofile.ecsv")
    with pytest.raises(AstroVLMError, match="no file column"):
        load_image_table(small_folders / "nofile.ecsv")
    Table(rows=[("a.png", 1.0)], names=["file", "flux"]).write(small_folders / "nolabel.ecsv")
    with pytest.raises(AstroVLMError, match="neither a label column"):
        load_image_table(small_folders / "nolabel.ecsv")
    first = next((small_folders / "FRI").glob("*.png"))
    Table(rows=[(str(first), "FRI"), (str(first), "")], names=["file", "label"]).write(small_folders / "gap.ecsv")
    with pytest.raises(AstroVLMError, match=r"Rows 1 .* empty file name or label"):
        load_image_table(small_folders / "gap.ecsv")
    with pytest.raises(AstroVLMError, match="No such"):
        load_dataset(small_folders / "absent.ecsv")


def test_unknown_labels_and_label_sets(small_folders):
    data = load_image_folders(small_folders)
    assert data.label_set().labels == data.labels
    with pytest.raises(AstroVLMError, match=r"labels \['Bent', 'Compact'\] that are not in the label set"):
        data.label_set(LabelSet(("FRI", "FRII")))
    assert data.label_set(LabelSet(CLASSES + ("other",))).labels[-1] == "other"


def test_sample_is_seeded_and_keeps_order(small_folders):
    data = load_image_folders(small_folders)
    a, b, c = data.sample(5, seed=1), data.sample(5, seed=1), data.sample(5, seed=2)
    assert [i.item_id for i in a] == [i.item_id for i in b]
    assert [i.item_id for i in a] != [i.item_id for i in c]
    order = [i.item_id for i in data]
    assert [order.index(i.item_id) for i in a] == sorted(order.index(i.item_id) for i in a)
    assert data.sample(None) is data and data.sample(100) is data
    assert a.describe()["limit"] == 5


def test_fits_table_with_positions(fits_dir, tmp_path):
    """MiraBest FITS encode their class in the name; a table gives each file, position and label."""
    files = sorted((fits_dir / "first_mirabest").glob("*.fits"))
    rows = []
    for path in files:
        ra, dec = path.name.split("_")[1].replace("+", " +").replace("-", " -").split()
        rows.append((str(path), float(ra), float(dec), mirabest_label(path)))
    Table(rows=rows, names=["file", "ra", "dec", "label"]).write(tmp_path / "mirabest.ecsv")
    data = load_dataset(tmp_path / "mirabest.ecsv")
    assert len(data) == 13 and set(data.labels) == {"FRI", "FRII"}
    cutout = data[0].cutout()
    assert cutout.shape == (128, 128)  # rows with a position and no size get 128 pixels
    assert cutout.provenance.center_sky is not None
    assert data[0].cutout(crop=0.5).shape == (64, 64)


def test_fits_image_with_catalogue(fits_dir, tmp_path):
    path = sorted((fits_dir / "first_mirabest").glob("2*.fits"))[0]
    catalogue = Table({"x": [149.5, 120.0], "y": [149.5, 160.0], "label": ["FRII", "Compact"]})
    data = load_fits_catalog(path, catalogue, size=48)
    assert [i.label for i in data] == ["FRII", "Compact"]
    assert data[0].cutout().shape == (48, 48)
    assert data[0].item_id != data[1].item_id
    with pytest.raises(AstroVLMError, match="outside the image"):
        load_fits_catalog(path, Table({"x": [5000.0], "y": [1.0], "label": ["FRI"]}), size=48)
    with pytest.raises(AstroVLMError, match="no label column"):
        load_fits_catalog(path, Table({"x": [10.0], "y": [1.0]}), size=48)
    with pytest.raises(AstroVLMError, match="have no label"):
        load_fits_catalog(path, Table({"x": [10.0], "y": [10.0], "label": [""]}), size=48)


def test_llava_conversations(small_folders):
    image = next((small_folders / "FRII").glob("*.png"))
    entries = [{"id": "a", "image": str(image.relative_to(small_folders)), "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "An FR-II radio galaxy."},
        {"from": "human", "value": "Where are the hotspots?"}, {"from": "gpt", "value": "At the lobe ends."}]}]
    (small_folders / "chat.json").write_text(json.dumps(entries))
    data = load_dataset(small_folders / "chat.json")
    assert data.kind == "conversation" and data[0].path == image
    assert data[0].turns() == (("user", "What is this?"), ("assistant", "An FR-II radio galaxy."),
                               ("user", "Where are the hotspots?"), ("assistant", "At the lobe ends."))
    bad = [({"conversations": entries[0]["conversations"]}, "has no 'image'"),
           ({**entries[0], "image": "missing.png"}, "do not exist"),
           ({**entries[0], "conversations": [{"from": "gpt", "value": "x"}]}, "must start with a human turn"),
           ({**entries[0], "conversations": [{"from": "human", "value": "x"}]}, "no gpt"),
           ({**entries[0], "conversations": [{"from": "human", "value": "x"}, {"from": "human", "value": "y"}]},
            "alternate")]
    for entry, message in bad:
        (small_folders / "bad.json").write_text(json.dumps([entry]))
        with pytest.raises(AstroVLMError, match=message):
            load_llava_json(small_folders / "bad.json")
    (small_folders / "broken.json").write_text("[{")
    with pytest.raises(AstroVLMError, match="not valid JSON"):
        load_dataset(small_folders / "broken.json")


def test_caption_pairs(small_folders):
    images = sorted((small_folders / "FRII").glob("*.png"))
    lines = [json.dumps({"image": f"FRII/{p.name}", "caption": "Two bright lobes."}) for p in images]
    (small_folders / "captions.jsonl").write_text("\n".join(lines))
    data = load_dataset(small_folders / "captions.jsonl")
    assert data.kind == "caption" and len(data) == 2
    role, prompt = data[0].turns()[0]
    assert role == "user" and "Describe" in prompt
    assert data[0].turns()[1] == ("assistant", "Two bright lobes.")
    Table(rows=[(f"FRII/{p.name}", "Lobes.") for p in images], names=["file", "caption"]).write(
        small_folders / "captions.ecsv")
    assert load_captions(small_folders / "captions.ecsv").kind == "caption"
    with pytest.raises(AstroVLMError, match="holds caption data, not class labels"):
        data.label_set()
    (small_folders / "nocap.jsonl").write_text(json.dumps({"image": f"FRII/{images[0].name}"}))
    with pytest.raises(AstroVLMError, match="non-empty 'caption'"):
        load_captions(small_folders / "nocap.jsonl")


def test_empty_dataset_is_an_error():
    with pytest.raises(AstroVLMError, match="holds no images"):
        ImageDataset([], "classification", "nowhere")
