"""Where jobs run: "Run on: this machine / Ray cluster at …" above the job launchers.

On a cluster, the worker command becomes `python -m bitsmith.core.submit RUN_DIR --address
URL` (core/submit.py), which sends the job through Ray's Jobs API and prints the job's
events as a local worker does: the window's WorkerClient, run view, Cancel and Resume work
unchanged, and neither torch nor Ray is imported into the window. The run directory is
written by the job itself, so the runs folder must be on storage every node mounts at the
same path. The choice and the address are kept across restarts.
"""

from __future__ import annotations

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QWidget

from .widgets import ComboBox

HERE, CLUSTER = "this machine", "Ray cluster at"
KEYS = ("run/target", "run/cluster_address")


class RunTarget(QWidget):
    def __init__(self, settings: QSettings, parent=None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.choice = ComboBox()
        self.choice.addItems([HERE, CLUSTER])
        self.address_edit = QLineEdit(placeholderText="http://HEAD:8265 (the cluster's dashboard / Jobs API)")
        self.address_edit.setToolTip("Ray's Jobs API on the head node (`ray start --head --dashboard-host 0.0.0.0`). "
                                     "The runs folder must be on storage every node mounts at the same path, "
                                     "with Bitsmith installed on the nodes.")
        self.choice.setCurrentText(str(settings.value(KEYS[0], HERE)))
        self.address_edit.setText(str(settings.value(KEYS[1], "")))
        self.choice.currentTextChanged.connect(self._changed)
        self.address_edit.editingFinished.connect(self._changed)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Run on:"))
        row.addWidget(self.choice)
        row.addWidget(self.address_edit, 1)
        self._changed()

    @property
    def on_cluster(self) -> bool:
        return self.choice.currentText() == CLUSTER

    def set_cluster(self, address: str | None) -> None:
        """Choose the cluster at `address`, or this machine (None)."""
        if address is not None:
            self.address_edit.setText(address)
        self.choice.setCurrentText(CLUSTER if address is not None else HERE)
        self._changed()

    def submit_address(self) -> str | None:
        """The Jobs API URL to send jobs to; None: run them here. BadInput for an address that
        is not one (the message says which form it takes)."""
        if not self.on_cluster:
            return None
        from bitsmith.core.submit import jobs_address     # no Ray: the address is only parsed

        return jobs_address(self.address_edit.text())

    def describe(self) -> str:
        return f"on the Ray cluster at {self.address_edit.text().strip()}" if self.on_cluster else "on this machine"

    def _changed(self, *_) -> None:
        self.address_edit.setEnabled(self.on_cluster)
        self.settings.setValue(KEYS[0], self.choice.currentText())
        self.settings.setValue(KEYS[1], self.address_edit.text().strip())
