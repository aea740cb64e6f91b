"""Overlay pictures and the summary sheet: layout numbers, marks where they belong, orientation, 0 lesions."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ctlesion.io.nifti import read_nifti
from ctlesion.postprocess import Lesion
from ctlesion.report import overlays, summary_sheet
from ctlesion.report.overlays import (
    BACKGROUND_RGB,
    BOX_RGB,
    CONTOUR_RGB,
    CROP_FRAME_RGB,
    LONG_AXIS_RGB,
    SCALE_BAR_RGB,
    SHORT_AXIS_RGB,
    crop_window_px,
    direction_letters,
    key_slice_z_lps_mm,
    orientation_letters,
    overlay_layout,
    render_overlay,
    scale_bar_mm,
    write_overlay,
)
from ctlesion.report.summary_sheet import (
    MAX_TILES,
    render_summary_sheet,
    sheet_grid,
    sheet_order,
    tile_panel,
    write_summary_sheet,
)
from ctlesion.volume import Volume

SHAPE_ZYX = (5, 120, 160)
BODY_HU, LESION_HU = 40, 100  # W 400 / L 40: 40 HU -> 128, 100 HU -> 166


def grey(hu: float) -> int:
    return int(np.clip(np.rint((hu - (40 - 200)) * 255 / 400), 0, 255))


def make_volume(spacing_zyx_mm=(2.5, 0.7, 0.7), direction_lps=None) -> Volume:
    hu = np.full(SHAPE_ZYX, -1000, dtype=np.int16)
    hu[:, 10:110, 10:150] = BODY_HU
    return Volume(hu=hu, spacing_zyx_mm=spacing_zyx_mm, origin_lps_mm=(-50.0, -40.0, 100.0),
                  direction_lps=np.eye(3) if direction_lps is None else direction_lps)


def make_lesion(volume: Volume, score: float, yx0: tuple[int, int], size: int = 10, *, key_slice: int = 2,
                hu: float = LESION_HU, axes: bool = True) -> Lesion:
    """A square lesion of ``size`` pixels at (y0, x0) on slices 1-3, painted into ``volume.hu``;
    its box is 2 pixels wider than the mask on every side."""
    y0, x0 = yx0
    volume.hu[1:4, y0 : y0 + size, x0 : x0 + size] = hu
    mask = np.ones((3, size, size), dtype=bool)
    return Lesion(
        score=score,
        box_vox=(x0 - 2.0, y0 - 2.0, 1.0, x0 + size + 2.0, y0 + size + 2.0, 3.0),
        key_slice=key_slice,
        long_axis_mm=size * 0.7 * np.sqrt(2),
        short_axis_mm=float("nan"),
        volume_ml=mask.sum() * 2.5 * 0.49 / 1000,
        mask_zyx=mask,
        mask_offset_zyx=(1, y0, x0),
        long_axis_px=((float(x0), float(y0)), (float(x0 + size), float(y0 + size))) if axes else None,
    )


def rgb(image_bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)


def where(image_rgb: np.ndarray, colour, region=None) -> np.ndarray:
    """(row, col) canvas pixels of exactly ``colour``, inside region (x0, y0, x1, y1) if given."""
    hits = np.argwhere(np.all(image_rgb == np.array(colour, dtype=np.uint8), axis=-1))
    if region is not None:
        x0, y0, x1, y1 = region
        hits = hits[(hits[:, 1] >= x0) & (hits[:, 1] < x1) & (hits[:, 0] >= y0) & (hits[:, 0] < y1)]
    return hits


def panel_region(panel) -> tuple[int, int, int, int]:
    (ox, oy), (w, h) = panel.origin_xy, panel.size_wh
    return ox, oy, ox + w, oy + h


@pytest.fixture
def captured_texts(monkeypatch):
    """Replace the text renderer by a recorder: the list of TextItems each picture would set."""
    calls: list[list] = []

    def record(canvas_rgb, texts):
        calls.append(list(texts))
        return cv2.cvtColor(canvas_rgb, cv2.COLOR_RGB2BGR)

    monkeypatch.setattr(overlays, "render_with_text", record)
    monkeypatch.setattr(summary_sheet, "render_with_text", record)
    return calls


# ------------------------------------------------------------------------------------------ geometry


def test_orientation_letters_follow_the_direction_matrix():
    assert orientation_letters(np.eye(3)) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    # x index axis pointing to the patient's right (flipped columns): R and L swap.
    assert orientation_letters(np.diag([-1.0, 1.0, 1.0])) == {"left": "L", "right": "R", "top": "A", "bottom": "P"}
    assert orientation_letters(np.diag([1.0, -1.0, -1.0])) == {"left": "R", "right": "L", "top": "P", "bottom": "A"}
    # Columns along posterior, rows along left (a transposed axial slice).
    transposed = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert orientation_letters(transposed) == {"left": "A", "right": "P", "top": "R", "bottom": "L"}
    # Coronal slice: columns left, rows inferior.
    coronal = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    assert orientation_letters(coronal) == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    assert direction_letters([c, s, 0.0]) == "LP" and direction_letters([-c, -s, 0.0]) == "RA"
    assert direction_letters([np.cos(np.radians(5)), np.sin(np.radians(5)), 0.0]) == "L"  # small tilt: one letter


def test_scale_bar_lengths():
    assert scale_bar_mm(500.0) == 100.0  # 0.3 x 500 = 150 -> 100
    assert scale_bar_mm(112.0) == 20.0 and scale_bar_mm(40.6) == 10.0 and scale_bar_mm(33.3) == 5.0
    assert scale_bar_mm(2.0) == 1.0  # nothing fits: the shortest


def test_crop_window_contains_the_box_and_is_square_in_mm():
    volume = make_volume()
    lesion = make_lesion(volume, 0.9, (50, 60))  # box x 58..72, y 48..62 (9.8 mm): crop 40 mm = 58 px
    assert crop_window_px(volume, lesion) == (36, 26, 94, 84)
    # Near the slice's corner the window is shifted inwards, keeping its size.
    corner = make_lesion(volume, 0.9, (2, 3), size=4)
    assert crop_window_px(volume, corner) == (0, 0, 58, 58)
    # A box larger than the slice / 2.5 shows the whole slice along that axis.
    big = make_lesion(volume, 0.9, (20, 20), size=60)
    x0, y0, x1, y1 = crop_window_px(volume, big)
    assert (y0, y1) == (0, 120) and x1 - x0 == 160
    # Anisotropic pixels: the same mm along x and y (to one pixel), and the box inside.
    aniso = make_volume((2.5, 0.5, 0.8))
    lesion = make_lesion(aniso, 0.9, (50, 60), size=20)  # box 24 x 24 px = 19.2 x 12 mm: side 48 mm
    x0, y0, x1, y1 = crop_window_px(aniso, lesion)
    assert (x1 - x0, y1 - y0) == (60, 96)
    bx1, by1, _, bx2, by2, _ = lesion.box_vox
    assert x0 <= bx1 and bx2 <= x1 and y0 <= by1 and by2 <= y1


def test_key_slice_z_in_lps():
    volume = make_volume()
    lesion = make_lesion(volume, 0.9, (50, 60))
    assert key_slice_z_lps_mm(volume, lesion) == pytest.approx(100.0 + 2 * 2.5)
    flipped_z = make_volume(direction_lps=np.diag([1.0, 1.0, -1.0]))
    assert key_slice_z_lps_mm(flipped_z, lesion) == pytest.approx(100.0 - 2 * 2.5)


def test_overlay_layout_numbers_and_square_pixels():
    volume = make_volume()
    layout = overlay_layout(volume, make_lesion(volume, 0.9, (50, 60)))
    full, crop = layout.full, layout.crop
    assert full.size_wh == (600, 450)  # 112 x 84 mm
    assert full.scale_xy == (3.75, 3.75) and full.px_per_mm == pytest.approx(3.75 / 0.7)
    assert full.bar_mm == 20.0 and full.bar_px == round(20.0 / 0.7 * 3.75)
    assert crop.window_px == (36, 26, 94, 84) and crop.size_wh == (600, 600)
    assert crop.bar_mm == 10.0 and crop.bar_px == round(10.0 / 0.7 * 600 / 58)
    aniso = make_volume((2.5, 0.5, 0.8))  # 128 x 60 mm
    layout = overlay_layout(aniso, make_lesion(aniso, 0.9, (50, 60), size=20))
    (fx, fy), spacing_y, spacing_x = layout.full.scale_xy, 0.5, 0.8
    assert layout.full.size_wh == (600, 281)
    assert fx / spacing_x == pytest.approx(fy / spacing_y, rel=2e-3)  # one mm = as many pixels along x and y
    assert layout.full.bar_px == round(20.0 * fx / spacing_x)
    (cfx, cfy) = layout.crop.scale_xy
    assert cfx / spacing_x == pytest.approx(cfy / spacing_y, rel=2e-3)


# ------------------------------------------------------------------------------------------ overlay


def test_overlay_marks_where_the_lesion_is(tmp_path):
    volume = make_volume()
    lesion = make_lesion(volume, 0.9, (50, 60))  # mask x 60..70, y 50..60; box 58..72, 48..62
    path = tmp_path / "study_lesion01.png"
    write_overlay(volume, lesion, 1, path, num_lesions=3, study_name="study")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    layout = overlay_layout(volume, lesion)
    assert image.shape == (layout.canvas_wh[1], layout.canvas_wh[0], 3)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # atomic: no temporary left
    image = rgb(image)
    crop, full = layout.crop, layout.full

    def expect_cols(hits, panel, x_first, x_last, atol=1.5):
        fx = panel.scale_xy[0]
        ox, x0 = panel.origin_xy[0], panel.window_px[0]
        np.testing.assert_allclose(hits[:, 1].min(), ox + (x_first - x0) * fx, atol=atol)
        np.testing.assert_allclose(hits[:, 1].max(), ox + (x_last - x0) * fx, atol=atol)

    def expect_rows(hits, panel, y_first, y_last, atol=1.5):
        fy = panel.scale_xy[1]
        oy, y0 = panel.origin_xy[1], panel.window_px[1]
        np.testing.assert_allclose(hits[:, 0].min(), oy + (y_first - y0) * fy, atol=atol)
        np.testing.assert_allclose(hits[:, 0].max(), oy + (y_last - y0) * fy, atol=atol)

    # Enlarged panel: the box is a 2-pixel frame just outside [58, 72) x [48, 62) ...
    box = where(image, BOX_RGB, panel_region(crop))
    fx = crop.scale_xy[0]
    assert len(box) > 1000
    expect_cols(box, crop, 58 - 2 / fx, 72 + 1 / fx)
    expect_rows(box, crop, 48 - 2 / fx, 62 + 1 / fx)
    # ... the contour a 2-pixel ring just outside the mask [60, 70) x [50, 60) ...
    contour = where(image, CONTOUR_RGB, panel_region(crop))
    assert len(contour) > 700  # 4 sides x ~103 px x 2
    expect_cols(contour, crop, 60 - 2 / fx, 70 + 1 / fx)
    expect_rows(contour, crop, 50 - 2 / fx, 60 + 1 / fx)
    # ... the long axis on the diagonal from (60, 50) to (70, 60); no short axis was measured.
    axis = where(image, LONG_AXIS_RGB, panel_region(crop))
    assert len(axis) > 200 and len(where(image, SHORT_AXIS_RGB, panel_region(crop))) == 0  # a 146-px diagonal
    cols = (axis[:, 1] - crop.origin_xy[0]) / fx + crop.window_px[0]
    rows = (axis[:, 0] - crop.origin_xy[1]) / fx + crop.window_px[1]
    np.testing.assert_allclose(rows - 50, cols - 60, atol=0.3)
    assert cols.min() == pytest.approx(60, abs=0.3) and cols.max() == pytest.approx(70, abs=0.3)
    # Nothing but the axis covers the lesion: its pixels are lesion grey or axis colour.
    (ax, ay), (bx, by) = crop.to_local(61, 51), crop.to_local(69, 59)
    inside = image[crop.origin_xy[1] + int(ay) : crop.origin_xy[1] + int(by),
                   crop.origin_xy[0] + int(ax) : crop.origin_xy[0] + int(bx)].reshape(-1, 3)
    plain = np.all(inside == grey(LESION_HU), axis=-1)
    assert plain.mean() > 0.8
    assert not np.any(np.all(inside == BOX_RGB, axis=-1) | np.all(inside == CONTOUR_RGB, axis=-1))
    # Full slice: the box frame, the yellow frame of the enlarged region, the soft-tissue window.
    full_box = where(image, BOX_RGB, panel_region(full))
    expect_cols(full_box, full, 58 - 2 / full.scale_xy[0], 72 + 1 / full.scale_xy[0])
    frame = where(image, CROP_FRAME_RGB, panel_region(full))
    expect_cols(frame, full, 36, 94 - 1 / full.scale_xy[0])
    expect_rows(frame, full, 26, 84 - 1 / full.scale_xy[1])
    assert len(where(image, CONTOUR_RGB, panel_region(full))) == 0  # contour only on the enlarged view
    ox, oy = full.origin_xy
    assert tuple(image[oy + 2, ox + 2]) == (0, 0, 0)  # air (-1000 HU) -> black
    assert tuple(image[oy + int(30 * 3.75), ox + int(20 * 3.75)]) == (128,) * 3  # 40 HU -> level -> mid grey


def test_overlay_scale_bars_measure_their_label(captured_texts):
    for spacing in ((2.5, 0.7, 0.7), (2.5, 0.5, 0.8)):
        volume = make_volume(spacing)
        lesion = make_lesion(volume, 0.9, (50, 60), size=20)
        image = rgb(render_overlay(volume, lesion, 1))
        layout = overlay_layout(volume, lesion)
        texts = captured_texts[-1]
        for panel in (layout.full, layout.crop):
            bx, by = panel.bar_origin_xy
            row = np.all(image[by + 2] == SCALE_BAR_RGB, axis=-1)
            run = np.argmin(row[bx:])  # white pixels from the bar's left end
            assert row[bx] and run == panel.bar_px
            # bar length in pixels == its label in mm x display pixels per mm (= fx / spacing_x)
            assert run == round(panel.bar_mm * panel.scale_xy[0] / spacing[2])
            label = [t for t in texts if t.text == f"{panel.bar_mm:g} mm"]
            assert any(t.x > bx + run and abs(t.y - (by + 2.5)) < 1 for t in label)


def test_overlay_texts_letters_window_and_measures(captured_texts):
    volume = make_volume()
    lesion = make_lesion(volume, 0.87, (50, 60))
    render_overlay(volume, lesion, 3, num_lesions=13, study_name="abdomen")
    texts = captured_texts[-1]
    strings = [t.text for t in texts]
    for expected in ("Lesion 3 of 13", "abdomen", "0.87", "9.9 mm", "n/a", "W 400 / L 40 HU", "+105.0 mm",
                     "2  (of 0\u20134)", "0.70 \u00d7 0.70 mm", "enlarged \u00d72.8"):
        assert expected in strings, expected
    layout = overlay_layout(volume, lesion)

    def letters_of(panel):
        (ox, oy), (w, h) = panel.origin_xy, panel.size_wh
        big = [t for t in texts if t.bold and t.size_px == 20.0]
        return {"left": [t.text for t in big if ox - 36 < t.x < ox and oy < t.y < oy + h],
                "right": [t.text for t in big if ox + w < t.x < ox + w + 36 and oy < t.y < oy + h],
                "top": [t.text for t in big if t.y < oy and ox < t.x < ox + w],
                "bottom": [t.text for t in big if t.y > oy + h and ox < t.x < ox + w]}

    assert letters_of(layout.full) == letters_of(layout.crop) == {
        "left": ["R"], "right": ["L"], "top": ["A"], "bottom": ["P"]}
    assert "(radiological view: patient's right on the left, anterior up)" in " ".join(strings)
    flipped = make_volume(direction_lps=np.diag([-1.0, 1.0, 1.0]))
    render_overlay(flipped, make_lesion(flipped, 0.87, (50, 60)), 3)
    texts = captured_texts[-1]
    assert letters_of(layout.full) == {"left": ["L"], "right": ["R"], "top": ["A"], "bottom": ["P"]}
    assert "NOT the standard radiological view" in " ".join(t.text for t in texts)


def test_overlay_key_slice_outside_volume():
    volume = make_volume()
    lesion = make_lesion(volume, 0.9, (50, 60), key_slice=5)
    with pytest.raises(ValueError, match="key slice 5"):
        render_overlay(volume, lesion, 1)


def test_overlay_empty_mask_and_edge_lesion_render():
    volume = make_volume()
    lesion = make_lesion(volume, 0.9, (0, 0), size=4)
    lesion.mask_zyx = np.zeros((3, 4, 4), dtype=bool)
    lesion.long_axis_px, lesion.long_axis_mm = None, float("nan")
    image = rgb(render_overlay(volume, lesion, 1))
    crop = overlay_layout(volume, lesion).crop
    assert crop.window_px[:2] == (0, 0)
    assert len(where(image, CONTOUR_RGB, panel_region(crop))) == 0
    assert len(where(image, BOX_RGB, panel_region(crop))) > 100


# ------------------------------------------------------------------------------------------ summary sheet


def test_sheet_grid_numbers():
    assert sheet_grid(0).shown == 0
    one = sheet_grid(1)
    assert (one.shown, one.hidden, one.columns, one.rows) == (1, 0, 1, 1)
    thirteen = sheet_grid(13)
    assert (thirteen.shown, thirteen.hidden, thirteen.columns, thirteen.rows) == (13, 0, 5, 3)
    sixty = sheet_grid(60)
    assert (sixty.shown, sixty.hidden, sixty.columns, sixty.rows) == (MAX_TILES, 20, 8, 5)
    assert sixty.header_px > thirteen.header_px  # room for the "N more" line
    assert sixty.tile_origin(9)[0] == sixty.tile_origin(1)[0]  # row-major, 8 per row
    assert sixty.tile_origin(9)[1] == sixty.tile_origin(8)[1] > sixty.tile_origin(7)[1]
    assert sixty.canvas_wh[0] >= sixty.tile_origin(7)[0] + summary_sheet.TILE_PX
    assert sixty.canvas_wh[1] >= sixty.tile_origin(39)[1] + summary_sheet.TILE_PX + summary_sheet.CAPTION_PX
    with pytest.raises(ValueError):
        sheet_grid(3, max_tiles=0)


def test_sheet_order_descending_score_ties_by_label():
    volume = make_volume()
    lesions = [make_lesion(volume, s, (50, 60)) for s in (0.3, 0.9, 0.5, 0.9, float("nan"))]
    assert sheet_order(lesions) == [1, 3, 2, 0, 4]


def sheet_lesions(volume: Volume) -> list[Lesion]:
    """Three lesions with different scores and different HU (so each tile can be recognised)."""
    return [make_lesion(volume, 0.3, (20, 20), hu=100, axes=False),
            make_lesion(volume, 0.9, (60, 100), hu=150, axes=False),
            make_lesion(volume, 0.6, (80, 40), hu=200, axes=False)]


def test_summary_sheet_one_tile_per_lesion_most_confident_first(tmp_path, captured_texts):
    volume = make_volume()
    lesions = sheet_lesions(volume)
    image = rgb(render_summary_sheet(volume, lesions, study_name="study"))
    grid = sheet_grid(3)
    assert image.shape[:2] == grid.canvas_wh[::-1]
    for tile, index in enumerate([1, 2, 0]):
        lesion = lesions[index]
        origin = grid.tile_origin(tile)
        panel = tile_panel(volume, lesion, origin)
        bx1, by1, _, bx2, by2, _ = lesion.box_vox
        cx, cy = panel.to_local((bx1 + bx2) / 2, (by1 + by2) / 2)
        centre = image[panel.origin_xy[1] + int(cy), panel.origin_xy[0] + int(cx)]
        assert tuple(centre) == (grey([100, 150, 200][index]),) * 3, tile
        # the tile shows the lesion's whole box (frame + contour drawn inside the tile)
        tile_region = (panel.origin_xy[0], panel.origin_xy[1], panel.origin_xy[0] + panel.size_wh[0],
                       panel.origin_xy[1] + panel.size_wh[1])
        assert len(where(image, BOX_RGB, tile_region)) > 100 and len(where(image, CONTOUR_RGB, tile_region)) > 100
    x, y = grid.tile_origin(2)  # nothing right of the third tile (the sheet is at least 1040 px wide)
    assert image.shape[1] > x + 2 * summary_sheet.TILE_PX
    assert np.all(image[y : y + summary_sheet.TILE_PX, x + summary_sheet.TILE_PX + 1 :] == BACKGROUND_RGB)
    captions = [t.text for t in captured_texts[-1] if t.text.startswith(("lesion ", "score "))]
    assert captions == ["lesion 2", "score 0.90", "lesion 3", "score 0.60", "lesion 1", "score 0.30"]
    assert "study: 3 lesions, most confident first" in [t.text for t in captured_texts[-1]]


def test_summary_sheet_cap_says_how_many_are_left_out(tmp_path, captured_texts):
    volume = make_volume()
    lesions = sheet_lesions(volume)
    render_summary_sheet(volume, lesions, max_tiles=2)
    texts = [t.text for t in captured_texts[-1]]
    assert [t for t in texts if t.startswith("lesion ")] == ["lesion 2", "lesion 3"]
    assert any("most confident of 3 lesions" in t and "other 1 " in t for t in texts)


def test_summary_sheet_file_and_zero_lesions(tmp_path, captured_texts):
    volume = make_volume()
    path = tmp_path / "study_lesions.png"
    # A study without lesions gets a sheet saying so, with evenly spaced whole slices.
    empty = tmp_path / "empty_lesions.png"
    assert write_summary_sheet(volume, [], empty, study_name="study", score_threshold=0.9952) == empty
    blank = cv2.imread(str(empty), cv2.IMREAD_COLOR)
    assert blank.shape[0] == summary_sheet.HEADER_PX + summary_sheet.TILE_PX + summary_sheet.CAPTION_PX + \
        summary_sheet.GAP_PX
    slot_y, slot_x = summary_sheet.HEADER_PX, summary_sheet.GAP_PX
    tile = blank[slot_y : slot_y + summary_sheet.TILE_PX, slot_x : slot_x + summary_sheet.TILE_PX]
    assert tile.std() > 0  # a slice is drawn there
    empty.unlink()
    texts = [t.text for t in captured_texts[-1]]
    assert "study: no lesion found at score >= 0.9952" in texts and "slice 2" in texts
    assert write_summary_sheet(volume, sheet_lesions(volume), path, study_name="study") == path
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image.shape[:2] == sheet_grid(3).canvas_wh[::-1]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.data
def test_pictures_of_a_small_real_ct(shared_data, tmp_path):
    """Real CT with 3 mm pixels (122 x 101): the slice fills the panel's width, letters from its geometry."""
    volume = read_nifti(shared_data / "totalseg_example" / "example_ct_sm.nii.gz")
    mask = np.ones((1, 6, 5), dtype=bool)
    lesion = Lesion(score=0.5, box_vox=(60.0, 50.0, 12.0, 65.0, 56.0, 12.0), key_slice=12, long_axis_mm=23.4,
                    short_axis_mm=15.0, volume_ml=0.8, mask_zyx=mask, mask_offset_zyx=(12, 50, 60),
                    long_axis_px=((60.0, 50.0), (65.0, 56.0)), short_axis_px=((65.0, 50.0), (60.0, 56.0)))
    write_overlay(volume, lesion, 1, tmp_path / "o.png")
    layout = overlay_layout(volume, lesion)
    assert layout.full.size_wh == (600, round(101 * 600 / 122))
    image = rgb(cv2.imread(str(tmp_path / "o.png"), cv2.IMREAD_COLOR))
    assert image.shape[:2] == layout.canvas_wh[::-1]
    assert len(where(image, SHORT_AXIS_RGB, panel_region(layout.crop))) > 100
    assert orientation_letters(volume.direction_lps)["left"] == "R"
    assert write_summary_sheet(volume, [lesion] * 13, tmp_path / "s.png") == tmp_path / "s.png"
