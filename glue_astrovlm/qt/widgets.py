"""The AstroVLM panel's widgets and their layout (no behaviour: `panel.AstroVLMPanel` wires them).

Choice lists come from the engine's registries, so the panel offers exactly what the command line and
jdaviz offer.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QAbstractItemView, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout,
                            QHeaderView, QLabel, QLineEdit, QProgressBar, QPushButton, QSpinBox, QTableWidget,
                            QTabWidget, QTextBrowser, QVBoxLayout, QWidget)

from ..cubes import CUBE_MODES
from ..cutout_types import OUTSIDE_MODES
from ..labelsets import CUSTOM, menu_choices
from ..stretch import AUTO, INTERVALS, STRETCHES

__all__ = ["SOURCES", "TASKS", "CUSTOM", "build"]

#: What the panel can send, in the "Send" menu.
SOURCES = ("Current view", "Subset", "Catalogue sources", "Detected sources")
#: The tabs, in order.
TASKS = ("ask", "classify", "tag")


def _combo(items) -> QComboBox:
    combo = QComboBox()
    combo.addItems(list(items))
    return combo


def _spin(low: int, high: int, value: int, suffix: str = "") -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    spin.setSuffix(suffix)
    return spin


def _row(*widgets) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row


def _model_box(panel) -> QGroupBox:
    box = QGroupBox("Model")
    form = QFormLayout(box)
    panel.model_combo = QComboBox()
    panel.model_combo.setEditable(True)
    panel.model_combo.setToolTip("Hub id, local folder, or server URL such as http://127.0.0.1:8000/v1")
    panel.adapter_edit = QLineEdit()
    panel.adapter_edit.setPlaceholderText("optional LoRA adapter folder")
    panel.load_button = QPushButton("Load")
    panel.browse_button = QPushButton("Folder…")
    panel.browse_button.setToolTip("Choose a model folder on this machine (e.g. a copied Hugging Face download)")
    panel.model_status = QLabel("not loaded")
    row = _row(panel.model_combo, panel.browse_button, panel.load_button)
    row.setStretch(0, 1)
    form.addRow("Model", row)
    form.addRow("Adapter", panel.adapter_edit)
    form.addRow("", panel.model_status)
    return box


def _send_box(panel) -> QGroupBox:
    box = QGroupBox("What to send")
    form = QFormLayout(box)
    panel.data_combo = QComboBox()
    panel.source_combo = _combo(SOURCES)
    panel.subset_combo = QComboBox()
    panel.catalog_combo = QComboBox()
    panel.size_spin = _spin(8, 2048, 64, " px")
    panel.nsigma_spin = QDoubleSpinBox()
    panel.nsigma_spin.setRange(1.0, 1000.0)
    panel.nsigma_spin.setValue(5.0)
    panel.nsigma_spin.setSuffix(" σ")
    panel.max_sources_spin = _spin(1, 10000, 200, " sources")
    panel.cube_mode = _combo(CUBE_MODES)
    panel.cube_index, panel.cube_start, panel.cube_stop = QSpinBox(), QSpinBox(), QSpinBox()
    panel.interval_combo = _combo((AUTO, *INTERVALS))
    panel.stretch_combo = _combo(STRETCHES)
    panel.outside_combo = _combo(OUTSIDE_MODES)
    panel.thumbnail = QLabel("no cutout")
    panel.thumbnail.setFixedSize(164, 164)
    panel.thumbnail.setAlignment(Qt.AlignmentFlag.AlignCenter)
    panel.thumbnail.setToolTip("Exactly the image the model will see")
    form.addRow("Data", panel.data_combo)
    form.addRow("Send", panel.source_combo)
    form.addRow("Subset", panel.subset_combo)
    form.addRow("Catalogue", panel.catalog_combo)
    form.addRow("Source size", panel.size_spin)
    form.addRow("Detection", _row(panel.nsigma_spin, panel.max_sources_spin))
    form.addRow("Cube", _row(panel.cube_mode, panel.cube_index, panel.cube_start, panel.cube_stop))
    form.addRow("Stretch", _row(panel.interval_combo, panel.stretch_combo, panel.outside_combo))
    form.addRow("Model sees", panel.thumbnail)
    return box


def _table(headers) -> QTableWidget:
    table = QTableWidget(0, len(headers))
    table.setHorizontalHeaderLabels(list(headers))
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    return table


def _tabs(panel) -> QTabWidget:
    panel.tabs = QTabWidget()
    ask = QWidget()
    ask_layout = QVBoxLayout(ask)
    panel.question_edit = QLineEdit()
    panel.question_edit.setPlaceholderText("e.g. Is there a jet?  (follow-ups continue the conversation)")
    panel.conversation_label = QLabel("")
    panel.conversation_label.setWordWrap(True)
    panel.history = QTextBrowser()
    panel.new_conversation_button = QPushButton("New conversation")
    panel.new_conversation_button.setToolTip("The next question starts again; this conversation is kept "
                                             "for export")
    panel.correct_button = QPushButton("Correct last answer…")
    panel.correct_button.setToolTip("Replace the model's answer with yours: later questions and exports "
                                    "use it")
    panel.export_conversations_button = QPushButton("Export conversations…")
    panel.export_conversations_button.setToolTip("LLaVA JSON with the images, for astrovlm finetune")
    ask_layout.addWidget(panel.question_edit)
    ask_layout.addWidget(panel.conversation_label)
    ask_layout.addWidget(panel.history)
    ask_layout.addLayout(_row(panel.new_conversation_button, panel.correct_button,
                              panel.export_conversations_button))
    panel.tabs.addTab(ask, "Ask")

    classify = QWidget()
    classify_layout = QFormLayout(classify)
    panel.preset_combo = _combo(menu_choices())
    panel.labels_edit = QLineEdit()
    panel.labels_edit.setPlaceholderText("custom labels, comma-separated: star, galaxy, artefact")
    panel.prob_table = _table(["label", "probability"])
    classify_layout.addRow("Label set", panel.preset_combo)
    classify_layout.addRow("Labels", panel.labels_edit)
    classify_layout.addRow(panel.prob_table)
    panel.tabs.addTab(classify, "Classify")

    tag = QWidget()
    tag_layout = QVBoxLayout(tag)
    panel.tag_table = _table(["source", "label", "confidence"])
    panel.tag_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    tag_layout.addWidget(QLabel("Tags each source with the Classify tab's label set."))
    tag_layout.addWidget(panel.tag_table)
    panel.tabs.addTab(tag, "Tag sources")
    return panel.tabs


def _buttons(panel) -> QHBoxLayout:
    panel.run_button = QPushButton("Run")
    panel.cancel_button = QPushButton("Cancel")
    panel.cancel_button.setEnabled(False)
    panel.export_button = QPushButton("Export…")
    panel.clear_button = QPushButton("Clear results")
    return _row(panel.run_button, panel.cancel_button, panel.export_button, panel.clear_button)


def build(panel) -> None:
    """Create the panel's widgets as its attributes and lay them out."""
    layout = QVBoxLayout(panel)
    layout.addWidget(_model_box(panel))
    layout.addWidget(_send_box(panel))
    layout.addWidget(_tabs(panel), 1)
    layout.addLayout(_buttons(panel))
    panel.progress = QProgressBar()
    panel.progress.setRange(0, 1)
    panel.progress.setValue(0)
    layout.addWidget(panel.progress)
    panel.message = QLabel("")
    panel.message.setWordWrap(True)
    layout.addWidget(panel.message)
