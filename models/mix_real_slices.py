"""Real DeepLesion key slices for the demo model: a training set mixing them into the simulated
one, and the held-out set they leave for an honest measure (stage 3 of models/train_demo.sh,
the shipped model's crop fine-tuning; earlier the experiment "real DeepLesion key slices in
stage 1" of models/README.md).

Usage (from the repository root):
  python models/mix_real_slices.py mix SIM_DIR REAL_DIR OUT_DIR [--copies 8]
  python models/mix_real_slices.py heldout REAL_DIR OUT_DIR

Both write DeepLesion-layout folders (``DL_info.csv`` + ``Images_png`` of symbolic links to the
source series, nothing copied). The real key slices of the patients in :data:`TRAIN_PATIENTS`
(``../shared/data/deeplesion_sample``: 10 key slices, 10 liver lesions, 6 studies of 2
patients) go into training: ``mix`` writes the simulated table (split codes kept) plus those
rows, each repeated ``--copies`` times under new patient numbers (``k * 100000 + patient`` for
copy k = 1..copies, so that a 1,178-slice simulated set holds them in about the share of
DeepLesion's liver lesions), all in the train split; the simulated true masks are linked as
``masks`` (the real slices get GrabCut pseudo-masks, as on DeepLesion). ``heldout`` writes the
other patients' rows (official split codes kept): the set figure (b) of the model card is
measured on, with ``ctlesion evaluate --split all``. Single-slice context: the sample holds only
key slices, so their neighbours are replicated (``load_key_slice_window``).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from ctlesion.io.deeplesion import DL_INFO_COLUMNS, write_dl_info

#: Patients of the DeepLesion sample used in training (chosen before any measurement: the two
#: patients with five key slices each, none of them in the official val split).
TRAIN_PATIENTS = (2680, 286)


def _rows(data_dir: Path) -> list[dict[str, str]]:
    with (data_dir / "DL_info.csv").open(newline="", encoding="utf-8") as handle:
        return [{c: row[c] for c in DL_INFO_COLUMNS} for row in csv.DictReader(handle)]


def _series(row: dict[str, str]) -> str:
    return row["File_name"].rsplit("_", 1)[0]


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(target.resolve(), target_is_directory=True)


def _renumbered(row: dict[str, str], copy: int) -> dict[str, str]:
    patient = copy * 100_000 + int(row["Patient_index"])
    _, study, series, key = row["File_name"].removesuffix(".png").split("_")
    return dict(row, File_name=f"{patient:06d}_{study}_{series}_{key}.png", Patient_index=str(patient),
                Train_Val_Test="1")


def mix(sim_dir: Path, real_dir: Path, out_dir: Path, copies: int) -> None:
    """Write OUT_DIR: the simulated set plus ``copies`` copies of the training patients' real rows."""
    rows = _rows(sim_dir)
    for row in rows:
        _link(sim_dir / "Images_png" / _series(row), out_dir / "Images_png" / _series(row))
    real = [row for row in _rows(real_dir) if int(row["Patient_index"]) in TRAIN_PATIENTS]
    for copy in range(1, copies + 1):
        for row in real:
            copied = _renumbered(row, copy)
            _link(real_dir / "Images_png" / _series(row), out_dir / "Images_png" / _series(copied))
            rows.append(copied)
    if (sim_dir / "masks").is_dir():
        _link(sim_dir / "masks", out_dir / "masks")
    write_dl_info(out_dir / "DL_info.csv", rows)
    print(f"wrote {out_dir}: {len(rows) - copies * len(real)} simulated rows + {len(real)} real x {copies}")


def heldout(real_dir: Path, out_dir: Path) -> None:
    """Write OUT_DIR: the real rows of every patient not in :data:`TRAIN_PATIENTS`."""
    rows = [row for row in _rows(real_dir) if int(row["Patient_index"]) not in TRAIN_PATIENTS]
    for row in rows:
        _link(real_dir / "Images_png" / _series(row), out_dir / "Images_png" / _series(row))
    write_dl_info(out_dir / "DL_info.csv", rows)
    print(f"wrote {out_dir}: {len(rows)} held-out real rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    mixing = commands.add_parser("mix")
    mixing.add_argument("sim_dir", type=Path)
    mixing.add_argument("real_dir", type=Path)
    mixing.add_argument("out_dir", type=Path)
    mixing.add_argument("--copies", type=int, default=8)
    held = commands.add_parser("heldout")
    held.add_argument("real_dir", type=Path)
    held.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    if args.command == "mix":
        mix(args.sim_dir, args.real_dir, args.out_dir, args.copies)
    else:
        heldout(args.real_dir, args.out_dir)


if __name__ == "__main__":
    main()
