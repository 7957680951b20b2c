"""weedseg upload page: drop field photos, see where the weeds are. Start it with `weedseg app`.

UI only: decoding, segmentation and summaries live in weedseg.infer.image. The models offered are
the shipped *.onnx files (models/ in a checkout), or those in the folder named by $WEEDSEG_MODELS; see docs/app.md.
"""

from __future__ import annotations

import html
import os
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from weedseg import WeedsegError
from weedseg.familiarity import OWN_FIELD_DOC, UNKNOWN_MESSAGE
from weedseg.data.io import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS
from weedseg.data.transforms import resize_short_side
from weedseg.infer import pictures, tables
from weedseg.infer.image import (SESSION_FILES, SESSION_PIXELS, SegmentedImage, SessionBudget, colour_mask, cover_grid,
                                 csv_bytes, grid_heatmap, safe_name, segment_upload, summary_columns, upload_pixels,
                                 zip_bytes)
from weedseg.infer.pipeline import PredictOptions, failure
from weedseg.infer.session import DEFAULT_MODEL, Segmenter
from weedseg.infer.spray import SAVING_NOTE, SpraySettings, draw_spray_cells, shapefile_zip_bytes

MODELS_ENV = "WEEDSEG_MODELS"
PREVIEW_SHORT_SIDE = 720  # pictures on the page are shrunk to this; downloads keep full resolution
OPTIONS = PredictOptions()  # the same resolution, tiling and grid defaults as `weedseg predict`
SHOWN = {"image": "Image", "status": "Status", "crop_pct": "Crop %", "weed_pct": "Weed %", "weed_crop_ratio": "Weed : crop",
         "weed_cells": "Cells with weeds", "max_cell_weed_pct": "Most weed in a cell %", "spray_cells": "Cells to spray",
         "sprayed_pct": "Sprayed %", "weed_m2": "Weed m²", "crop_m2": "Crop m²", "familiarity": "Familiarity",
         "unfamiliar": "Unfamiliar", "error": "Problem"}


TTA_CHOICES = {"Off": None, "Flip (2x the time)": "flip", "Flip and quarter turns (8x the time)": "rotate"}
TTA_CAPTIONS = {None: "", "flip": ", with flip TTA", "rotate": ", with flip and quarter-turn TTA"}
TTA_HELP = ("Test-time augmentation, as `weedseg predict --tta` / `--tta-rotate`: the photo is also segmented "
            "mirrored (and turned by quarter turns) and the scores averaged. Flip gained 0.3-0.4 val mIoU for models "
            "trained on a few dozen photos and +0.07 for the shipped default; the turns suit photos taken looking "
            "straight down and gained +0.08 for the default (docs/research/accuracy.md)")


@st.cache_resource(show_spinner="Loading the model ...", max_entries=4)
def load_segmenter(path: str, mtime: float, tta: str | None) -> Segmenter:
    """The model file in the faster engine here (weedseg.infer.engines), loaded once per file version and TTA
    setting for all visitors."""
    return Segmenter(path, engine="auto", tta=tta)


def choose_model() -> Segmenter:
    """Sidebar model selector over the *.onnx files of the models folder and the TTA choice; stops the page
    if no model loads."""
    folder = Path(os.environ.get(MODELS_ENV) or DEFAULT_MODEL.parent)
    models = sorted(folder.glob("*.onnx"))
    if not models:
        st.error(f"No model found: put an ONNX model from `weedseg export` in {folder} "
                 f"(the default is {DEFAULT_MODEL.name}), or start with `weedseg app --models FOLDER`.")
        st.stop()
    names = [m.name for m in models]
    default = names.index(DEFAULT_MODEL.name) if DEFAULT_MODEL.name in names else 0
    name = st.sidebar.selectbox("Model", names, index=default, help=f"ONNX models in {folder}")
    tta = TTA_CHOICES[st.sidebar.selectbox("Test-time augmentation", list(TTA_CHOICES), help=TTA_HELP)]
    path = folder / name
    try:
        return load_segmenter(str(path), path.stat().st_mtime, tta)
    except Exception as exc:  # noqa: BLE001 - any unusable model gets a message, not a traceback
        st.error(f"Cannot use the model {name}: {failure(exc)['error']}")
        st.stop()


def legend(classes: list[str], colors: list[list[int]]) -> None:
    """One coloured square per class, in the model's class colours."""
    swatch = ('<span style="display:inline-block;width:0.9em;height:0.9em;margin:0 0.3em 0 1em;'
              'vertical-align:middle;border:1px solid #777;background:rgb({},{},{})"></span>{}')
    items = "".join(swatch.format(*color, html.escape(name)) for name, color in zip(classes, colors))
    st.markdown(f'<div class="weedseg-legend"><b>Legend</b>{items}</div>', unsafe_allow_html=True)


def segment_all(seg: Segmenter, files: list) -> list[tuple[str, SegmentedImage | str]]:
    """(name, result or error message) per uploaded file, segmenting only files not seen before; files past
    the session's budget (SessionBudget) get a message and are segmented once others are removed."""
    done: dict = st.session_state.setdefault("results", {})
    taken: set[str] = set()
    results, keep, budget = [], set(), SessionBudget()
    progress = st.progress(0.0) if files else None
    for i, f in enumerate(files):
        name = safe_name(f.name, taken)
        key = (str(seg.path), seg.tta, f.file_id, name)
        if key not in done:
            progress.progress(i / len(files), text=f"Segmenting {name} ({i + 1} of {len(files)}) ...")
            data = f.getvalue()  # a copy of the upload: taken once
            try:
                budget.admit(upload_pixels(data))
            except WeedsegError as exc:  # not kept in `done`: tried again on the next run of the page
                results.append((name, str(exc)))
                continue
            try:
                done[key] = segment_upload(seg, data, name, OPTIONS.short_side, OPTIONS.tile,
                                           OPTIONS.overlap, OPTIONS.batch_size)
            except Exception as exc:  # noqa: BLE001 - one bad file must not break the page for the others
                done[key] = failure(exc)["error"]
        elif isinstance(done[key], SegmentedImage):
            budget.files, budget.pixels = budget.files + 1, budget.pixels + done[key].mask.size
        keep.add(key)
        results.append((name, done[key]))
    for key in set(done) - keep:  # forget files the user removed
        del done[key]
    if progress is not None:
        progress.empty()
    return results


def show_numbers(res: SegmentedImage, classes: list[str]) -> None:
    """Cover of every class but the background (soil, wherever the model lists it), the weed-to-crop ratio and
    the cells with weeds."""
    row, shown = res.row, tables.area_classes(classes)
    cols = iter(st.columns(len(shown) + 2))
    for c in shown:
        next(cols).metric(f"{c.capitalize()} cover", f"{row[f'{c}_pct']:.1f} %")
    if "crop" in classes and "weed" in classes:
        ratio = row["weed_crop_ratio"]
        next(cols).metric("Weed : crop", "no crop" if ratio is None else f"{ratio:.2f}",
                          help="weed pixels per crop pixel")
    if res.cells:
        next(cols).metric("Cells with weeds", f"{row['weed_cells']} of {len(res.cells)}",
                          help=f"grid cells of {res.grid_cell} x {res.grid_cell} pixels holding any weed")


def show_grid(res: SegmentedImage, weed_color: list[int]) -> None:
    """The weed cover grid as a heat-map picture and a table of percentages."""
    grid = cover_grid(res.cells)
    left, right = st.columns([2, 3])
    left.image(grid_heatmap(grid, weed_color, width=360), width="content",
               caption=f"Weed cover per {res.grid_cell} px cell, in % (strongest colour: {grid.max():.1f} %)")
    table = pd.DataFrame(grid, index=[f"row {r}" for r in range(grid.shape[0])],
                         columns=[f"col {c}" for c in range(grid.shape[1])])
    right.dataframe(table.round(1))


def show_spray(res: SegmentedImage, overlay: np.ndarray) -> None:
    """The cells to spray drawn over the overlay, with the sprayed area, the saving and, with a GSD, areas in m²."""
    plan, row = res.plan, res.row
    ground = plan.ground
    st.caption("Ground units unknown, so areas are in pixels: enter the ground sampling distance in the sidebar."
               if ground.gsd_cm is None else f"Ground sampling distance {ground.gsd_cm:.3g} cm per pixel, "
               + ("as entered in the sidebar." if ground.source == "--gsd" else "from the GeoTIFF's pixel scale."))
    left, right = st.columns([3, 2])
    cell = f"{row['cell_m']:g} m" if row.get("cell_m") else f"{plan.cell_px} px"
    left.image(draw_spray_cells(overlay, plan), width="stretch",
               caption=f"Cells to spray (yellow): at least {plan.settings.threshold_pct:g} % weed in a {cell} cell")
    right.metric("Cells to spray", f"{row['spray_cells']} of {row['cells']}")
    sprayed = f"{row['sprayed_m2']:.2f} m²" if row.get("sprayed_m2") is not None else f"{row['sprayed_px']:,} px"
    right.metric("Sprayed area", f"{sprayed} ({row['sprayed_pct']:.1f} %)",
                 help="area of the cells to spray; in brackets, its share of the image (what broadcast spraying covers)")
    right.metric("Herbicide saving (estimate)", f"{row['herbicide_saving_pct_est']:.1f} %", help=SAVING_NOTE)
    for name in ("weed", "crop"):
        if row.get(f"{name}_m2") is not None:
            right.metric(f"{name.capitalize()} area", f"{row[f'{name}_m2']:.2f} m²",
                         help=f"{row[f'{name}_m2_per_ha']:,.0f} m² per hectare of field imaged")


def show_familiarity(res: SegmentedImage, seg: Segmenter) -> None:
    """A warning above the pictures when the photo looks unlike the photos the model learned from."""
    if res.familiarity.get("unfamiliar") == "true":
        st.warning(f"**This photo looks unlike the {seg.familiarity.field} fields this model learned from** "
                   f"(familiarity {res.familiarity['familiarity']}, flagged below 0.5): crop and weed may be swapped "
                   f"or missed. Train it on a few of your own photos: see {OWN_FIELD_DOC}.", icon=":material/warning:")


def show_result(res: SegmentedImage, seg: Segmenter, key: str) -> float:
    """Numbers, the three pictures with an opacity slider, the weed grid and downloads of one image;
    returns the chosen overlay opacity."""
    info = seg.info
    show_numbers(res, info.classes)
    alpha = st.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key=f"alpha-{key}")
    side = min(PREVIEW_SHORT_SIDE, *res.rgb.shape[:2])
    rgb, mask = resize_short_side(res.rgb, side), resize_short_side(res.mask, side, nearest=True)
    overlay = pictures.overlay(rgb, mask, info.colors, alpha, background=info.background)
    for col, picture, caption in zip(st.columns(3), [rgb, overlay, colour_mask(mask, info.colors)],
                                     ["Original", "Overlay", "Mask"]):
        col.image(picture, caption=caption, width="stretch")
    if res.cells:
        show_grid(res, info.colors[info.classes.index("weed")])
    if res.plan:
        show_spray(res, overlay)
    files = partial(res.files, info.colors, alpha, background=info.background)
    for col, (suffix, label, mime) in zip(st.columns(4), [(".mask.png", "Mask PNG", "image/png"),
                                                        (".overlay.jpg", "Overlay JPG", "image/jpeg"),
                                                        (".grid.csv", "Weed grid CSV", "text/csv"),
                                                        (".spray.geojson", "Spray map GeoJSON", "application/geo+json")]):
        file_name = res.stem + suffix
        if (suffix == ".grid.csv" and not res.cells) or (suffix == ".spray.geojson" and not res.plan):
            continue
        col.download_button(label, data=lambda n=file_name: files()[n], file_name=file_name, mime=mime,
                            on_click="ignore", key=f"dl{suffix}-{key}", icon=":material/download:")
    if res.plan and res.plan.ground.georef is not None:  # georeferenced: a prescription map for sprayer terminals
        st.download_button("Prescription map (Shapefile, zip)", lambda: shapefile_zip_bytes(res.plan, res.stem),
                           f"{res.stem}.spray.zip", "application/zip", on_click="ignore", key=f"dl.shp-{key}",
                           icon=":material/map:")
    return alpha


def show_summary(results: list[tuple[str, SegmentedImage | str]], seg: Segmenter, alphas: dict[str, float]) -> None:
    """The table of all images with the summary CSV and a zip of everything (overlays at their chosen opacity)."""
    info = seg.info
    rows = [r.row if isinstance(r, SegmentedImage) else {"image": n, "status": "failed", "error": r}
            for n, r in results]
    st.subheader("All images")
    columns = summary_columns(info.classes)
    table = pd.DataFrame(rows).reindex(columns=[c for c in SHOWN if c in columns]).rename(columns=SHOWN)
    st.dataframe(table, hide_index=True)
    summary = csv_bytes(rows, columns)
    left, right = st.columns(2)
    left.download_button("Summary CSV", summary, "summary.csv", "text/csv", on_click="ignore",
                         icon=":material/table:")

    def everything() -> bytes:
        files = {"summary.csv": summary}
        for name, res in results:
            if isinstance(res, SegmentedImage):
                files.update(res.files(info.colors, alphas[name], background=info.background))
        return zip_bytes(files)

    right.download_button("Everything (zip)", everything, "weedseg-results.zip", "application/zip",
                          on_click="ignore", icon=":material/folder_zip:")


def main() -> None:
    """The page."""
    st.set_page_config(page_title="weedseg: where are the weeds?", page_icon=":seedling:", layout="wide")
    st.title("Where are the weeds?")
    seg = choose_model()
    info = seg.info
    grid_cell = st.sidebar.number_input("Weed grid cell (pixels)", 16, 4096, OPTIONS.grid_cell, 16,
                                        help="cell size of the weed cover grid, e.g. a spot-sprayer's nozzle footprint")
    gsd = st.sidebar.number_input("Ground sampling distance (cm per pixel)", 0.0, 1000.0, 0.0, 0.01, format="%.3f",
                                  help="0: unknown (GeoTIFFs in a metric CRS bring their own). With a GSD, areas are "
                                       "in m² and grid cells in metres; see docs/spray-maps.md")
    threshold = st.sidebar.number_input("Spray threshold (% weed per cell)", 0.0, 100.0, OPTIONS.spray.threshold_pct,
                                        0.5, help="a grid cell is sprayed from this weed cover on")
    st.sidebar.caption(f"{info.model_name}, {info.precision}, classes {', '.join(info.classes)}; images are "
                       f"segmented at a short side of {info.input_short_side or 'full'} px"
                       f"{TTA_CAPTIONS[seg.tta]}. Limit: "
                       f"{MAX_IMAGE_PIXELS / 1e6:g} megapixels per photo, {SESSION_FILES} photos and "
                       f"{SESSION_PIXELS / 1e6:g} megapixels at once.")
    st.write("Drop field photos below. Each one is segmented into "
             f"{', '.join(info.classes)}; the numbers are shares of the image's pixels.")
    st.caption(f"An orthomosaic over {MAX_IMAGE_PIXELS / 1e6:g} megapixels is too large for the page: "
               "`weedseg predict ORTHO.tif --out OUT` streams one of any size into a mask, spray map and "
               "prescription maps (docs/drone-survey.md).")
    legend(info.classes, info.colors)
    if seg.familiarity is None:
        st.info(UNKNOWN_MESSAGE[0].upper() + UNKNOWN_MESSAGE[1:] + ".")
    files = st.file_uploader("Field photos (JPG, PNG, TIFF)", type=[s.lstrip(".") for s in IMAGE_SUFFIXES],
                             accept_multiple_files=True)
    results = segment_all(seg, files or [])
    cell_m = None
    if gsd or any(isinstance(r, SegmentedImage) and r.ground.gsd_cm for _, r in results):
        cell_m = st.sidebar.number_input("Grid cell (metres)", 0.05, 100.0, 0.5, 0.05,
                                         help="cell size for images with a ground sampling distance, e.g. a boom "
                                              "section; the others use the cell in pixels")
    spray = SpraySettings(threshold, OPTIONS.spray.min_patch, cell_m)
    alphas = {}
    for name, res in results:
        with st.container(border=True):
            st.subheader(name)
            if isinstance(res, str):
                st.error(f"`{name}` could not be segmented: {res}")
                continue
            res.summarize(info.classes, int(grid_cell), gsd or None, spray)
            show_familiarity(res, seg)
            alphas[name] = show_result(res, seg, name)
    if results:
        show_summary(results, seg, alphas)


main()
